"""Token lengths under the chat template, in batches, identical to pipeline.chat.encode_example.

Tokenization dominates curation time (measured on the default raw set with the SmolLM2
tokenizer: encode_example 450 records/s, one batched fast-tokenizer call over rendered texts
about 3,500 records/s on 2 cores), so records are rendered one by one (cheap) and tokenized
in batches by the Rust tokenizer. encode_example renders and tokenizes twice (prompt, then
prompt + reply) to check that the reply starts on a token boundary after an unchanged prompt;
here the same checks run on one tokenization of the full text:

- the rendered prompt must be a string prefix of the rendered conversation;
- no token may straddle the end of the prompt (offsets from the tokenizer), so the prompt's
  tokens are the full tokens before that point, as encode_example requires;
- a stop token must follow the prompt.

Any record this cannot decide (a slow tokenizer, offsets that do not cover the boundary) goes
through encode_example itself. tests/unit/test_curate_lengths.py checks lengths and verdicts
against encode_example record by record.
"""

from __future__ import annotations

from typing import Sequence

from pipeline.chat import ChatFormatError, encode_example, stop_token_ids
from pipeline.curate.validate import BAD_TEMPLATE, Rejected


_PROMPT_CHANGED = "chat template renders the prompt differently with and without the reply"  # encode_example's words


class TemplateLengths:
    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.stops = stop_token_ids(tokenizer)
        self._stop_set = frozenset(self.stops)
        self.fast = bool(getattr(tokenizer, "is_fast", False)) and hasattr(tokenizer, "backend_tokenizer")
        # Text that the tokenizer turns into a special token: inside a message it would forge a
        # turn boundary (an "<|im_end|>" in a note ends the turn early and the labels with it).
        self.specials = sorted({t.content for t in tokenizer.added_tokens_decoder.values() if t.special})

    def _render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def _exact(self, messages: list[dict]) -> int | Rejected:
        try:
            ids, _labels, _ = encode_example(self.tok, messages, self.stops)
        except ChatFormatError as exc:
            return Rejected(BAD_TEMPLATE, str(exc))
        except Exception as exc:  # noqa: BLE001 - a template that raises (jinja) on this conversation
            return Rejected(BAD_TEMPLATE, f"chat template failed: {type(exc).__name__}: {str(exc)[:200]}")
        return len(ids)

    def measure(self, conversations: Sequence[list[dict]]) -> list[int | Rejected]:
        """Token count under the template of each conversation, or the Rejected it fails with."""
        out: list[int | Rejected | None] = [None] * len(conversations)
        texts, prompt_chars, where, exact = [], [], [], []
        for i, messages in enumerate(conversations):
            special = next((s for s in self.specials for m in messages if s in m["content"]), None)
            if special is not None:
                out[i] = Rejected(BAD_TEMPLATE, f"a message contains the special token text {special!r}")
                continue
            if len(messages) < 2 or messages[-2]["role"] != "user":
                out[i] = Rejected(BAD_TEMPLATE, "a prompt must end with a user message")
                continue
            if not self.fast:
                exact.append(i)
                continue
            try:
                prompt = self._render(messages[:-1], True)
                full = self._render(messages, False)
            except Exception as exc:  # noqa: BLE001 - jinja raising on this conversation (e.g. role order)
                out[i] = Rejected(BAD_TEMPLATE, f"chat template failed: {type(exc).__name__}: {str(exc)[:200]}")
                continue
            if not full.startswith(prompt):
                out[i] = Rejected(BAD_TEMPLATE, _PROMPT_CHANGED)
                continue
            texts.append(full)
            prompt_chars.append(len(prompt))
            where.append(i)
        for i in exact:
            out[i] = self._exact(conversations[i])
        if texts:
            encodings = self.tok.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
            for i, enc, cut, text in zip(where, encodings, prompt_chars, texts):
                out[i] = self._verdict(enc, cut, text, conversations[i])
        return out  # type: ignore[return-value]

    def _verdict(self, enc, cut: int, text: str, messages: list[dict]) -> int | Rejected:
        ids = enc.ids
        if cut >= len(text):
            return Rejected(BAD_TEMPLATE, "the chat template does not end the reply with a stop token")
        first_reply = enc.char_to_token(cut)
        last_prompt = enc.char_to_token(cut - 1) if cut else None
        if first_reply is None or (cut and last_prompt is None):
            return self._exact(messages)  # offsets do not cover the boundary: let encode_example decide
        if first_reply == last_prompt:
            return Rejected(BAD_TEMPLATE, _PROMPT_CHANGED)
        if not any(t in self._stop_set for t in ids[first_reply:]):
            return Rejected(BAD_TEMPLATE, "the chat template does not end the reply with a stop token")
        return len(ids)
