"""Nothing a gate rule names is folded away, and nothing partial is shown as whole.

eval.md and the card show a few extra metrics beside the headline; a metric a gate rule names
is always among them, whatever the column budget, and the rest are pointed to. A limited
evaluation says so wherever a count appears."""

from __future__ import annotations

import copy

import pytest

from pipeline.evaluate.report import EXTRA_COLUMNS, render_markdown
from pipeline.report_paths import metric_names
from tests.unit.test_release_card import manifest, render, reports, section  # noqa: F401  (fixtures)

EXTRA = [f"key_field_{i}" for i in range(EXTRA_COLUMNS + 3)]


def _with_many_metrics(ev: dict) -> dict:
    ev = copy.deepcopy(ev)
    for i, m in enumerate(EXTRA):
        value = {"mean": 0.0 if m == EXTRA[-1] else 1.0, "ci95": [0.0, 1.0], "interval": "clopper-pearson"}
        ev["overall"][m] = value
        for s in ev["slices"].values():
            s[m] = dict(value)
    return ev


def test_metric_names_of_rule_paths():
    assert metric_names(["overall.a", "slices.*.b", "slices.x.b [ci_low]", "damage.flip_rate",
                         "reference.slices.y.c", "slices.*.too_small", "slices.x.n"]) == ["a", "b", "c"]


def _current_report() -> dict:
    """The committed default report: the shape today's evaluation writes."""
    import json

    from tests.conftest import REPO

    return json.loads((REPO / "reports/eval.json").read_text())


def test_eval_md_shows_every_metric_a_rule_names():
    ev = _with_many_metrics(_current_report())
    last = EXTRA[-1]  # would be folded by the column budget
    assert f"| {last}" not in render_markdown(ev).split("Also in eval.json")[0]
    md = render_markdown(ev, named=[last])
    table = md.split("Worst slice")[0]
    assert last in table and "Also in eval.json, per slice:" in md


def test_the_card_shows_every_metric_a_rule_names(manifest, reports):  # noqa: F811
    ev, gate = reports
    ev = _with_many_metrics(ev)
    last = EXTRA[-1]
    gate = copy.deepcopy(gate)
    gate["rules"].append({"name": f"slices.allergy.{last} [ci_low]", "value": 0.0, "threshold": 0.9, "op": ">=",
                          "passed": True, "note": ""})
    results = section(render(manifest, ev, gate), "Results by slice")
    header = results.splitlines()[2]
    assert last in header  # a column, with its value, beside the headline
    assert "Also per slice in `eval.json`" in results  # what is folded is named, not hidden
    assert "exact binomial" in results.splitlines()[0]


def test_a_limited_evaluation_is_said_on_the_card_and_in_eval_md(manifest, reports):  # noqa: F811
    ev, gate = reports
    ev = copy.deepcopy(ev)
    ev["suite"].update(items=40, suite_items=160, limit_per_slice=10, limited=True)
    for s in ev["slices"].values():
        s.update(suite_n=s["n"], n=10)
    card = render(manifest, ev, gate)
    assert "a limited evaluation: 40 of its 160 items" in card and "evaluate.limit = 10 per slice" in card
    assert "| 10 of 40 |" in section(card, "Results by slice")
    md = render_markdown({**_current_report(), "suite": ev["suite"], "slices": ev["slices"]})
    assert "40 of the suite's 160 items (**limited**: evaluate.limit = 10 per slice)" in md
    assert "| 10 of 40 |" in md


@pytest.mark.parametrize("limit, warned", [(None, False), (5, True)])
def test_the_suite_check_honours_the_limit(limit, warned):
    from pipeline.suites import load_suite
    from pipeline.suites.check import check_suite
    from tests.conftest import REPO

    check = check_suite(load_suite(REPO / "eval_suites/discharge"), damage=False, limit=limit)
    small = [w for w in check.warnings if "smaller than min_slice_n" in w]
    assert bool(small) is warned
    if warned:
        assert "evaluate.limit=5" in small[0]
        assert any("evaluates 20 of 160 items" in w for w in check.warnings)
