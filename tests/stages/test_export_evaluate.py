"""An export is evaluated as its own configuration and gated against the shipped bundle.

The correct merged export (the adapter folded into the dequantized NF4 base) and a broken one
(the adapter folded into the 16-bit original, the usual recipe) go through the same suite; the
damage against the bundle's own evaluation tells them apart, and the gate refuses the broken
one. The export's files are checked before anything loads."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.params import GateRule, load_section
from tests.conftest import REPO


@pytest.fixture(scope="module")
def shipped(tiny_pipeline):
    """The bundle's own evaluation (what reports/eval.json and eval_samples.jsonl hold)."""
    from pipeline.evaluate import evaluate

    params = load_section("evaluate", tiny_pipeline["params"]).model_copy(
        update={"suite": str(REPO / "eval_suites/discharge"), "damage": False})
    report, rows, _golden = evaluate(params, tiny_pipeline["bundle"])
    return params, report, rows


def _broken_export(tiny_pipeline, out):
    """What most fine-tuning tools ship: the adapter merged into the 16-bit original weights."""
    from pipeline.bundle.verify import verify_bundle
    from pipeline.engines.hf import load_model
    from pipeline.export.merged import finish, staging

    bundle = verify_bundle(tiny_pipeline["bundle"])
    out, tmp = staging(out)
    model = load_model(tiny_pipeline["base"], bundle.root / "adapter", torch.float32).merge_and_unload()
    model.generation_config.eos_token_id = list(bundle.manifest.tokenizer.stop_token_ids)
    model.save_pretrained(tmp, safe_serialization=True)
    for f in sorted((bundle.root / "tokenizer").iterdir()):
        (tmp / f.name).write_bytes(f.read_bytes())
    return finish(tmp, out, bundle.manifest, {"kind": "merged", "dtype": "float32", "recipe": "16-bit base + adapter"})


@pytest.fixture(scope="module")
def evaluated_exports(tiny_pipeline, shipped, tmp_path_factory):
    from pipeline.export import export_merged
    from pipeline.export.evaluate import evaluate_export

    params, report, rows = shipped
    root = tmp_path_factory.mktemp("exports")
    export_merged(tiny_pipeline["bundle"], root / "merged", dtype="float32")
    _broken_export(tiny_pipeline, root / "broken")
    out = {name: evaluate_export(params, root / name, tiny_pipeline["bundle"], report, rows)
           for name in ("merged", "broken")}
    return root, out


def test_the_export_is_evaluated_on_the_bundles_suite_with_damage_against_the_bundle(tiny_pipeline, shipped,
                                                                                     evaluated_exports):
    _params, report, rows = shipped
    _root, out = evaluated_exports
    export_report, export_rows, golden = out["merged"]
    assert export_report["bundle_digest"] == report["bundle_digest"]
    assert export_report["export"]["kind"] == "merged" and export_report["engine"]["batch_invariant"] is True
    assert sorted(r["id"] for r in export_rows) == sorted(r["id"] for r in rows)
    assert export_report["suite"]["system_prompt"] == report["suite"]["system_prompt"]
    d = export_report["damage"]
    assert d["items"] == len(rows) and d["reference"].startswith("the shipped bundle")
    assert set(d["slices"]) == set(report["slices"])
    assert "p99" in d["delta_nll_per_token"]
    # the export's own answers, token ids included: what serving the export replays
    assert golden["bundle_digest"] == report["bundle_digest"] and golden["export"]["name"] == "merged"
    assert golden["export"]["digest"] == export_report["export"]["digest"]
    assert sorted(g["id"] for g in golden["prompts"]) == sorted(r["id"] for r in export_rows)
    assert all(len(g["token_ids"]) == len(g["logprobs"]) for g in golden["prompts"])


