"""Token ids to text, incrementally, the same way for streamed and whole responses.

Byte-level BPE can split one character over several tokens, so decoding tokens one by one would
emit broken characters; a stop string may also span tokens. Each token therefore goes through
two stages. A decoder turns it into newly *stable* text: text that decoding more tokens will
never rewrite. Then the stop strings decide what of that text is released: a stop string ends
the output (it and what follows are never returned), and a trailing prefix of one is held back
until it is known not to become one. A whole response is the concatenation of its streamed
pieces by construction.

Decoders. With a fast tokenizer, `tokenizers`' `DecodeStream` decodes a small window of recent
ids per token (the tokens of the last piece as context, so decoders that depend on what came
before, like Metaspace's leading space, behave as in a full decode) and says nothing while the
window ends in U+FFFD, i.e. half a character. The cost per token is then constant instead of
growing with the answer (benchmarks/streaming.py, a 2,000-token answer on 2 cores: 4.5 us a
token, against 242 us on average and 444 us over the last tenth for re-decoding). Any other
tokenizer falls back to re-decoding every id so far, which is linear per token.

`finish()` decodes the whole output once and releases it up to the first stop string: what was
held back (a stop prefix, half a character that never completed, U+FFFD the model really
produced) comes out there, so the pieces add up to the full decode with
`skip_special_tokens=True`. One exception, shared with any incremental decoder: SentencePiece
byte fallback turns a whole run of byte tokens into U+FFFD when the run is not valid UTF-8, so
a later invalid byte rewrites earlier, already released bytes; on such output the pieces are
what re-decoding at every token releases (tests/serving/test_text.py checks both).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

log = logging.getLogger(__name__)

REPLACEMENT = "\ufffd"


@dataclass
class Step:
    """What one token released: new text, and whether a stop string ended the output."""

    text: str
    stopped: bool


def backend_tokenizer(tokenizer: Any) -> Any | None:
    """The `tokenizers.Tokenizer` under a fast tokenizer, or None."""
    from tokenizers import Tokenizer

    backend = getattr(tokenizer, "_tokenizer", None)
    return backend if isinstance(backend, Tokenizer) else None


class _RedecodeDecoder:
    """Any tokenizer: decode every id so far, release what grew past the last stable text
    (everything up to a trailing U+FFFD: that may be half a character the next token completes)."""

    def __init__(self, tokenizer: Any, ids: list[int], stable_chars: int = 0) -> None:
        self._tokenizer, self._ids, self._stable = tokenizer, ids, stable_chars

    def step(self, _token_id: int) -> str:  # the id is already in the shared list
        stable = decode(self._tokenizer, self._ids).rstrip(REPLACEMENT)
        new = stable[self._stable:]
        self._stable = max(self._stable, len(stable))
        return new


class _StreamDecoder:
    """Fast tokenizers: `DecodeStream`, constant work per token.

    Where the window is not enough context, decoding it can disagree with the full decode: bytes
    that form no character become U+FFFD in groups that depend on where decoding starts (byte
    fallback), and DecodeStream may refuse ("Invalid prefix"). Both happen only around text that
    is not valid UTF-8, so a piece containing U+FFFD, or a refusal, switches this output to
    re-decoding, which is always right (and linear per token, for an output that has gone
    wrong anyway).
    """

    def __init__(self, tokenizer: Any, backend: Any, ids: list[int]) -> None:
        from tokenizers.decoders import DecodeStream

        self._backend, self._tokenizer, self._ids = backend, tokenizer, ids
        self._stream = DecodeStream(skip_special_tokens=True)
        self._chars = 0
        self._fallback: _RedecodeDecoder | None = None

    def step(self, token_id: int) -> str:
        if self._fallback is None:
            try:
                new = self._stream.step(self._backend, token_id) or ""
            except Exception as exc:  # tokenizers raises a bare Exception here
                log.debug("DecodeStream refused (%s); re-decoding from here", exc)
                new = REPLACEMENT
            if REPLACEMENT not in new:
                self._chars += len(new)
                return new
            self._fallback = _RedecodeDecoder(self._tokenizer, self._ids, self._chars)
        return self._fallback.step(token_id)


def decode(tokenizer: Any, ids: Sequence[int]) -> str:
    # No space clean-up: it rewrites text before the newest token (" ." -> "."), and released
    # text must never change.
    return tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)


class TextAssembler:
    def __init__(self, tokenizer: Any, stop_strings: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop_strings = tuple(stop_strings)
        self.ids: list[int] = []  # consumed so far (usage counts these)
        self.stopped = False
        self._released: list[str] = []
        self._released_chars = 0
        # Stable text not released yet: at most a stop-string prefix. A stop string can only
        # occur here, never reaching back into released text: released text never ends in a
        # stop prefix (that is what is held) and never contains a whole stop string.
        self._pending = ""
        backend = backend_tokenizer(tokenizer)
        self._decoder: _StreamDecoder | _RedecodeDecoder = (
            _StreamDecoder(tokenizer, backend, self.ids) if backend is not None
            else _RedecodeDecoder(tokenizer, self.ids))

    @property
    def text(self) -> str:
        """Everything released so far."""
        return "".join(self._released)

    @property
    def decoded_chars(self) -> int:
        """Characters of stable text so far (released or held): where the next token's text starts."""
        return self._released_chars + len(self._pending)

    def add(self, token_id: int) -> Step:
        """Feed one generated token; return the text it releases."""
        if self.stopped:
            return Step("", True)
        self.ids.append(token_id)
        self._pending += self._decoder.step(token_id)
        cut = self._stop_at(self._pending)
        if cut is not None:
            return self._release(self._pending[:cut], stopped=True)
        keep = len(self._pending) - self._stop_prefix_len(self._pending)
        step = self._release(self._pending[:keep], stopped=False)
        self._pending = self._pending[keep:]
        return step

    def finish(self) -> Step:
        """The generation ended (budget, stop id): release everything held back, up to a stop
        string that the held text completes."""
        if self.stopped:
            return Step("", True)
        full = decode(self.tokenizer, self.ids)
        released = self.text
        if not full.startswith(released):  # a decoder whose output depends on later tokens
            log.warning("released text is not a prefix of the full decode; the tail is sent as decoded")
        rest = full[len(released):]
        cut = self._stop_at(rest)
        self._pending = ""
        return self._release(rest if cut is None else rest[:cut], stopped=cut is not None)

    def _stop_at(self, text: str) -> int | None:
        hits = [i for i in (text.find(s) for s in self.stop_strings) if i >= 0]
        return min(hits) if hits else None

    def _stop_prefix_len(self, text: str) -> int:
        """Length of the longest suffix of `text` that begins some stop string."""
        best = 0
        for s in self.stop_strings:
            for k in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:k]):
                    best = k
                    break
        return best

    def _release(self, new: str, stopped: bool) -> Step:
        self.stopped = stopped
        if new:
            self._released.append(new)
            self._released_chars += len(new)
        return Step(new, stopped)
