"""The curate report: counts per check and reason, repairs, PII, clusters, leaks, lengths.

It names records by "file:line" and never quotes their text: reports/curate.json is committed
to git, the records (and whatever identifiers they held) are not.
"""

from __future__ import annotations

from array import array
from collections import Counter

import numpy as np

from pipeline.curate import validate as v

# Which check rejects with which reasons, in the order the checks run.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("read", (v.LINE_TOO_LONG, v.UNREADABLE_FILE, v.BAD_ROW)),
    ("validate", (v.NON_UTF8, v.NUL_CHARACTER, v.BAD_JSON, v.NOT_OBJECT, v.BAD_FIELD, v.BAD_MESSAGES,
                  v.BAD_MESSAGE, v.UNKNOWN_ROLE, v.MISSING_ASSISTANT, v.EMPTY_CONTENT)),
    ("pii_scrub", ()),
    ("quality", (v.REPETITIVE, v.SYMBOL_RATIO, v.COPIED_PROMPT)),
    ("length", (v.BAD_TEMPLATE, v.TOO_SHORT, v.TOO_LONG)),
    ("exact_dedup", (v.EXACT_DUPLICATE,)),
    ("decontam", (v.EVAL_CONTAMINATION,)),
    ("near_dedup", (v.NEAR_DUPLICATE,)),
)
assert sorted(r for _, rs in STAGES for r in rs) == sorted(v.REASONS), "every reason belongs to one check"

HISTOGRAM_BINS = 32


def stage_counts(n_input: int, reasons: Counter[str]) -> list[dict]:
    """Records entering and leaving each check, and what it rejected."""
    out, n = [], n_input
    for name, codes in STAGES:
        rejected = {r: reasons.get(r, 0) for r in codes}
        left = n - sum(rejected.values())
        out.append({"stage": name, "in": n, "out": left, "rejected": rejected})
        n = left
    return out


def length_histogram(before: array, after: array, max_tokens: int) -> dict:
    """Token-length histograms over one set of edges: every tokenized record ("before" the
    filters) vs the kept ones ("after"). HISTOGRAM_BINS equal bins up to the shipped context,
    plus one overflow bin up to the longest record when any is longer."""
    width = -(-max_tokens // HISTOGRAM_BINS)  # ceil
    edges = [k * width for k in range(HISTOGRAM_BINS + 1)]
    if before and max(before) > edges[-1]:
        edges.append(max(before) + 1)
    hist = lambda xs: np.histogram(np.frombuffer(xs, dtype=np.uint32), bins=edges)[0].tolist()  # noqa: E731
    return {"edges": edges, "before": hist(before), "after": hist(after)}


def length_stats(lengths: array) -> dict:
    if not lengths:
        return {}
    xs = np.sort(np.frombuffer(lengths, dtype=np.uint32))
    q = lambda f: int(xs[min(len(xs) - 1, int(f * len(xs)))])  # noqa: E731
    return {"min": int(xs[0]), "p50": q(0.5), "p90": q(0.9), "max": int(xs[-1])}
