"""The train/val split: a per-record hash draw, topped up so that every slice is in validation.

Each kept record draws a number in [0, 1) from its own content and `seed`
(checks.val_draw) and goes to val when the draw is under `val_fraction`. That keeps a
record's split independent of every other record, but a small slice can draw no validation
record at all (a 30-record tail at the default 3% does so 40% of the time), and then the
validation loss says nothing about the tail that matters most.

So once every record is in, a slice with fewer than `min_val_records_per_slice` validation
records takes its kept training records of lowest draw, in draw order (ties: the earlier
record), never more than half of the slice's kept records: a slice of one record stays in
training. The choice depends only on the slice's own kept records, so it is deterministic,
the same on every worker count and on the cluster path, and a slice the draw already serves
keeps exactly the split it had.
"""

from __future__ import annotations

import heapq
from collections import Counter

from pipeline.params import CurateParams


class ValTopUp:
    """Kept records by slice and split; the lowest-draw training records of each slice, as
    many as a top-up could need (a bounded heap, so memory does not grow with the data)."""

    def __init__(self, params: CurateParams):
        self.val_fraction = params.val_fraction
        self.minimum = params.min_val_records_per_slice if params.val_fraction > 0 else 0
        self.kept: Counter[str] = Counter()
        self.drawn_val: Counter[str] = Counter()
        self._lowest: dict[str, list[tuple[float, int]]] = {}  # max-heap of (-draw, -index)

    def add(self, index: int, slice_name: str, split: str, draw: float) -> None:
        self.kept[slice_name] += 1
        if split == "val":
            self.drawn_val[slice_name] += 1
            return
        if not self.minimum:
            return
        heap = self._lowest.setdefault(slice_name, [])
        entry = (-draw, -index)
        if len(heap) < self.minimum:
            heapq.heappush(heap, entry)
        elif entry > heap[0]:  # a lower draw (or the same draw, earlier) than the highest held
            heapq.heapreplace(heap, entry)

    def wanted(self, slice_name: str) -> int:
        """The validation records the slice should have: the minimum, at most half its kept records."""
        return min(self.minimum, self.kept[slice_name] // 2)

    def promotions(self) -> dict[str, list[int]]:
        """slice -> indices (in kept order) of the training records that move to val."""
        out = {}
        for name in sorted(self.kept):
            short = self.wanted(name) - self.drawn_val[name]
            if short > 0:
                lowest = sorted((-d, -i) for d, i in self._lowest.get(name, []))[:short]
                out[name] = sorted(i for _, i in lowest)
        return out

    def summary(self, promoted: dict[str, list[int]]) -> dict:
        """What the report says about the split, per slice."""
        per_slice = {name: {"kept": self.kept[name], "val": self.drawn_val[name] + len(promoted.get(name, ())),
                            "drawn": self.drawn_val[name], "topped_up": len(promoted.get(name, ()))}
                     for name in sorted(self.kept)}
        return {"val_fraction": self.val_fraction, "min_val_records_per_slice": self.minimum,
                "drawn": sum(self.drawn_val.values()), "topped_up": sum(len(p) for p in promoted.values()),
                "slices": per_slice,
                # kept records but no validation record: too small to spare one, or val_fraction 0
                "slices_without_val": [n for n, s in per_slice.items() if s["kept"] and not s["val"]]}