def test_the_broken_export_is_further_from_the_bundle_and_refused(tiny_pipeline, evaluated_exports):
    """The tiny model's reference answers are long and its weights random: the correct export's
    delta NLL is float32-vs-bfloat16 rounding, the broken one's is the NF4 quantization error the
    adapter was trained around. A ceiling between them (measured here: see the printed values)
    passes one and refuses the other."""
    from pipeline.export.evaluate import gate_export

    _root, out = evaluated_exports
    good = out["merged"][0]["damage"]["abs_delta_nll_per_token"]["p99"]
    bad = out["broken"][0]["damage"]["abs_delta_nll_per_token"]["p99"]
    print(f"\n|delta NLL| against the bundle, p99 (nats/token): merged export {good:.2e}, "
          f"merged into the 16-bit original {bad:.2e}")
    assert bad >= 10 * good
    rule = GateRule(metric="damage.abs_delta_nll_per_token.p99", max=(good * bad) ** 0.5)  # between, log scale
    gate = load_section("gate", tiny_pipeline["params"])
    ok = gate_export(gate, out["merged"][0], tiny_pipeline["bundle"], export_rules=(rule,))
    refused = gate_export(gate, out["broken"][0], tiny_pipeline["bundle"], export_rules=(rule,))
    assert ok["passed"], ok["failed"]
    assert not refused["passed"] and "damage.abs_delta_nll_per_token.p99" in refused["failed"]


def test_a_changed_export_file_is_refused_by_name(tiny_pipeline, shipped, evaluated_exports, tmp_path):
    import shutil

    from pipeline.export import ExportError
    from pipeline.export.evaluate import evaluate_export

    params, report, rows = shipped
    root, _out = evaluated_exports
    copy = tmp_path / "merged"
    shutil.copytree(root / "merged", copy)
    gen = json.loads((copy / "generation_config.json").read_text())
    gen["eos_token_id"] = 0  # an export that lost its end-of-turn token
    (copy / "generation_config.json").write_text(json.dumps(gen))
    with pytest.raises(ExportError, match="generation_config.json"):
        evaluate_export(params, copy, tiny_pipeline["bundle"], report, rows)
    (copy / "generation_config.json").unlink()
    with pytest.raises(ExportError, match="generation_config.json is missing"):
        evaluate_export(params, copy, tiny_pipeline["bundle"], report, rows)


def test_an_export_of_another_bundle_or_an_evaluation_of_another_bundle_is_refused(tiny_pipeline, shipped,
                                                                                     evaluated_exports):
    from pipeline.export import ExportError
    from pipeline.export.evaluate import evaluate_export

    params, report, rows = shipped
    root, _out = evaluated_exports
    with pytest.raises(ExportError, match="describes another bundle"):
        evaluate_export(params, root / "merged", tiny_pipeline["bundle"], {**report, "bundle_digest": "0" * 64}, rows)
    with pytest.raises(ExportError, match="lacks items"):
        evaluate_export(params, root / "merged", tiny_pipeline["bundle"], report, rows[1:])


def test_the_command_writes_the_reports_and_exits_1_when_refused(tiny_pipeline, shipped, evaluated_exports,
                                                                 tmp_path, capsys):
    from pipeline.export.__main__ import main

    _params, report, rows = shipped
    root, _out = evaluated_exports
    (tmp_path / "eval.json").write_text(json.dumps(report))
    (tmp_path / "eval_samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["evaluate", "--bundle", str(tiny_pipeline["bundle"]), "--eval", str(tmp_path / "eval.json"),
            "--samples", str(tmp_path / "eval_samples.jsonl"), "--params", str(tiny_pipeline["params"])]
    # the tiny bundle's limited evaluation (one item a slice) is allowed by its params; the suite
    # path in its params is relative to the repository
    code = main([*args, "--export", str(root / "broken"), "--out", str(tmp_path / "broken")])
    written = json.loads((tmp_path / "broken/gate.json").read_text())
    assert code == (0 if written["passed"] else 1)
    assert json.loads((tmp_path / "broken/eval.json").read_text())["export"]["kind"] == "merged"
    assert (tmp_path / "broken/gate.md").read_text().strip()
