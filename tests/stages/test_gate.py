"""gate: fails closed on every kind of missing or mismatched evidence."""

from __future__ import annotations

import copy
import json

import pytest

from pipeline.gate import decide, render_markdown
from pipeline.params import GateParams

DIGEST = "a" * 64
GOOD = {
    "bundle_digest": DIGEST,
    "engine": {"name": "hf", "exact": True},
    "overall": {"field_accuracy": {"mean": 0.8}, "format_valid": {"mean": 0.99}, "hallucination": {"mean": 0.02}},
    "slices": {"common": {"field_accuracy": {"mean": 0.85}}, "long": {"field_accuracy": {"mean": 0.7}}},
    "worst_slice": {"slice": "long", "mean": 0.7, "n": 40},
    "nll_per_token": {"p99": 0.9},
}
PARAMS = GateParams(min_field_accuracy=0.7, min_slice_field_accuracy={"long": 0.6}, min_worst_slice_field_accuracy=0.6,
                    min_format_validity=0.95, max_nll_p99=1.5, max_hallucination_rate=0.05)


def test_good_report_passes():
    d = decide(PARAMS, GOOD, DIGEST)
    assert d["passed"] and not d["failed"]
    assert "PASS" in render_markdown(d)


@pytest.mark.parametrize("mutate, rule", [
    (lambda r: r.update(bundle_digest="b" * 64), "bundle_digest_matches"),
    (lambda r: r["overall"].pop("field_accuracy"), "field_accuracy"),
    (lambda r: r.pop("worst_slice"), "worst_slice_field_accuracy"),
    (lambda r: r["engine"].update(exact=False), "engine_exact"),
    (lambda r: r.pop("engine"), "engine_exact"),
    (lambda r: r["slices"]["long"]["field_accuracy"].update(mean=0.5), "slice[long].field_accuracy"),
    (lambda r: r["slices"].pop("long"), "slice[long].field_accuracy"),
    (lambda r: r["nll_per_token"].update(p99=3.0), "nll_per_token_p99"),
    (lambda r: r["overall"]["format_valid"].update(mean=0.5), "format_validity"),
    (lambda r: r["overall"]["hallucination"].update(mean=0.2), "hallucination_rate"),
    (lambda r: r["overall"].pop("hallucination"), "hallucination_rate"),
])
def test_each_failure_fails_closed(mutate, rule):
    report = copy.deepcopy(GOOD)
    mutate(report)
    d = decide(PARAMS, report, DIGEST)
    assert not d["passed"] and rule in d["failed"]
    assert "FAIL" in render_markdown(d) and rule in render_markdown(d)


def test_empty_report_fails_every_rule():
    d = decide(PARAMS, {}, DIGEST)
    assert not d["passed"] and len(d["failed"]) == len(d["rules"])


def test_inexact_engine_only_when_allowed():
    report = copy.deepcopy(GOOD)
    report["engine"]["exact"] = False
    assert decide(PARAMS.model_copy(update={"allow_inexact_engine": True}), report, DIGEST)["passed"]


def test_stage_exits_nonzero_on_failure(tmp_path):
    from stages.gate import main

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({"bundle_digest": DIGEST}))
    report = tmp_path / "eval.json"
    report.write_text(json.dumps(GOOD))
    params = tmp_path / "params.yaml"
    params.write_text("gate:\n  min_field_accuracy: 0.7\n")
    args = ["--params", str(params), "--report", str(report), "--bundle", str(bundle),
            "--out", str(tmp_path / "gate.json"), "--summary", str(tmp_path / "gate.md"),
            "--metrics", str(tmp_path / "metrics.json")]
    assert main(args) == 0
    params.write_text("gate:\n  min_field_accuracy: 0.9\n")
    assert main(args) == 1
    assert json.loads((tmp_path / "gate.json").read_text())["failed"] == ["field_accuracy"]
    assert json.loads((tmp_path / "metrics.json").read_text())["passed"] is False
    (bundle / "manifest.json").write_text(json.dumps({"bundle_digest": "c" * 64}))
    params.write_text("gate:\n  min_field_accuracy: 0.7\n")
    assert main(args) == 1  # the report describes another bundle
