"""The export stage: nothing asked for writes only a record saying so; an export asked for is
written, evaluated on the bundle's suite, gated against the bundle and summarised for
`dvc metrics show`."""

from __future__ import annotations

import json

import pytest
import yaml

from pipeline.params import load_section
from tests.conftest import REPO


@pytest.fixture(scope="module")
def shipped_files(tiny_pipeline, tmp_path_factory):
    from pipeline.evaluate import evaluate

    params = load_section("evaluate", tiny_pipeline["params"]).model_copy(
        update={"suite": str(REPO / "eval_suites/discharge"), "damage": False})
    report, rows, _golden = evaluate(params, tiny_pipeline["bundle"])
    root = tmp_path_factory.mktemp("shipped")
    (root / "eval.json").write_text(json.dumps(report))
    (root / "eval_samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _params(tiny_pipeline, tmp_path, **export) -> str:
    data = yaml.safe_load(tiny_pipeline["params"].read_text())
    data["evaluate"]["suite"] = str(REPO / "eval_suites/discharge")
    data["export"] = export
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _run(tiny_pipeline, shipped_files, tmp_path, **export) -> tuple[int, dict, dict]:
    from stages.export import main

    code = main(["--params", _params(tiny_pipeline, tmp_path, **export), "--bundle", str(tiny_pipeline["bundle"]),
                 "--eval", str(shipped_files / "eval.json"), "--samples", str(shipped_files / "eval_samples.jsonl"),
                 "--out", str(tmp_path / "exports"), "--reports", str(tmp_path / "reports"),
                 "--metrics", str(tmp_path / "metrics.json")])
    return (code, json.loads((tmp_path / "reports/exports.json").read_text()),
            json.loads((tmp_path / "metrics.json").read_text()))


def test_nothing_asked_for_writes_a_record_saying_so(tiny_pipeline, shipped_files, tmp_path, monkeypatch):
    import pipeline.export as export

    monkeypatch.setattr(export, "export_merged", lambda *a, **k: pytest.fail("nothing was asked for"))
    code, summary, metrics = _run(tiny_pipeline, shipped_files, tmp_path)
    assert code == 0 and summary["requested"] == [] and summary["configurations"] == {} and metrics == {}
    assert json.loads((tmp_path / "exports/exports.json").read_text()) == summary


def test_an_export_asked_for_is_written_evaluated_and_gated(tiny_pipeline, shipped_files, tmp_path):
    code, summary, metrics = _run(tiny_pipeline, shipped_files, tmp_path, merged=True, merged_dtype="float32")
    assert code == 0 and summary["requested"] == ["merged"]
    merged = summary["configurations"]["merged"]
    assert merged["kind"] == "merged" and merged["gate_passed"] and merged["identical_outputs"] == 1.0
    assert (tmp_path / "exports/merged/model.safetensors").is_file()
    gate = json.loads((tmp_path / "reports/merged/gate.json").read_text())
    assert gate["passed"] and any(r["name"] == "damage.abs_delta_nll_per_token.p99" for r in gate["rules"])
    assert json.loads((tmp_path / "reports/merged/eval.json").read_text())["damage"]["items"] == \
        len((shipped_files / "eval_samples.jsonl").read_text().splitlines())
    assert metrics["merged"]["gate_passed"] == 1 and metrics["merged"]["flip_rate"] == 0.0


def test_an_export_over_the_export_rules_is_recorded_as_refused_and_the_stage_still_passes(
        tiny_pipeline, shipped_files, tmp_path):
    """A ceiling no export can meet (negative): the export is kept, recorded as refused, never shipped."""
    rules = [{"metric": "damage.abs_delta_nll_per_token.p99", "max": -1.0}]
    code, summary, metrics = _run(tiny_pipeline, shipped_files, tmp_path, merged=True, merged_dtype="float32",
                                  rules=rules)
    assert code == 0
    assert summary["configurations"]["merged"]["gate_failed"] == ["damage.abs_delta_nll_per_token.p99"]
    assert metrics["merged"]["gate_passed"] == 0


def test_export_params_refuse_a_type_twice_and_unknown_types():
    from pydantic import ValidationError

    from pipeline.params import ExportParams

    assert ExportParams(merged=True, gguf=["q8_0", "f16"]).requested() == ["merged", "gguf_q8_0", "gguf_f16"]
    with pytest.raises(ValidationError, match="twice"):
        ExportParams(gguf=["q8_0", "q8_0"])
    with pytest.raises(ValidationError):
        ExportParams(gguf=["q4_k"])
