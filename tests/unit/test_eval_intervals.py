"""Which CI a metric gets, and what a floor on its lower end then means.

A per-item correctness verdict (0/1) gets the exact Clopper-Pearson interval: a perfect slice of
ten items has a lower end of 0.69, so a `ci_low` floor of 0.9 needs more evidence than ten
lucky answers. Anything else keeps the BCa bootstrap."""

from __future__ import annotations

import pytest

from pipeline.evaluate import stats
from pipeline.gate.rules import apply_rule
from pipeline.params import GateRule


def test_a_perfect_small_slice_does_not_pass_a_floor_on_the_lower_end():
    s = stats.summarize([1.0] * 10, 200, 0)
    assert s["interval"] == stats.EXACT and s["mean"] == 1.0 and s["ci95"][1] == 1.0
    assert s["ci95"][0] == pytest.approx(0.6915, abs=1e-4)  # 0.025 ** (1 / 10)
    report = {"slices": {"security": {"n": 10, "key_priority": s}}}
    [rule] = apply_rule(GateRule(metric="slices.security.key_priority", min=0.9, bound="ci_low"), report)
    assert not rule.passed and rule.value < 0.9
    # 40 of 40 is evidence enough for that floor
    forty = stats.summarize([1.0] * 40, 200, 0)
    assert forty["ci95"][0] > 0.9


def test_the_exact_interval_matches_scipy_and_brackets_the_mean():
    from scipy.stats import binomtest

    values = [1.0] * 39 + [0.0]
    lo, hi = stats.binomial_ci(values)
    ref = binomtest(39, 40).proportion_ci(method="exact")
    assert (lo, hi) == (pytest.approx(ref.low), pytest.approx(ref.high)) and lo < 39 / 40 < hi


def test_fractional_metrics_keep_the_bootstrap():
    values = [0.5, 0.75, 1.0, 0.25, 0.5, 1.0]
    s = stats.summarize(values, 200, 0)
    assert s["interval"] == stats.BOOTSTRAP and s["ci95"][0] <= s["mean"] <= s["ci95"][1]


def test_a_slice_keeps_the_interval_its_metric_has_over_all_items():
    """A fractional metric stays bootstrapped on a slice whose items all happen to score 0 or 1."""
    rows = [{"slice": "a", "m": 1.0}, {"slice": "a", "m": 0.0}, {"slice": "b", "m": 0.5}, {"slice": "b", "m": 1.0}]
    out = stats.per_slice(rows, "m", 100, 0, min_n=1)
    assert {k: v["interval"] for k, v in out.items()} == {"a": stats.BOOTSTRAP, "b": stats.BOOTSTRAP}
    binary = [{"slice": "a", "m": 1.0}, {"slice": "b", "m": 0.0}]
    assert {v["interval"] for v in stats.per_slice(binary, "m", 100, 0, min_n=1).values()} == {stats.EXACT}
