"""Tail statistics: per-slice means with their 95% CIs, quantiles, worst-k means, length buckets.

Which interval a metric gets depends on what its per-item values are:

- 0/1 values (a per-item correctness verdict): the exact Clopper-Pearson interval for a binomial
  proportion (scipy). A perfect small slice never looks certain: 10/10 has a lower end of 0.69,
  40/40 of 0.91, so a floor on `ci_low` needs enough items as well as a good model.
- anything else (a per-item fraction, a score, an NLL): the BCa bootstrap of the mean.

The report says which one each metric has (`interval`).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np


def bootstrap_ci(values: Sequence[float], samples: int, seed: int, alpha: float = 0.05) -> tuple[float, float]:
    """Bias-corrected and accelerated (BCa) bootstrap CI of the mean, by scipy (seeded, so
    reports are reproducible). BCa rather than the percentile interval: on a 40-item slice of
    0/1 outcomes the mean's distribution is skewed near 0 and 1, and the gate's floors can sit on
    the lower end. A sample with no spread (every item right, or every item wrong) has a
    zero-width interval: BCa's acceleration is undefined there and resampling cannot vary it."""
    import warnings

    from scipy.stats import bootstrap

    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return (float("nan"), float("nan"))
    if np.all(x == x[0]):
        return (float(x[0]), float(x[0]))
    with warnings.catch_warnings():
        # scipy warns (and returns NaN) on degenerate jackknife values; handled below
        warnings.simplefilter("ignore")
        res = bootstrap((x,), np.mean, n_resamples=samples, confidence_level=1 - alpha, method="BCa",
                        random_state=np.random.default_rng(seed), vectorized=True, axis=-1)
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        # BCa could not be formed (e.g. one outlier among identical values): percentile interval
        lo, hi = (float(v) for v in np.quantile(res.bootstrap_distribution, [alpha / 2, 1 - alpha / 2]))
    return lo, hi


EXACT, BOOTSTRAP = "clopper-pearson", "bca-bootstrap"


def interval_for(values: Sequence[float]) -> str:
    """The interval a metric gets: exact binomial for 0/1 per-item values, else the bootstrap."""
    return EXACT if len(values) and all(v in (0.0, 1.0) for v in values) else BOOTSTRAP


def binomial_ci(values: Sequence[float], alpha: float = 0.05) -> tuple[float, float]:
    """The exact (Clopper-Pearson) CI of a proportion of 0/1 values, by scipy."""
    from scipy.stats import binomtest

    if len(values) == 0:
        return (float("nan"), float("nan"))
    ci = binomtest(int(round(sum(values))), len(values)).proportion_ci(confidence_level=1 - alpha, method="exact")
    return float(ci.low), float(ci.high)


def summarize(values: Sequence[float], samples: int, seed: int, interval: str | None = None) -> dict:
    """n, mean and 95% CI; `interval` (EXACT or BOOTSTRAP) defaults to what the values call for."""
    interval = interval or interval_for(values)
    if interval == EXACT:
        lo, hi = binomial_ci(values)
    else:
        lo, hi = bootstrap_ci(values, samples, seed)
    return {"n": len(values), "mean": float(np.mean(values)) if len(values) else None, "ci95": [lo, hi],
            "interval": interval}


def quantiles(values: Sequence[float]) -> dict:
    """p50/p90/p99/max and the mean of the worst 5% (at least one example)."""
    x = np.sort(np.asarray(values, dtype=float))
    if len(x) == 0:
        return {}
    k = max(1, int(np.ceil(0.05 * len(x))))
    return {"p50": float(np.quantile(x, 0.5)), "p90": float(np.quantile(x, 0.9)),
            "p99": float(np.quantile(x, 0.99)), "max": float(x[-1]), "worst5pct_mean": float(x[-k:].mean()),
            "mean": float(x.mean())}


def per_slice(rows: Sequence[dict], metric: str, samples: int, seed: int, min_n: int,
              interval: str | None = None) -> dict[str, dict]:
    """Per-slice summaries; `interval` is the metric's over all rows, so a slice whose items all
    happen to score 0 or 1 on a fractional metric keeps the metric's interval."""
    groups: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        groups[r["slice"]].append(r[metric])
    interval = interval or interval_for([r[metric] for r in rows])
    out = {}
    for i, (name, vals) in enumerate(sorted(groups.items())):
        s = summarize(vals, samples, seed + i, interval)
        s["too_small"] = len(vals) < min_n
        out[name] = s
    return out


def worst_slice(slices: dict[str, dict], lower_is_better: bool = False) -> dict | None:
    """Lowest mean among slices (highest for a lower-is-better headline); small slices are
    included (and flagged), never hidden."""
    if not slices:
        return None
    pick = max if lower_is_better else min
    name = pick(slices, key=lambda k: slices[k]["mean"])
    return {"slice": name, **slices[name]}


def length_buckets(rows: Sequence[dict], metric: str, edges: Sequence[int]) -> list[dict]:
    """Mean metric by prompt length in tokens, bucketed at the given upper edges."""
    out, lower = [], 0
    for edge in edges:
        vals = [r[metric] for r in rows if lower < r["prompt_tokens"] <= edge]
        out.append({"min_tokens": lower + 1, "max_tokens": edge, "n": len(vals),
                    "mean": float(np.mean(vals)) if vals else None})
        lower = edge
    rest = [r[metric] for r in rows if r["prompt_tokens"] > lower]
    if rest:
        out.append({"min_tokens": lower + 1, "max_tokens": None, "n": len(rest), "mean": float(np.mean(rest))})
    return out
