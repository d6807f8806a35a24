"""Token ids to text, incrementally, the same way for streamed and whole responses.

Each step decodes all ids generated so far (byte-level BPE can split one character over
several tokens, so decoding tokens one by one would emit broken characters) and releases only
the stable part: a trailing U+FFFD may be half a character that the next token completes, and
a trailing prefix of a stop string may turn out to be the stop string, which is never
returned. A whole response is the concatenation of its streamed pieces by construction.

Re-decoding everything is linear per token; measured on the test tokenizer, 900 tokens cost
0.14 s of decoding in all, small next to generating them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

REPLACEMENT = "\ufffd"


@dataclass
class Step:
    """What one token released: new text, and whether a stop string ended the output."""

    text: str
    stopped: bool


@dataclass
class TextAssembler:
    tokenizer: Any
    stop_strings: Sequence[str] = ()
    ids: list[int] = field(default_factory=list, init=False)  # consumed so far (usage counts these)
    text: str = field(default="", init=False)  # released so far
    stopped: bool = field(default=False, init=False)

    def add(self, token_id: int) -> Step:
        """Feed one generated token; return the text it releases."""
        if self.stopped:
            return Step("", True)
        self.ids.append(token_id)
        full = self._decode()
        cut = self._stop_at(full)
        if cut is not None:
            return self._release(full[:cut], stopped=True)
        stable = full.rstrip(REPLACEMENT)
        hold = self._stop_prefix_len(stable)
        return self._release(stable[:len(stable) - hold], stopped=False)

    def finish(self) -> str:
        """The generation ended (budget, stop id): release everything held back."""
        if self.stopped:
            return ""
        return self._release(self._decode(), stopped=False).text

    def _decode(self) -> str:
        # No space clean-up: it rewrites text before the newest token (" ." -> "."), and
        # released text must never change.
        return self.tokenizer.decode(self.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _stop_at(self, full: str) -> int | None:
        # Search only where a stop string could newly end: from a stop string's length
        # before the released text's end (the released part never contains a whole one).
        start = max(0, len(self.text) - max((len(s) for s in self.stop_strings), default=0))
        hits = [i for i in (full.find(s, start) for s in self.stop_strings) if i >= 0]
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

    def _release(self, upto: str, stopped: bool) -> Step:
        self.stopped = stopped
        # Decoding the longer sequence can rewrite only the held-back tail (a U+FFFD becoming
        # a character, a stop-string prefix), never the released text, so `upto` extends it;
        # and a stop string cannot start inside the released text (its prefix was held back).
        new = upto[len(self.text):]
        self.text += new
        return Step(new, stopped)
