"""The paired comparison and the per-item scores it runs on (no model: hand-built runs whose
answers are known, plus the default pipeline's real samples)."""

from __future__ import annotations

import copy
import json
import math

import pytest

from pipeline.gate import decide
from pipeline.gate.baseline import Baseline
from pipeline.gate.items import ItemScores, ItemScoresError, read_samples
from pipeline.gate.paired import compare_metric, holm, judge
from pipeline.params import GateParams, GateRegressionRule
from tests.conftest import REPO
from tests.stages.test_gate import GOOD, PARAMS, TEMPLATE

DROP = GateRegressionRule(metric="overall.ok", max_drop=0.05)


def _scores(values: dict[str, list], slices: list[str] | None = None, prefix: str = "i") -> ItemScores:
    n = len(next(iter(values.values())))
    return ItemScores([f"{prefix}{k:03d}" for k in range(n)], slices or ["a"] * n,
                      {m: [None if v is None else float(v) for v in col] for m, col in values.items()})


def _compare(then, now, rule=DROP, metric="ok", alpha=0.05):
    ids = [i for i in now.ids if i in set(then.ids)]
    c = compare_metric(f"overall.{metric}", metric, ids, now, then, rule, samples=2000, seed=0)
    judge([c], alpha)
    return c


def test_mcnemar_exact_on_the_flipped_items():
    # 8 right -> wrong, 1 wrong -> right, 31 unchanged: P(X >= 8 | 9 discordant, 1/2) = 10/512
    then = _scores({"ok": [1] * 8 + [0] + [1] * 20 + [0] * 11})
    now = _scores({"ok": [0] * 8 + [1] + [1] * 20 + [0] * 11})
    c = _compare(then, now)
    assert (c.test, c.n, c.worse, c.better) == ("mcnemar-exact", 40, 8, 1)
    assert math.isclose(c.p_value, 10 / 512)
    assert math.isclose(c.worsening, 7 / 40) and not c.passed and "exceeds the budget" in c.reason


def test_significant_within_budget_fails_unless_alpha_is_off():
    # 20 items lost, none won, over 1000 items: a 0.02 drop, inside a 0.05 budget, p = 2^-20
    base = [1] * 600 + [0] * 400
    then, now = _scores({"ok": base}), _scores({"ok": [0] * 20 + base[20:]})
    assert not _compare(then, now).passed
    assert _compare(then, now, alpha=None).passed


def test_noise_within_budget_passes_and_improvement_is_never_significant():
    then = _scores({"ok": [1, 0] * 20})
    assert _compare(then, _scores({"ok": [0, 1] * 20})).passed  # 20 each way: p ~ 0.56
    better = _compare(_scores({"ok": [0] * 40}), _scores({"ok": [1] * 40}))
    assert better.passed and better.p_value == 1.0 and better.worsening < 0


def test_lower_is_better_counts_a_rise_as_worse():
    rule = GateRegressionRule(metric="overall.bad", max_rise=0.05)
    c = _compare(_scores({"bad": [0] * 40}), _scores({"bad": [1] * 6 + [0] * 34}), rule, metric="bad")
    assert (c.direction, c.worse, c.better) == ("rise", 6, 0) and not c.passed


def test_paired_bootstrap_for_continuous_metrics_is_seeded():
    then = _scores({"ok": [0.8, 0.6, 1.0, 0.4] * 10})
    now = _scores({"ok": [0.6, 0.6, 0.8, 0.4] * 10})
    a, b = _compare(then, now), _compare(then, now)
    assert a.test == "paired-bootstrap" and a.p_value == b.p_value < 0.01 and not a.passed
    same = _compare(then, then)
    assert same.p_value == 1.0 and same.passed and (same.worse, same.better) == (0, 0)


def test_holm_adjustment():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([]) == []


def test_items_missing_in_one_run_are_left_out_and_no_common_value_fails_closed():
    then = _scores({"ok": [1, None, 1, 1]})
    now = _scores({"ok": [1, 1, None, 1]})
    assert _compare(then, now).n == 2
    empty = _compare(_scores({"ok": [None] * 3}), _scores({"ok": [1] * 3}))
    assert empty.test == "none" and not empty.passed and "fails closed" in empty.reason


def test_real_samples_match_their_report_and_foreign_ones_are_refused(tmp_path):
    report = json.loads((REPO / "reports/eval.json").read_text())
    scores = read_samples(REPO / "reports/eval_samples.jsonl", report)
    assert len(scores.ids) == report["suite"]["items"]
    assert set(report["suite"]["correctness_metrics"]) <= set(scores.metrics)
    lines = (REPO / "reports/eval_samples.jsonl").read_text().splitlines()
    row = json.loads(lines[3])
    row["field_diagnosis"] = 1.0 - row["field_diagnosis"]  # one item rescored: not this report's samples
    bad = tmp_path / "eval_samples.jsonl"
    bad.write_text("\n".join(lines[:3] + [json.dumps(row)] + lines[4:]) + "\n")
    with pytest.raises(ItemScoresError, match=f"{bad}: slice '{row['slice']}' field_diagnosis"):
        read_samples(bad, report)
    bad.write_text("\n".join(lines[:5] + ["{not json"] + lines[5:]) + "\n")
    with pytest.raises(ItemScoresError, match=f"{bad}:6: not JSON"):
        read_samples(bad, report)
    bad.write_text("\n".join(lines + lines[:1]) + "\n")
    with pytest.raises(ItemScoresError, match="ids repeat"):
        read_samples(bad, report)


