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
    aggregate, default_system_prompt, engine_record, golden_from_evaluation, prepare, record_limit, run_suite,
    suite_record,
)
from pipeline.evaluate.scoring import correctness_metrics, lower_is_better
from pipeline.export.engine import export_engine
from pipeline.export.merged import ExportError
from pipeline.export.record import export_digest, export_name, open_export
from pipeline.params import EXPORT_RULES, EvaluateParams, GateParams, GateRule
from pipeline.platform import detect

log = logging.getLogger(__name__)

def read_rows(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def evaluate_export(params: EvaluateParams, export_dir: str | Path, bundle_dir: str | Path,
                    shipped_report: dict, shipped_rows: list[dict]) -> tuple[dict, list[dict], dict]:
    """(report, per-item rows, golden record) of the export on the bundle's suite, with `damage`
    against the shipped bundle's evaluation (shipped_report / shipped_rows: reports/eval.json and
    eval_samples.jsonl of this bundle). The golden record is the export's own answers with their
    token ids, what serving the export replays (its parity probe, the release's replay)."""
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
        rows, completions = run_suite(engine, suite, items, system, params, budget, scorers,
                                      Path(tmp) / "unscored.jsonl")
    golden = golden_from_evaluation(engine, items, system, completions)
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
    identity = {"name": export_name(record), "kind": record["kind"], "digest": export_digest(export_dir)}
    report["export"]["digest"] = identity["digest"]
    golden_record = {"bundle_digest": m.bundle_digest, "export": identity, "engine": engine_info["name"],
                     "platform": platform, "prompts": golden}
    return report, rows, golden_record


def gate_export(params: GateParams, report: dict, bundle_dir: str | Path,
                export_rules: tuple[GateRule, ...] = EXPORT_RULES) -> dict:
    """The gate's decision on an export: the suite's rules and export_rules, no regression
    baseline (the bundle is its baseline, through `damage`)."""
    from pipeline.gate.decide import decide

    bundle = verify_bundle(bundle_dir)
    rules = params.model_copy(update={"rules": [*params.rules, *export_rules], "regression": [], "baseline": "none"})
    return decide(rules, report, bundle.manifest.bundle_digest,
                  chat_template_sha256=bundle.manifest.tokenizer.chat_template_sha256)
