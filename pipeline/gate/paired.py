"""Paired comparison of two evaluations of the same suite items, item by item.

Two runs scored the same items, so the question "did it get worse?" is answered on the items
that changed, not on two noisy means: for a 0/1 metric, the items that went right -> wrong
against wrong -> right, tested with McNemar's exact test (a one-sided binomial test on the
discordant pairs, scipy.stats.binomtest); for a continuous metric, a paired bootstrap of the
mean per-item difference (seeded, so a rerun gives the same p-value). The p-values of one gate
are adjusted together (Holm), so adding slices and metrics does not make a false alarm likely.

Item scores come in the columnar form `ItemScores` (pipeline/gate/items.py); only ids both runs
scored are compared, and each comparison says how many those were.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import binomtest

from pipeline.gate.items import ItemScores
from pipeline.params import GateRegressionRule


@dataclass
class Comparison:
    """One metric on one slice (or overall), baseline against now, on their common items."""

    metric: str  # the concrete report path, e.g. slices.long.field_accuracy
    test: str  # "mcnemar-exact", "paired-bootstrap", or "none" (nothing to compare)
    n: int  # common items with a value in both runs
    baseline: float | None
    now: float | None
    worse: int  # items that went right -> wrong (0/1) or whose value got worse (continuous)
    better: int
    worsening: float | None  # baseline - now for higher-is-better, now - baseline for lower-is-better
    budget: float
    direction: str  # "drop" (higher is better) or "rise" (lower is better)
    p_value: float | None = None  # one-sided: the chance of a worsening this large with no real change
    p_adjusted: float | None = None  # Holm over every paired test of the gate
    passed: bool = False
    reason: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _is_binary(*columns: list[float]) -> bool:
    return all(v in (0.0, 1.0) for col in columns for v in col)


def _bootstrap_p(diff: np.ndarray, samples: int, seed: int) -> float:
    """One-sided p-value of the mean worsening under 'no change': the bootstrap distribution of
    the mean is shifted to zero, and p is how often it reaches the observed mean (add-one, so a
    finite resample never claims p = 0)."""
    observed = float(diff.mean())
    if observed <= 0:
        return 1.0
    rng = np.random.default_rng(seed)
    centred = diff - observed
    hits = 0
    chunk = max(1, 2_000_000 // len(diff))  # bounded memory for large suites
    for start in range(0, samples, chunk):
        k = min(chunk, samples - start)
        idx = rng.integers(0, len(diff), size=(k, len(diff)))
        hits += int(np.count_nonzero(centred[idx].mean(axis=1) >= observed))
    return (hits + 1) / (samples + 1)


def compare_metric(path: str, metric: str, ids: list[str], now: ItemScores, then: ItemScores,
                   rule: GateRegressionRule, *, samples: int, seed: int) -> Comparison:
    """Compare `metric` over `ids` (common to both runs); a run with no value for an item (a
    scorer that does not apply to it) leaves that item out."""
    direction = "drop" if rule.max_drop is not None else "rise"
    budget = rule.max_drop if rule.max_drop is not None else rule.max_rise
    pairs = [(then.value(i, metric), now.value(i, metric)) for i in ids]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    if not pairs:
        return Comparison(path, "none", 0, None, None, 0, 0, None, budget, direction,
                          reason=f"no common item has {metric} in both runs (fails closed)")
    a = np.array([p[0] for p in pairs], dtype=float)
    b = np.array([p[1] for p in pairs], dtype=float)
    # worse_by > 0 where the item got worse, whichever way the metric points
    worse_by = (a - b) if direction == "drop" else (b - a)
    worse, better = int(np.count_nonzero(worse_by > 0)), int(np.count_nonzero(worse_by < 0))
    if _is_binary(a.tolist(), b.tolist()):
        test = "mcnemar-exact"
        p = 1.0 if worse == 0 else float(binomtest(worse, worse + better, 0.5, alternative="greater").pvalue)
    else:
        test = "paired-bootstrap"
        p = _bootstrap_p(worse_by, samples, seed)
    return Comparison(path, test, len(pairs), float(a.mean()), float(b.mean()), worse, better,
                      float(worse_by.mean()), budget, direction, p_value=p)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment: family-wise error held at the level, any dependence."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def judge(comparisons: list[Comparison], alpha: float | None) -> None:
    """Set each comparison's verdict: it fails when its worsening exceeds the budget, or when
    the worsening is significant at `alpha` after Holm (None: budgets only)."""
    tested = [c for c in comparisons if c.p_value is not None]
    for c, adj in zip(tested, holm([c.p_value for c in tested])):
        c.p_adjusted = adj
    for c in comparisons:
        if c.test == "none":
            c.passed = False
            continue
        over = c.worsening > c.budget + 1e-12
        significant = alpha is not None and c.worsening > 0 and c.p_adjusted is not None and c.p_adjusted < alpha
        c.passed = not (over or significant)
        what = "right -> wrong" if c.test == "mcnemar-exact" else "worse"
        back = "wrong -> right" if c.test == "mcnemar-exact" else "better"
        p = "" if c.p_value is None else f"; {c.test} p={_p(c.p_value)} (Holm {_p(c.p_adjusted)})"
        verdict = ("exceeds the budget" if over else f"significant at {alpha}" if significant else "within budget")
        c.reason = (f"{c.baseline:.4f} -> {c.now:.4f} on {c.n} common items; {c.worse} {what}, {c.better} {back}"
                    f"{p}; {c.direction} {c.worsening:+.4f} {verdict} (budget {c.budget})")


def _p(p: float | None) -> str:
    if p is None or not math.isfinite(p):
        return "-"
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"
