"""The export stage's work: write each export params ask for, evaluate it, gate it, record it.

Nothing asked for (the default) writes a record saying so and loads nothing. Each export goes to
`<out>/<name>/` (merged, gguf_<type>), its evaluation, gate decision and golden answers (what
serving it replays) to `<reports>/<name>/`,
and one summary of every configuration beside the bundle (size, headline, damage, verdict) to
`<out>/exports.json` and the metrics file. A refused export is kept and recorded as refused: it
does not stop the bundle's own release, and nothing refused is shipped.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from pipeline.files import atomic_write_json, atomic_write_text, read_json
from pipeline.params import EvaluateParams, ExportParams, GateParams

log = logging.getLogger(__name__)

SUMMARY = "exports.json"


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _write(params: ExportParams, name: str, bundle_dir: Path, out: Path) -> None:
    from pipeline.export import export_gguf, export_merged

    if name == "merged":
        export_merged(bundle_dir, out, params.merged_dtype)
    else:
        export_gguf(bundle_dir, out, name.removeprefix("gguf_"), params.gguf_pre_tokenizer)


def _entry(report: dict, decision: dict, size: int) -> dict:
    head, d = report["headline_metric"], report["damage"]
    return {"kind": report["export"]["kind"], "digest": report["export"]["digest"], "size_bytes": size, "engine": report["engine"]["description"],
            "headline": report["overall"][head]["mean"], "gate_passed": decision["passed"],
            "gate_failed": decision["failed"], "identical_outputs": d["identical_outputs"],
            "flip_rate": d["flip_rate"], "unflip_rate": d["unflip_rate"], "worst_slice_drop": d["worst_slice_drop"],
            "abs_delta_nll_p99": d.get("abs_delta_nll_per_token", {}).get("p99")}


def export_all(params: ExportParams, evaluate: EvaluateParams, gate: GateParams, bundle_dir: str | Path,
               eval_path: str | Path, samples_path: str | Path, out_dir: str | Path,
               reports_dir: str | Path) -> dict:
    from pipeline.gate.decide import render_markdown

    out, reports = Path(out_dir), Path(reports_dir)
    for folder in (out, reports):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    shipped = read_json(eval_path)
    summary = {"bundle_digest": shipped.get("bundle_digest"), "requested": params.requested(), "configurations": {}}
    if summary["requested"]:
        from pipeline.export.evaluate import evaluate_export, gate_export, read_rows

        rows = read_rows(samples_path)
        for name in summary["requested"]:
            _write(params, name, Path(bundle_dir), out / name)
            report, export_rows, golden = evaluate_export(evaluate, out / name, bundle_dir, shipped, rows)
            decision = gate_export(gate, report, bundle_dir, tuple(params.rules))
            (reports / name).mkdir()
            atomic_write_json(reports / name / "eval.json", report)
            atomic_write_text(reports / name / "eval_samples.jsonl", "".join(
                json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in export_rows))
            atomic_write_json(reports / name / "gate.json", decision)
            atomic_write_json(reports / name / "golden.json", golden)
            atomic_write_text(reports / name / "gate.md", render_markdown(decision))
            summary["configurations"][name] = _entry(report, decision, _size(out / name))
            log.info("export %s: gate %s", name, "passed" if decision["passed"] else
                     "REFUSED (" + ", ".join(decision["failed"]) + ")")
    else:
        log.info("no exports asked for (export.merged, export.gguf)")
    atomic_write_json(out / SUMMARY, summary)
    atomic_write_json(reports / SUMMARY, summary)
    return summary


def metrics(summary: dict) -> dict:
    """Flat numbers per configuration, for `dvc metrics show` / `dvc exp show`."""
    keep = ("headline", "identical_outputs", "flip_rate", "worst_slice_drop", "abs_delta_nll_p99", "size_bytes")
    return {name: {**{k: c[k] for k in keep}, "gate_passed": int(c["gate_passed"])}
            for name, c in summary["configurations"].items()}
