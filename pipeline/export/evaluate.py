"""An export evaluated as a configuration of its own, and gated against the shipped bundle.

An export is not the bundle: the merged model multiplies by W + scale * B @ A once folded, the
bundle by W and then the adapter; a GGUF rounds its weights again. So an export gets what the
bundle got: the same suite, through the engine that serves it, scored by the same scorers, with
the bundle's pinned system prompt. Its damage is measured against the shipped bundle's own
evaluation, item by item (`reports/eval_samples.jsonl`): flips of the suite's correctness values,
delta NLL of the reference answers, per-slice drops of the headline, and how many answers are the
bundle's word for word. The gate then applies the suite's rules (the same floors the bundle met)
plus the export rules (`export.rules`, by default `EXPORT_RULES` in pipeline/params/export.py),
which bound the damage against the bundle: an export that answers differently from the model
that was tested is refused, whatever its headline.

What it reads is checked first: the export's record must name this bundle and every file must
hash to what the record says (a swapped or edited file is refused by name).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from pipeline.bundle.verify import verify_bundle
from pipeline.evaluate import damage, stats
from pipeline.evaluate.run import (
    aggregate, default_system_prompt, engine_record, prepare, record_limit, run_suite, suite_record,
)
from pipeline.evaluate.scoring import correctness_metrics, lower_is_better
from pipeline.export.merged import EXPORT_RECORD, ExportError
from pipeline.files import sha256_file
from pipeline.params import EXPORT_RULES, EvaluateParams, GateParams, GateRule
from pipeline.platform import detect

log = logging.getLogger(__name__)

def open_export(export_dir: str | Path) -> dict:
    """The export's record, after every file it lists hashes to its recorded sha256 and no file
    is there that it does not list."""
    root = Path(export_dir)
    path = root / EXPORT_RECORD
    if not path.is_file():
        raise ExportError(f"{root} has no {EXPORT_RECORD}: not an export written by `python -m pipeline.export`")
    record = json.loads(path.read_text(encoding="utf-8"))
    files = record.get("files") or {}
    for name, want in sorted(files.items()):
        if not (root / name).is_file():
            raise ExportError(f"export file {root / name} is missing")
        if sha256_file(root / name) != want:
            raise ExportError(f"export file {root / name} does not match its recorded sha256 (changed after export)")
    extra = sorted(p.name for p in root.iterdir() if p.is_file() and p.name not in files and p.name != EXPORT_RECORD)
    if extra:
        raise ExportError(f"export {root} holds files its record does not list: {', '.join(extra)}")
    return record


def export_engine(export_dir: str | Path, record: dict, prefix_cache_bytes: int = 0):
    """The engine that serves this kind of export, built from the export folder alone."""
    kind = record.get("kind")
    if kind == "merged":
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from pipeline.engines.hf import HFEngine

        model = AutoModelForCausalLM.from_pretrained(export_dir, dtype=getattr(torch, record["dtype"]),
                                                     device_map={"": "cpu"}).eval()
        tokenizer = AutoTokenizer.from_pretrained(export_dir, trust_remote_code=False)
        return HFEngine(model, tokenizer, max_context_tokens=record["max_context_tokens"],
                        stop_token_ids=record["stop_token_ids"], prefix_cache_bytes=prefix_cache_bytes,
                        description=f"merged {record['dtype']} export of bundle {record['bundle_digest'][:12]}, "
                                    "batch-invariant")
    if kind == "gguf":
        from pipeline.engines.llamacpp import LlamaCppEngine

        return LlamaCppEngine.from_export(export_dir, record)
    raise ExportError(f"export kind {kind!r} has no engine to evaluate it with")


def read_rows(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def evaluate_export(params: EvaluateParams, export_dir: str | Path, bundle_dir: str | Path,
                    shipped_report: dict, shipped_rows: list[dict]) -> tuple[dict, list[dict]]:
    """(report, per-item rows) of the export on the bundle's suite, with `damage` against the
    shipped bundle's evaluation (shipped_report / shipped_rows: reports/eval.json and
    eval_samples.jsonl of this bundle)."""
    from pipeline.engines.prefix import default_budget

    record = open_export(export_dir)
    bundle = verify_bundle(bundle_dir)
    m = bundle.manifest
    if record.get("bundle_digest") != m.bundle_digest:
        raise ExportError(f"export {export_dir} was made from bundle {str(record.get('bundle_digest'))[:12]}, "
                          f"not {m.bundle_digest[:12]}")
    if shipped_report.get("bundle_digest") != m.bundle_digest:
        raise ExportError("the shipped evaluation given describes another bundle "
                          f"({str(shipped_report.get('bundle_digest'))[:12]}); evaluate the bundle first")
    suite, scorers = prepare(params, None, bundle.root / "tokenizer")
    items = suite.limited(params.limit)
    evaluated = {r["id"] for r in shipped_rows}
    missing = sorted(it.id for it in items if it.id not in evaluated)
    if missing:
        raise ExportError(f"the bundle's evaluation lacks items {missing[:5]}: evaluate the export with the same "
                          "evaluate params as the bundle")
    system, source = default_system_prompt(suite, m)
    budget = params.max_new_tokens or suite.spec.generation.max_new_tokens
    engine = export_engine(export_dir, record, prefix_cache_bytes=default_budget())
    log.info("evaluate: %s export (%s), %d items", record["kind"], engine.description, len(items))
    with tempfile.TemporaryDirectory(prefix="tailgate-export-") as tmp:
        rows, _ = run_suite(engine, suite, items, system, params, budget, scorers, Path(tmp) / "unscored.jsonl")
    platform = detect(engine.model).as_record() if hasattr(engine, "model") else engine.platform_record()
    engine_info = engine_record(engine)
    del engine
    correct, lower = correctness_metrics(scorers), lower_is_better(scorers)
    head = suite.spec.headline_metric
    report = {
        "bundle_digest": m.bundle_digest,
        "export": {k: record[k] for k in sorted(record) if k not in ("files", "system_prompt")},
        "export_files": record["files"],
        "bundle": {"chat_template_sha256": m.tokenizer.chat_template_sha256},
        "suite": suite_record(suite, len(rows), scorers, system, source, budget),
        "engine": engine_info,
        "platform": platform,
        "headline_metric": head,
        **aggregate(rows, suite, params, scorers),
    }
    record_limit(report, suite, params.limit)
    by_id = {r["id"]: r for r in shipped_rows}
    report["damage"] = damage.compare(rows, [by_id[r["id"]] for r in rows], sorted(report["slices"]),
                                      f"the shipped bundle {m.bundle_digest[:12]} (reports/eval_samples.jsonl)",
                                      head, correct, lower_is_better=head in lower)
    # either way: an export that finds the answers likelier than the bundle does is another model too
    far = [abs(r["nll_per_token"] - by_id[r["id"]]["nll_per_token"]) for r in rows
           if "nll_per_token" in r and "nll_per_token" in by_id[r["id"]]]
    if far:
        report["damage"]["abs_delta_nll_per_token"] = stats.quantiles(far)
    return report, rows


def gate_export(params: GateParams, report: dict, bundle_dir: str | Path,
                export_rules: tuple[GateRule, ...] = EXPORT_RULES) -> dict:
    """The gate's decision on an export: the suite's rules and export_rules, no regression
    baseline (the bundle is its baseline, through `damage`)."""
    from pipeline.gate.decide import decide

    bundle = verify_bundle(bundle_dir)
    rules = params.model_copy(update={"rules": [*params.rules, *export_rules], "regression": [], "baseline": "none"})
    return decide(rules, report, bundle.manifest.bundle_digest,
                  chat_template_sha256=bundle.manifest.tokenizer.chat_template_sha256)
