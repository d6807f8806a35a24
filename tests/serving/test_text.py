"""Incremental decoding: characters split across tokens are never released half-made, stop strings
spanning tokens are cut and not returned, and the streamed pieces always add up to the full
decode with skip_special_tokens, on the test bundle's byte-level tokenizer (built the same way,
without the pipeline) and on a SentencePiece-style one (Metaspace, byte fallback), for both
decoders: `DecodeStream` (fast tokenizers) and the re-decoding fallback (any tokenizer).

The adversarial inputs are random token sequences over the whole vocabulary (special tokens,
lone continuation bytes, half characters included) and texts whose emoji, CJK and accented
characters the tiny BPE can only spell as several byte tokens.
"""

from __future__ import annotations

import json
import random

import pytest

from serving.text import TextAssembler, backend_tokenizer, decode

ADVERSARIAL = "Temp 38.5 °C, naïve → résumé 😀👍🏽 done; 中文字符 テスト 한국어 ∑∫ 🇫🇷 end"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    from tests.conftest import build_tiny_model_dir

    return AutoTokenizer.from_pretrained(build_tiny_model_dir(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def metaspace_tokenizer():
    """A Llama-style tokenizer: Metaspace pre-tokenizer, byte fallback, a decoder that strips the
    first leading space (so a token's text depends on what came before it)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tests.conftest import corpus_lines

    def build(model):
        tok = Tokenizer(model)
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=False)
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
        return tok

    trained = build(models.BPE(unk_token="<unk>"))
    trained.train_from_iterator(corpus_lines(), trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False))
    # The 256 byte tokens join the ordinary vocabulary (byte fallback spells unseen characters
    # with them; as special tokens they would be skipped).
    vocab = trained.get_vocab()
    vocab.update({f"<0x{b:02X}>": len(vocab) + b for b in range(256)})
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
              for m in json.loads(trained.to_str())["model"]["merges"]]
    tok = build(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


class SlowOnly:
    """The tokenizer seen as a slow one (no `tokenizers` backend): the re-decoding path."""

    def __init__(self, tok) -> None:
        self._tok = tok

    def decode(self, *args, **kwargs):
        return self._tok.decode(*args, **kwargs)


def feed(tokenizer, ids, stops: tuple[str, ...] = ()) -> tuple[list[str], bool, TextAssembler]:
    asm = TextAssembler(tokenizer, stops)
    pieces, stopped = [], False
    for token_id in ids:
        step = asm.add(token_id)
        pieces.append(step.text)
        if step.stopped:
            stopped = True
            break
    if not stopped:
        step = asm.finish()
        pieces.append(step.text)
        stopped = step.stopped
    return pieces, stopped, asm


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def expected(tokenizer, ids, stops=()) -> tuple[str, bool]:
    """What a whole response is: the full decode, cut at the first stop string."""
    full = decode(tokenizer, ids)
    hits = [i for i in (full.find(s) for s in stops) if i >= 0]
    return (full[:min(hits)], True) if hits else (full, False)


@pytest.fixture(params=["stream", "redecode"])
def mode(request):
    return request.param


def as_mode(tokenizer, mode):
    return tokenizer if mode == "stream" else SlowOnly(tokenizer)


def test_the_fast_path_is_taken_for_fast_tokenizers(tokenizer, metaspace_tokenizer):
    assert backend_tokenizer(tokenizer) is not None and backend_tokenizer(metaspace_tokenizer) is not None
    assert backend_tokenizer(SlowOnly(tokenizer)) is None


def test_multibyte_characters_are_never_split(tokenizer, mode):
    ids = encode(tokenizer, ADVERSARIAL)
    # The tiny BPE has no merges for these characters, so each one spans several byte tokens.
    assert sum(tokenizer.decode(ids[:k]).endswith("\ufffd") for k in range(1, len(ids))) > 10
    pieces, stopped, _ = feed(as_mode(tokenizer, mode), ids)
    assert not stopped and "".join(pieces) == ADVERSARIAL
    assert not any("\ufffd" in p for p in pieces)


def test_special_tokens_inside_the_output_are_skipped(tokenizer, mode):
    ids = encode(tokenizer, ADVERSARIAL)
    specials = tokenizer.all_special_ids
    # Between the bytes of one character too: the character still comes out whole.
    salted = [t for i, t in enumerate(ids) for t in ([specials[i % len(specials)], t] if i % 3 == 0 else [t])]
    pieces, stopped, asm = feed(as_mode(tokenizer, mode), salted)
    assert "".join(pieces) == expected(tokenizer, salted)[0] == ADVERSARIAL and not stopped
    assert asm.ids == salted


def test_stop_string_across_tokens_is_cut_and_not_returned(tokenizer, mode):
    text = "Discharged home. END of note, more text"
    pieces, stopped, asm = feed(as_mode(tokenizer, mode), encode(tokenizer, text), ("END of", "never"))
    assert stopped and "".join(pieces) == "Discharged home. "
    # The tokens after the stop string were never consumed (usage counts up to the stop).
    assert tokenizer.decode(asm.ids).startswith("Discharged home. END")
    assert len(asm.ids) < len(encode(tokenizer, text))


def test_a_stop_string_made_of_split_characters(tokenizer, mode):
    text = "note 😀 中文 tail"
    pieces, stopped, _ = feed(as_mode(tokenizer, mode), encode(tokenizer, text), ("😀 中",))
    assert stopped and "".join(pieces) == "note "


def test_a_held_back_stop_prefix_is_released_when_it_does_not_complete(tokenizer, mode):
    pieces, stopped, _ = feed(as_mode(tokenizer, mode), encode(tokenizer, "The ENDO scope; the END"), ("END!",))
    assert not stopped and "".join(pieces) == "The ENDO scope; the END"
    # "END" could begin "END!", so it is only released by finish().
    assert pieces[-1].endswith("END")


def random_cases(tok, rng: random.Random, n: int, exclude: set[int] = frozenset()):
    """(ids, stop strings): any ids at all, half the cases with a stop string cut from the text."""
    allowed = [t for t in range(len(tok)) if t not in exclude]
    for trial in range(n):
        ids = [rng.choice(allowed) for _ in range(rng.randrange(1, 60))]
        full = decode(tok, ids)
        stops: tuple[str, ...] = ()
        if trial % 2 and len(full) > 4:
            at = rng.randrange(len(full) - 2)
            stops = (full[at:at + rng.randrange(2, 4)], "never-there")
        yield ids, stops


def test_random_token_sequences_add_up_to_the_full_decode(tokenizer):
    """Byte-level BPE, any ids at all (half characters that never complete, lone continuation
    bytes, special tokens): both decoders release exactly the full decode, cut at the first
    stop string."""
    for ids, stops in random_cases(tokenizer, random.Random(0), 400):
        want = expected(tokenizer, ids, stops)
        for view in (tokenizer, SlowOnly(tokenizer)):
            pieces, stopped, _ = feed(view, ids, stops)
            assert ("".join(pieces), stopped) == want, (ids, stops)


def test_byte_fallback_garbage_is_decoded_as_re_decoding_did(metaspace_tokenizer):
    """SentencePiece byte fallback turns a whole run of byte tokens into U+FFFD when the run is not
    valid UTF-8, so a later byte can rewrite an earlier, valid one ('+' then 0xDE: '+' becomes
    U+FFFD): on such garbage no incremental decoder can equal the full decode. On random ids the
    stream releases exactly what re-decoding (the previous implementation) released; without the
    byte tokens, exactly the full decode."""
    tok = metaspace_tokenizer
    byte_ids = {tok.convert_tokens_to_ids(f"<0x{b:02X}>") for b in range(256)}
    rng = random.Random(0)
    for ids, stops in random_cases(tok, rng, 300):
        fast, slow = feed(tok, ids, stops), feed(SlowOnly(tok), ids, stops)
        assert ("".join(fast[0]), fast[1]) == ("".join(slow[0]), slow[1]), (ids, stops)
    for ids, stops in random_cases(tok, rng, 300, exclude=byte_ids):
        for view in (tok, SlowOnly(tok)):
            pieces, stopped, _ = feed(view, ids, stops)
            assert ("".join(pieces), stopped) == expected(tok, ids, stops), (ids, stops)


def test_metaspace_text_keeps_its_spaces(metaspace_tokenizer, mode):
    text = "Patient stable. Follow-up in 2 weeks: ✓ naïve 😀"
    ids = encode(metaspace_tokenizer, text)
    pieces, stopped, _ = feed(as_mode(metaspace_tokenizer, mode), ids)
    assert "".join(pieces) == decode(metaspace_tokenizer, ids) and not stopped
    assert "".join(pieces).endswith("naïve 😀")
