"""Chat-template encoding shared by curation, training, evaluation and serving.

There is exactly one way a conversation becomes token ids, so the lengths curation filters on,
the tokens training learns, the prompts evaluation scores and the prompts serving answers are
the same sequences. Likewise one way a conversation that brings no system turn gets the
bundle's pinned system prompt (`with_system`): otherwise a chat template such as SmolLM2's
injects its own default system turn, and the model answers a prompt it was never trained on.
"""

from __future__ import annotations

from typing import Sequence

ROLES = ("system", "user", "assistant")
IGNORE_INDEX = -100  # label value the loss skips


class ChatFormatError(ValueError):
    """A conversation that cannot be encoded the way training and serving need."""


def _render(tokenizer, messages, add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def _ids(tokenizer, text: str) -> list[int]:
    # The template already carries every special token; the tokenizer must add none.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def with_system(messages: Sequence[dict], system_prompt: str | None) -> list[dict]:
    """The messages with the pinned system turn in front when they bring none.

    A conversation whose first message is a system turn is returned as sent (its own system
    prompt wins); with system_prompt None nothing is added, and the chat template's own default,
    if it has one, applies, as it did in training.
    """
    messages = list(messages)
    if system_prompt is None or (messages and messages[0].get("role") == "system"):
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]


def render_prompt(tokenizer, messages: Sequence[dict]) -> str:
    """The chat-template text of a conversation ending in a user turn, with the assistant header
    appended: exactly the text `encode_prompt` tokenizes."""
    if not messages or messages[-1].get("role") != "user":
        raise ChatFormatError("a prompt must end with a user message")
    return _render(tokenizer, messages, add_generation_prompt=True)


def encode_prompt(tokenizer, messages: Sequence[dict]) -> list[int]:
    """Token ids of a conversation ending in a user turn, with the assistant header appended."""
    return _ids(tokenizer, render_prompt(tokenizer, messages))


def encode_example(tokenizer, messages: Sequence[dict], stop_token_ids: Sequence[int]) -> tuple[list[int], list[int], int]:
    """(input_ids, labels, prompt_len) for a conversation ending in an assistant turn.

    Labels cover the final assistant reply through its first stop token; the prompt and
    anything the template appends after the stop token are IGNORE_INDEX.
    """
    if len(messages) < 2 or messages[-1].get("role") != "assistant":
        raise ChatFormatError("a training example must end with an assistant message")
    prompt_ids = encode_prompt(tokenizer, messages[:-1])
    full_ids = _ids(tokenizer, _render(tokenizer, messages, add_generation_prompt=False))
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise ChatFormatError("chat template renders the prompt differently with and without the reply")
    reply = full_ids[len(prompt_ids):]
    stop_at = next((i for i, t in enumerate(reply) if t in set(stop_token_ids)), None)
    if stop_at is None:
        raise ChatFormatError("the chat template does not end the reply with a stop token")
    labels = [IGNORE_INDEX] * len(prompt_ids) + reply[: stop_at + 1] + [IGNORE_INDEX] * (len(reply) - stop_at - 1)
    return full_ids, labels, len(prompt_ids)


def reply_ids(tokenizer, messages: Sequence[dict], stop_token_ids: Sequence[int]) -> tuple[list[int], list[int]]:
    """(prompt_ids, reply_ids_including_stop) for scoring the reference reply's likelihood."""
    full, labels, prompt_len = encode_example(tokenizer, messages, stop_token_ids)
    return full[:prompt_len], [t for t, lab in zip(full[prompt_len:], labels[prompt_len:]) if lab != IGNORE_INDEX]


def stop_token_ids(tokenizer) -> tuple[int, ...]:
    """Ids that end an assistant turn: eos plus the template's end-of-turn token if distinct."""
    ids = [tokenizer.eos_token_id]
    for tok in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0:
            ids.append(tid)
    return tuple(sorted({i for i in ids if i is not None}))
