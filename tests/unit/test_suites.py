"""Every shipped eval suite passes the suite check (items load, scorers run, the reference
answers score perfectly on every correctness metric, params.yaml's gate rules name metrics it
produces), and the suite format reads both item shapes."""

from __future__ import annotations

import json

import pytest

from pipeline.params import load_section
from pipeline.suites import SuiteError, load_all_suites, load_suite
from pipeline.suites.check import check_suite
from tests.conftest import REPO

SUITES = load_all_suites(REPO / "eval_suites")


def test_there_is_a_default_suite():
    assert "discharge" in {s.name for s in SUITES}


@pytest.mark.parametrize("suite", SUITES, ids=lambda s: s.name)
def test_shipped_suite_passes_the_check(suite):
    result = check_suite(suite)
    assert not result.problems, result.problems
    assert all(n >= suite.spec.min_slice_n for n in result.slices.values()), result.slices


def test_the_default_gate_names_metrics_the_default_suite_produces():
    params = load_section("evaluate", REPO / "params.yaml")
    result = check_suite(load_suite(REPO / params.suite), gate=load_section("gate", REPO / "params.yaml"))
    assert not result.problems, result.problems


def test_include_overrides_keys(tmp_path):
    variant = tmp_path / "variant"
    variant.mkdir()
    (variant / "suite.yaml").write_text(
        f"include: {REPO / 'eval_suites/discharge/suite.yaml'}\nname: variant\nmin_slice_n: 5\n")
    suite = load_suite(variant)
    assert suite.name == "variant" and suite.spec.min_slice_n == 5
    assert suite.spec.generate_task == "discharge_summary"


def test_unknown_keys_are_errors(tmp_path):
    (tmp_path / "suite.yaml").write_text((REPO / "eval_suites/discharge/suite.yaml").read_text() + "scorer: typo\n")
    with pytest.raises(SuiteError, match="scorer"):
        load_suite(tmp_path)


def _suite(tmp_path, records: list, **spec):
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    base = {"name": "t", "version": 1, "data": "items.jsonl", "headline_metric": "exact_match",
            "scorers": ["exact_match"], "generate_task": "t", **spec}
    import yaml

    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(base))
    return load_suite(tmp_path)


def test_both_item_shapes_and_system_prompt_policies(tmp_path):
    chat = {"id": "a", "slice": "s", "messages": [{"role": "system", "content": "Be brief."},
                                                  {"role": "user", "content": "2+2?"},
                                                  {"role": "assistant", "content": "4"}]}
    pc = {"slice": "s", "prompt": "3+3?", "completion": "6"}
    items = _suite(tmp_path, [chat, pc]).items()
    assert items[0].system == "Be brief." and items[0].reference == "4"
    assert items[1].id == "items.jsonl:2" and items[1].messages == ({"role": "user", "content": "3+3?"},)
    # an item's own system turn wins; the default fills in for the others
    assert items[0].prompt_messages("Default.")[0]["content"] == "Be brief."
    assert items[1].prompt_messages("Default.")[0] == {"role": "system", "content": "Default."}
    assert items[1].prompt_messages(None) == [{"role": "user", "content": "3+3?"}]


@pytest.mark.parametrize("record, message", [
    ({"slice": "s", "prompt": "x"}, "completion"),
    ({"prompt": "x", "completion": "y"}, "slice"),
    ({"slice": "s", "messages": [{"role": "user", "content": "x"}]}, "reference assistant turn"),
    ({"slice": "s", "prompt": "x", "completion": "c", "options": ["a", "b"]}, "not one of its options"),
    ({"slice": "s", "prompt": "   ", "completion": "c"}, "empty prompt"),
])
def test_a_bad_item_is_named_with_its_line(tmp_path, record, message):
    suite = _suite(tmp_path, [{"slice": "s", "prompt": "ok", "completion": "ok"}, record])
    with pytest.raises(SuiteError, match=message) as err:
        suite.items()
    assert "items.jsonl:2" in str(err.value)


def test_limit_takes_the_first_items_of_every_slice(tmp_path):
    recs = [{"slice": s, "prompt": f"{s}{i}", "completion": "x"} for s in ("a", "b") for i in range(3)]
    suite = _suite(tmp_path, recs)
    assert [(i.slice, i.prompt) for i in suite.limited(2)] == [("a", "a0"), ("a", "a1"), ("b", "b0"), ("b", "b1")]
    assert len(suite.limited(None)) == 6
