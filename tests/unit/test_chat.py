"""The chat helpers everyone shares: the pinned system prompt goes in front of conversations that
bring none, and the rendered prompt text is exactly what encode_prompt tokenizes."""

from __future__ import annotations

import pytest

from pipeline.chat import ChatFormatError, encode_prompt, render_prompt, with_system

PINNED = "You write structured hospital discharge summaries."
USER = {"role": "user", "content": "Summarize: stable, discharged home."}


@pytest.fixture(scope="module")
def tokenizer(tiny_pipeline):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_pipeline["base"], trust_remote_code=False)


def test_pinned_system_prompt_goes_in_front_of_a_conversation_without_one():
    messages = [USER]
    assert with_system(messages, PINNED) == [{"role": "system", "content": PINNED}, USER]
    assert messages == [USER]  # the caller's list is left alone


def test_a_conversation_with_its_own_system_turn_is_served_as_sent():
    own = [{"role": "system", "content": "Be brief."}, USER]
    assert with_system(own, PINNED) == own


def test_no_pinned_prompt_adds_nothing():
    assert with_system([USER], None) == [USER]
    assert with_system((), None) == []


def test_render_prompt_is_the_text_encode_prompt_tokenizes(tokenizer):
    messages = with_system([USER], PINNED)
    text = render_prompt(tokenizer, messages)
    assert text.startswith("<|im_start|>system\n" + PINNED) and text.endswith("<|im_start|>assistant\n")
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == encode_prompt(tokenizer, messages)


@pytest.mark.parametrize("messages", [[], [{"role": "system", "content": PINNED}],
                                      [USER, {"role": "assistant", "content": "ok"}]])
def test_render_prompt_needs_a_final_user_turn(tokenizer, messages):
    with pytest.raises(ChatFormatError, match="end with a user message"):
        render_prompt(tokenizer, messages)
