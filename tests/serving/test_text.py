"""Incremental decoding with the bundle's real byte-level tokenizer: characters split across
tokens are never released half-made, stop strings spanning tokens are cut and not returned,
and the streamed pieces always add up to the whole text."""

from __future__ import annotations

import pytest

from serving.text import TextAssembler


@pytest.fixture(scope="module")
def tokenizer(served):
    return served.engine.tokenizer


def feed(tokenizer, text: str, stops: tuple[str, ...] = ()) -> tuple[list[str], bool, TextAssembler]:
    asm = TextAssembler(tokenizer, stops)
    pieces, stopped = [], False
    for token_id in tokenizer(text, add_special_tokens=False)["input_ids"]:
        step = asm.add(token_id)
        pieces.append(step.text)
        if step.stopped:
            stopped = True
            break
    if not stopped:
        pieces.append(asm.finish())
    return pieces, stopped, asm


def test_multibyte_characters_are_never_split(tokenizer):
    text = "Temp 38.5 °C, naïve → résumé 😀 done"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    # The tiny BPE has no merges for these characters, so each one spans several byte tokens.
    assert any(tokenizer.decode(ids[:k]).endswith("\ufffd") for k in range(1, len(ids)))
    pieces, stopped, _ = feed(tokenizer, text)
    assert not stopped and "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_stop_string_across_tokens_is_cut_and_not_returned(tokenizer):
    pieces, stopped, asm = feed(tokenizer, "Discharged home. END of note, more text", ("END of", "never"))
    assert stopped and "".join(pieces) == "Discharged home. "
    # The tokens after the stop string were never consumed (usage counts up to the stop).
    assert tokenizer.decode(asm.ids).startswith("Discharged home. END")


def test_a_held_back_stop_prefix_is_released_when_it_does_not_complete(tokenizer):
    pieces, stopped, _ = feed(tokenizer, "The ENDO scope; the END", ("END!",))
    assert not stopped and "".join(pieces) == "The ENDO scope; the END"
    # "END" could begin "END!", so it is only released by finish().
    assert pieces[-1].endswith("END")
