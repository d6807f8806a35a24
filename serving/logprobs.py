"""Log-probs: what the engine loop records per token, and the two OpenAI shapes they are sent in.

Chat (`logprobs: true, top_logprobs: k`) sends one object per content token: its text, its UTF-8
bytes and the k most likely tokens at its position. Completions (`logprobs: k`) send the legacy
parallel lists: token texts, their log-probs, a {token: log-prob} map per position holding the
k most likely tokens and the chosen one (so up to k+1 entries, as OpenAI documents), and each
token's character offset in the returned text.

Where the numbers come from: the chosen token's log-prob is the engine's own (the one the parity
probe checks); the alternatives and the prompt's log-probs come from the same logits, through the
decode loop's hooks (pipeline/engines/batching.py), because the Engine interface hands out
neither.

A token's text: byte-level BPE tokens are bytes, and one character can span several tokens, so
a token is shown as its text when its bytes are whole UTF-8 and as `bytes:\\xNN...` otherwise,
the form OpenAI uses; `bytes` always carries the exact bytes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

from serving.responses import ChatLogprobs, ChatTokenLogprob, CompletionLogprobs, TopLogprob

# OpenAI's stand-in for a log-prob too small to report; JSON has no -Infinity.
FLOOR = -9999.0
# Rows of logits turned into log-probs at a time when scoring a prompt: a full-vocabulary
# float32 row is 200 KB for a 49k vocabulary, so this bounds the transient memory to ~50 MB.
SCORE_CHUNK_ROWS = 256
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece byte fallback


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    logprob: float | None  # None: the first prompt token, which nothing predicts
    top: tuple[tuple[int, float], ...] = ()  # most likely (token id, log-prob) at this position, best first
    offset: int = 0  # characters of the returned text before this token's text


def prompt_logprobs(logits: Any, prompt_ids: Sequence[int], k: int) -> list[TokenLogprob]:
    """Each prompt token's log-prob given the tokens before it, from the prefill's logits over
    every prompt position (`logits[i]` predicts token i+1), as the engine's scoring computes it
    (log-softmax in float32)."""
    import torch

    ids = list(prompt_ids)
    out = [TokenLogprob(ids[0], None)]
    for start in range(0, len(ids) - 1, SCORE_CHUNK_ROWS):
        end = min(start + SCORE_CHUNK_ROWS, len(ids) - 1)
        lps = torch.log_softmax(logits[start:end].float(), dim=-1).cpu()
        chosen = lps.gather(-1, torch.tensor(ids[start + 1:end + 1])[:, None]).squeeze(-1).tolist()
        tops: list[tuple[tuple[int, float], ...]] = [()] * len(chosen)
        if k > 0:  # one topk over the chunk, not one per row
            values, top_ids = torch.topk(lps, min(k, lps.shape[-1]), dim=-1)
            tops = [tuple(zip(i, v)) for i, v in zip(top_ids.tolist(), values.tolist())]
        out.extend(TokenLogprob(ids[start + 1 + row], lp, tops[row]) for row, lp in enumerate(chosen))
    return out


def _finite(lp: float) -> float:
    return lp if math.isfinite(lp) else FLOOR


def _byte_level_table() -> dict[str, int]:
    """The byte-level BPE alphabet, character -> byte: printable Latin-1 bytes stand for
    themselves, the other 68 bytes for the characters from U+0100 on, in byte order."""
    kept = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {chr(b): b for b in kept}
    others = [b for b in range(256) if b not in table.values()]
    table.update({chr(0x100 + i): b for i, b in enumerate(others)})
    return table


class TokenStrings:
    """A token id as logprobs show it: (text, UTF-8 bytes or None). Memoized per tokenizer."""

    def __init__(self, tokenizer: Any) -> None:
        from serving.text import backend_tokenizer

        self.tokenizer = tokenizer
        backend = backend_tokenizer(tokenizer)
        self._byte_level = backend is not None and type(backend.decoder).__name__ == "ByteLevel"
        self._table = _byte_level_table() if self._byte_level else {}
        self._added = set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
        self._cache: dict[int, tuple[str, list[int] | None]] = {}

    def __call__(self, token_id: int) -> tuple[str, list[int] | None]:
        hit = self._cache.get(token_id)
        if hit is None:
            hit = self._cache[token_id] = self._compute(token_id)
        return hit

    def _compute(self, token_id: int) -> tuple[str, list[int] | None]:
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        raw: bytes | None = None
        if isinstance(piece, str):
            if token_id in self._added:  # special and added tokens are stored as plain text
                raw = piece.encode("utf-8")
            elif self._byte_level and all(c in self._table for c in piece):
                raw = bytes(self._table[c] for c in piece)
            elif m := _BYTE_TOKEN.fullmatch(piece):
                raw = bytes([int(m.group(1), 16)])
        if raw is None:
            text = self.tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            return text, (None if "\ufffd" in text else list(text.encode("utf-8")))
        try:
            return raw.decode("utf-8"), list(raw)
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw), list(raw)


def chat_logprobs(items: Sequence[TokenLogprob], strings: TokenStrings) -> ChatLogprobs:
    def top(token_id: int, lp: float) -> TopLogprob:
        text, raw = strings(token_id)
        return TopLogprob(token=text, logprob=_finite(lp), bytes=raw)

    content = []
    for it in items:
        chosen = top(it.token_id, it.logprob if it.logprob is not None else FLOOR)
        content.append(ChatTokenLogprob(**chosen.model_dump(), top_logprobs=[top(i, lp) for i, lp in it.top]))
    return ChatLogprobs(content=content, refusal=None)


def completion_logprobs(items: Sequence[TokenLogprob], strings: TokenStrings, base_offset: int = 0,
                        text_len: int | None = None) -> CompletionLogprobs:
    """The legacy lists. Offsets are shifted by `base_offset` (the echoed prompt before the
    completion) and capped at `text_len` (tokens past a stop string point at the text's end)."""
    out = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
    for it in items:
        out.tokens.append(strings(it.token_id)[0])
        offset = base_offset + it.offset
        out.text_offset.append(offset if text_len is None else min(offset, text_len))
        if it.logprob is None:
            out.token_logprobs.append(None)
            out.top_logprobs.append(None)
            continue
        out.token_logprobs.append(_finite(it.logprob))
        alternatives: dict[str, float] = {}
        for token_id, lp in (*it.top, (it.token_id, it.logprob)):
            alternatives.setdefault(strings(token_id)[0], _finite(lp))  # best first keeps the higher one
        out.top_logprobs.append(alternatives)
    return out


def token_offsets(tokenizer: Any, ids: Sequence[int]) -> list[int]:
    """Each token's character offset in the decoded text of `ids` (special tokens kept, as an
    echoed prompt shows them): the length of the text decoded before it. A character split over
    tokens is placed at the token that starts it."""
    from serving.text import backend_tokenizer

    backend = backend_tokenizer(tokenizer)
    if backend is None:  # a slow tokenizer: decode every prefix
        return [len(tokenizer.decode(list(ids[:i]), skip_special_tokens=False, clean_up_tokenization_spaces=False)
                    .rstrip("\ufffd")) for i in range(len(ids))]
    from tokenizers.decoders import DecodeStream

    stream, offsets, chars = DecodeStream(skip_special_tokens=False), [], 0
    for token_id in ids:
        offsets.append(chars)
        chars += len(stream.step(backend, token_id) or "")
    return offsets
