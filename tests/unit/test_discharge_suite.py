"""The default suite's own scorers (eval_suites/discharge/scorers.py): they tell a right summary
from a wrong one, and moved out of pipeline/ without changing a single per-item value or mean of
the default release's report (tests/data/gate_v1 is that report, made by the code before the
move; its CIs were percentile intervals, BCa since)."""

from __future__ import annotations

import json

import pytest

from pipeline.evaluate.run import aggregate
from pipeline.evaluate.scoring import Output, build_scorers, load_module, score_item
from pipeline.params import EvaluateParams
from pipeline.suites import load_suite
from tests.conftest import REPO

SUITE = load_suite(REPO / "eval_suites/discharge")
ITEMS = SUITE.items()
SCORERS = {s.name.split(":")[-1]: s for s in build_scorers(SUITE)}
FMT = load_module(REPO / "eval_suites/discharge/summary_format.py")
V1 = REPO / "tests/data/gate_v1"


def run(name: str, text: str, item) -> dict[str, float]:
    return SCORERS[name](Output(text), item)


def test_the_v1_report_is_reproduced_item_by_item_and_in_aggregate():
    rows = [json.loads(line) for line in (V1 / "eval_samples.jsonl").read_text().splitlines()]
    by_id = {it.id: it for it in ITEMS}
    scorers = list(SCORERS.values())
    rescored = []
    for r in rows:
        new = score_item(scorers, Output(r["output"]), by_id[r["id"]])
        assert new == {k: r[k] for k in new}, r["id"]
        rescored.append({"id": r["id"], "slice": r["slice"], "prompt_tokens": r["prompt_tokens"],
                         "output": r["output"], **new, "nll_per_token": r["nll_per_token"]})
    old = json.loads((V1 / "eval.json").read_text())
    agg = aggregate(rescored, SUITE, EvaluateParams(bootstrap_samples=1000, seed=0), scorers)
    # every mean and count as v1 had it; the CIs are exact binomial (0/1 metrics) or BCa now
    # (v1's were percentile intervals), so they are checked for what any CI of a mean must be
    # instead, and the interval each metric has follows its values
    assert _without_ci(agg["overall"]) == _without_ci(old["overall"])
    assert _without_ci(agg["slices"]) == _without_ci(old["slices"])
    assert agg["worst_slice"] == old["worst_slice"] and agg["length_buckets"] == old["length_buckets"]
    for summary in [*agg["overall"].values(), *(v for s in agg["slices"].values() for v in s.values()
                                               if isinstance(v, dict))]:
        lo, hi = summary["ci95"]
        assert lo <= summary["mean"] <= hi
    for m, summary in agg["overall"].items():
        binary = {r[m] for r in rescored if m in r} <= {0.0, 1.0}
        assert summary["interval"] == ("clopper-pearson" if binary else "bca-bootstrap"), m


def _without_ci(node):
    if isinstance(node, dict):
        return {k: _without_ci(v) for k, v in node.items() if k not in ("ci95", "interval")}
    return node


@pytest.mark.parametrize("item", ITEMS[::20], ids=lambda i: i.id)
def test_the_reference_scores_perfectly(item):
    ref = item.reference
    assert run("field_exact_match", ref, item)["field_accuracy"] == 1.0
    assert run("format_validity", ref, item)["format_valid"] == 1.0
    assert run("hallucinated_entities", ref, item)["hallucination"] == 0.0
    assert run("list_f1", ref, item)["list_f1"] == 1.0


def test_an_invented_drug_is_a_hallucination_even_in_a_broken_format():
    item = ITEMS[0]
    lines = item.reference.splitlines()
    lines[1] = lines[1] + "; zolpiclonazide 5 mg daily"
    assert run("hallucinated_entities", "\n".join(lines), item)["hallucination"] == 1.0
    assert run("hallucinated_entities", "Medications: zolpiclonazide 5 mg daily\nwhatever", item)["hallucination"] == 1.0
    wrong_field = run("field_exact_match", "\n".join(lines), item)
    assert wrong_field["field_medications"] == 0.0 and wrong_field["field_diagnosis"] == 1.0


def test_declarations_match_what_the_scorers_write():
    assert set(SCORERS["field_exact_match"].correctness) == {f"field_{f}" for f in FMT.FIELDS}
    assert SCORERS["hallucinated_entities"].lower_is_better == ("hallucination",)
    out = run("field_exact_match", "", ITEMS[0])
    assert set(out) == set(SCORERS["field_exact_match"].metrics) and out["field_accuracy"] == 0.0


def _with_meds(item, meds: list[str]) -> str:
    lines = item.reference.splitlines()
    lines[1] = "Medications: " + ("; ".join(meds) if meds else "none")
    return "\n".join(lines)


def test_list_f1_counts_items_not_lines():
    item = next(it for it in ITEMS if len(FMT.parse(it.reference).medications) >= 2)
    gold = FMT.parse(item.reference)
    meds = list(gold.medications)
    others = sum(len(getattr(gold, f)) for f in ("allergies", "warnings"))
    missing = run("list_f1", _with_meds(item, meds[1:]), item)
    total = len(meds) + others
    assert missing["list_precision"] == 1.0
    assert missing["list_recall"] == pytest.approx((total - 1) / total)
    extra = run("list_f1", _with_meds(item, meds + ["zolpiclonazide 5 mg daily"]), item)
    assert extra["list_recall"] == 1.0 and extra["list_precision"] == pytest.approx(total / (total + 1))
    noisy = run("list_f1", _with_meds(item, [m.upper() + "  " for m in meds] + [meds[0]]), item)
    assert noisy["list_f1"] == 1.0
    assert run("list_f1", _with_meds(item, []), item)["f1_medications"] == 0.0


def test_a_broken_reference_is_named():
    bad = ITEMS[0].__class__(id="x-1", slice="common", messages=ITEMS[0].messages, reference="not a summary")
    with pytest.raises(ValueError, match="x-1"):
        run("field_exact_match", "anything", bad)


def test_bca_intervals_on_binary_slices():
    """BCa on 0/1 outcomes: seeded, contains the mean, zero-width with no spread, and skewed
    toward the middle near a boundary (where the percentile interval is symmetric-ish)."""
    from pipeline.evaluate.stats import bootstrap_ci

    x = [1.0] * 36 + [0.0] * 4
    lo, hi = bootstrap_ci(x, 1000, 0)
    assert (lo, hi) == bootstrap_ci(x, 1000, 0) and lo < 0.9 < hi <= 1.0
    assert 0.9 - lo > hi - 0.9  # more room below a mean near 1 than above it
    assert bootstrap_ci([1.0] * 40, 1000, 0) == (1.0, 1.0) and bootstrap_ci([0.0] * 5, 1000, 0) == (0.0, 0.0)
    assert bootstrap_ci([0.25], 1000, 0) == (0.25, 0.25)
