"""The suite contract has no traps: what `check` catches before anything is generated, and an
`include:` that works from another folder (issue 24, points 7, 9 and 10)."""

from __future__ import annotations

import json

import pytest
import yaml

from pipeline.params import GateParams
from pipeline.suites import load_suite
from pipeline.suites.check import check_suite
from tests.conftest import REPO


def _suite(tmp_path, records, **spec):
    for i, r in enumerate(records):
        r.setdefault("id", f"item{i}")
        r.setdefault("slice", "s")
        r.setdefault("prompt", "question?")
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    base = {"name": "t", "version": 1, "data": "items.jsonl", "headline_metric": "exact_match",
            "scorers": ["exact_match"], "generate_task": "t", "min_slice_n": 1, **spec}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(base))
    return load_suite(tmp_path)


def test_a_threshold_outside_the_metrics_range_can_never_pass(tmp_path):
    suite = _suite(tmp_path, [{"completion": "a"}, {"completion": "b"}])
    gate = GateParams(rules=[{"metric": "overall.exact_match", "min": 40},
                             {"metric": "slices.*.exact_match", "min": 0.5},
                             {"metric": "damage.flip_rate", "max": -0.1}])
    problems = check_suite(suite, gate=gate, damage=True).problems
    never = [p for p in problems if "can never pass" in p]
    assert len(never) == 2 and "overall.exact_match, min 40" in never[0] and "write 0.4, not 40" in never[0]
    assert "damage.flip_rate" in never[1]


def test_a_headline_some_items_lack_is_refused(tmp_path):
    suite = _suite(tmp_path, [{"completion": "a", "need": "a"}, {"completion": "b", "need": None}],
                   headline_metric="contains_ok", scorers=[{"scorer": "contains", "must_from": "need"}])
    [problem] = [p for p in check_suite(suite).problems if "headline_metric" in p]
    assert "produced for 1 of 2 items" in problem


@pytest.mark.parametrize("name, why", [("n", "collides"), ("too_small", "collides"), ("ci95", "collides")])
def test_metric_names_that_collide_with_report_fields_are_refused(tmp_path, name, why):
    suite = _suite(tmp_path, [{"completion": "a"}], headline_metric=name,
                   scorers=[{"scorer": "contains", "must": ["a"], "name": name}])
    assert any(f"metric name {name!r}" in p and why in p for p in check_suite(suite).problems)


def test_references_longer_than_the_budget_are_named(tmp_path):
    from transformers import AutoTokenizer

    from tests.conftest import build_tiny_model_dir

    tok = AutoTokenizer.from_pretrained(build_tiny_model_dir(tmp_path / "tok"))
    (tmp_path / "s").mkdir()
    suite = _suite(tmp_path / "s", [{"completion": "ok"}, {"completion": "a long answer " * 20}],
                   generation={"max_new_tokens": 8})
    warned = [w for w in check_suite(suite, tokenizer=tok).warnings if "longer than" in w]
    assert len(warned) == 1 and "item1" in warned[0] and "item0" not in warned[0]
    assert not [w for w in check_suite(suite).warnings if "longer than" in w]  # no tokenizer: not checked


def test_an_included_suite_resolves_its_paths_against_its_own_folder(tmp_path):
    """The documented variant (`include: ../discharge/suite.yaml`) from a folder of its own: the
    parent's items, tasks and own scorers are found, the variant's overrides win."""
    variant = tmp_path / "discharge_strict"
    variant.mkdir()
    parent = REPO / "eval_suites/discharge"
    import os

    include = os.path.relpath(parent / "suite.yaml", variant)  # relative, as documented
    (variant / "suite.yaml").write_text(yaml.safe_dump({"include": include, "name": "discharge_strict",
                                                        "min_slice_n": 30}))
    suite = load_suite(variant)
    base = load_suite(parent)
    assert suite.spec.name == "discharge_strict" and suite.spec.min_slice_n == 30
    assert [it.id for it in suite.items()] == [it.id for it in base.items()]
    assert suite.data_path.resolve() == base.data_path.resolve()
    check = check_suite(suite, damage=True)
    assert check.ok, check.problems  # suite-local scorers (scorers.py) found in the included folder
    assert check.metrics == check_suite(base, damage=True).metrics


def test_a_missing_include_names_where_it_looked(tmp_path):
    (tmp_path / "suite.yaml").write_text("include: ../nowhere/suite.yaml\nname: x\n")
    from pipeline.suites.spec import SuiteError

    with pytest.raises(SuiteError, match="include '../nowhere/suite.yaml' not found"):
        load_suite(tmp_path)


def test_damage_drops_follow_the_headlines_direction():
    from pipeline.evaluate.damage import compare

    shipped = [{"id": "a", "slice": "s", "output": "x", "err": 0.4}, {"id": "b", "slice": "s", "output": "y", "err": 0.2}]
    reference = [{"id": "a", "slice": "s", "output": "x", "err": 0.1}, {"id": "b", "slice": "s", "output": "y", "err": 0.1}]
    lower = compare(shipped, reference, ["s"], "ref", "err", [], lower_is_better=True)
    higher = compare(shipped, reference, ["s"], "ref", "err", [])
    # quantization raised an error rate from 0.1 to 0.3: a drop in quality of 0.2
    assert lower["slices"]["s"]["err_drop"] == pytest.approx(0.2) == lower["worst_slice_drop"]
    assert higher["slices"]["s"]["err_drop"] == pytest.approx(-0.2)
