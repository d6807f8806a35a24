"""Prefilled prompts kept for reuse: a prompt's KV cache and next-token logits, by its token ids.

Evaluation prefills every prompt once to generate its answer, and then again to score the
reference answer after it, and once per option for a choice task: the same prompt, the same
arithmetic, so the same numbers every time (the batch-invariant engine prefills a prompt alone,
whatever else runs). Keeping the first prefill and handing out copies of it removes the others
without changing a bit: a hit returns exactly what a fresh prefill would have computed
(tests/unit/test_prefix_scoring.py compares both).

Bounded by bytes (least recently used out first); a budget of 0 keeps nothing, which is what
serving runs with.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence as Seq

import torch

from pipeline.engines.base import memory_share
from pipeline.engines.kvcache import Sequence

# At most this share of the machine's memory, and never more than the cap: the default suite's
# 160 prompts take about 3 GiB of float32 KV cache on the 135M base.
MEMORY_SHARE = 0.2
CAP_BYTES = 4 << 30


def default_budget() -> int:
    return memory_share(MEMORY_SHARE, CAP_BYTES)


class PrefixCache:
    def __init__(self, budget_bytes: int) -> None:
        self.budget = max(0, int(budget_bytes))
        self._entries: OrderedDict[tuple[int, ...], tuple[Sequence, torch.Tensor]] = OrderedDict()
        self._bytes = 0
        self._clock = 0
        self._used: dict[tuple[int, ...], int] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def recency(self, ids: Seq[int]) -> int:
        """How recently ids were stored or used (higher is more recent); -1 when not held."""
        key = tuple(ids)
        return self._used.get(key, -1) if key in self._entries else -1

    def get(self, ids: Seq[int]) -> tuple[Sequence, torch.Tensor] | None:
        """A fresh copy of the prompt's sequence (to extend freely) and its last logits, or None."""
        key = tuple(ids)
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._touch(key)
        seq, logits = entry
        return seq.copy(), logits

    def put(self, ids: Seq[int], seq: Sequence, logits: torch.Tensor) -> None:
        """Keep a trimmed copy of a just-prefilled sequence (before anything extends it)."""
        key = tuple(ids)
        if not self.budget or key in self._entries:
            if key in self._entries:
                self._touch(key)
            return
        kept = seq.copy(trim=True)
        size = kept.nbytes() + logits.numel() * logits.element_size()
        if size > self.budget:
            return
        while self._bytes + size > self.budget and self._entries:
            old, (old_seq, old_logits) = self._entries.popitem(last=False)
            self._used.pop(old, None)
            self._bytes -= old_seq.nbytes() + old_logits.numel() * old_logits.element_size()
        self._entries[key] = (kept, logits.detach().clone())
        self._bytes += size
        self._touch(key)

    def _touch(self, key: tuple[int, ...]) -> None:
        self._entries.move_to_end(key)
        self._clock += 1
        self._used[key] = self._clock

    def clear(self) -> None:
        self._entries.clear()
        self._used.clear()
        self._bytes = 0