def _report_and_items(means: dict[str, list[int]]) -> tuple[dict, ItemScores]:
    """A report consistent with per-item field_accuracy values per slice."""
    report = copy.deepcopy(GOOD)
    ids, slices, col = [], [], []
    for s, values in sorted(means.items()):
        ids += [f"{s}-{k}" for k in range(len(values))]
        slices += [s] * len(values)
        col += [float(v) for v in values]
        report["slices"][s] = {"field_accuracy": {"mean": sum(values) / len(values), "n": len(values)}}
    report["overall"]["field_accuracy"] = {"mean": sum(col) / len(col), "n": len(col)}
    report["suite"].update(items=len(col), suite_items=len(col))
    return report, ItemScores(ids, slices, {"field_accuracy": col})


BUDGETS = GateParams.model_validate({**PARAMS.model_dump(), "rules": [{"metric": "overall.field_accuracy", "min": 0}],
                                     "regression": [{"metric": "overall.field_accuracy", "max_drop": 0.05},
                                                    {"metric": "slices.*.field_accuracy", "max_drop": 0.05}]})


def test_decide_names_the_slice_that_regressed():
    then_report, then_items = _report_and_items({"common": [1] * 30 + [0] * 10, "long": [1] * 30 + [0] * 10})
    now_report, now_items = _report_and_items({"common": [1] * 30 + [0] * 10, "long": [1] * 18 + [0] * 22})
    baseline = Baseline("registry", bundle_digest="b" * 64, eval=then_report, items=then_items)
    d = decide(BUDGETS, now_report, GOOD["bundle_digest"], chat_template_sha256=TEMPLATE, baseline=baseline,
               items=now_items)
    assert set(d["failed"]) == {"regression.slices.long.field_accuracy", "regression.overall.field_accuracy"}
    long = next(r for r in d["comparison"]["rows"] if r["metric"] == "slices.long.field_accuracy")
    assert (long["worse"], long["better"], long["n"]) == (12, 0, 40)
    assert d["baseline"]["bundle_digest"] == "b" * 64 and d["items"]["ids"] == now_items.ids


def test_decide_fails_closed_without_this_runs_items_and_falls_back_to_means_without_the_baselines():
    then_report, then_items = _report_and_items({"common": [1] * 40})
    now_report, _ = _report_and_items({"common": [1] * 40})
    with_items = Baseline("registry", bundle_digest="b" * 64, eval=then_report, items=then_items)
    d = decide(BUDGETS, now_report, GOOD["bundle_digest"], chat_template_sha256=TEMPLATE, baseline=with_items)
    assert d["failed"] == ["item_scores_present"]
    old = Baseline("registry", bundle_digest="b" * 64, eval=then_report, note="no per-item scores")
    d = decide(BUDGETS, now_report, GOOD["bundle_digest"], chat_template_sha256=TEMPLATE, baseline=old)
    assert d["passed"] and d["comparison"]["paired"] is False
    rows = {r["metric"]: r for r in d["comparison"]["rows"]}
    assert rows["slices.common.field_accuracy"]["test"] == "means" and rows["slices.common.field_accuracy"]["n"] == 40
    from pipeline.release.card_data import comparison_lines

    shown = "\n".join(comparison_lines(d))
    assert "Compared by means, not item by item" in shown and "| slices.common.field_accuracy | 40 | 1.000" in shown
    other = copy.deepcopy(then_report)
    other["suite"]["version"] = 2  # means over another version's items compare nothing
    d = decide(BUDGETS, now_report, GOOD["bundle_digest"], chat_template_sha256=TEMPLATE,
               baseline=Baseline("registry", eval=other))
    assert d["failed"] == ["baseline_suite_matches"]


def test_an_eval_json_with_its_samples_beside_it_is_a_paired_baseline(tmp_path):
    from pipeline.gate.baseline import resolve

    (tmp_path / "eval.json").write_bytes((REPO / "reports/eval.json").read_bytes())
    (tmp_path / "eval_samples.jsonl").write_bytes((REPO / "reports/eval_samples.jsonl").read_bytes())
    params = GateParams(baseline=str(tmp_path / "eval.json"))
    b = resolve(params, "c" * 64, {"name": "discharge", "version": 1}, remote=None, repo_root=tmp_path,
                cache_dir=tmp_path / "cache", public_key=None)
    assert b.error is None and b.items is not None and set(b.files) == {"eval.json", "eval_samples.jsonl"}
    none = resolve(GateParams(), "c" * 64, {"name": "discharge", "version": 1}, remote=None, repo_root=tmp_path,
                   cache_dir=tmp_path / "cache", public_key=None)
    assert none.eval is None and none.note.startswith("no previous release: no regression check")


def test_no_budgets_compare_nothing_and_say_so():
    then_report, then_items = _report_and_items({"common": [1] * 40})
    now_report, now_items = _report_and_items({"common": [0] * 40})
    params = GateParams.model_validate({**BUDGETS.model_dump(), "regression": []})
    d = decide(params, now_report, GOOD["bundle_digest"], chat_template_sha256=TEMPLATE,
               baseline=Baseline("registry", bundle_digest="b" * 64, eval=then_report, items=then_items),
               items=now_items)
    assert d["passed"] and d["comparison"]["note"].startswith("gate.regression names no budgets")
    assert not [r for r in d["rules"] if r["name"].startswith(("regression.", "baseline_"))]
