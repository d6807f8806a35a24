"""The model card's front matter as huggingface_hub's own card data (ModelCardData, EvalResult),
and the Hub client's offline checks of it: what the Hub reads is built and checked by the Hub's
library, not assembled as YAML by hand."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.repocard_data import eval_results_to_model_index
from huggingface_hub.utils import HFValidationError, validate_repo_id

if TYPE_CHECKING:
    from pipeline.bundle.manifest import Manifest

# Key order of the front matter (huggingface_hub appends model-index last).
META_ORDER = ["base_model", "base_model_relation", "library_name", "license", "pipeline_tag", "tags", "language",
              "tailgate"]


def get_path(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def card_data(m: Manifest, ev: dict, gate: dict, passed: bool, base_model: str | None, license: str,
               data_digest: str, language: list[str] | None, name: str, replay: dict | None = None) -> ModelCardData:
    """The front matter as huggingface_hub's ModelCardData: Hub fields, the eval results as a
    model-index, and tailgate's own facts in a `tailgate` block (extra keys the Hub keeps). The
    curated data is local and has no Hub dataset id, so it has no `datasets` entry: its digest is
    in the `tailgate` block."""
    method = m.quantization.method
    tags = ["lora"] if method == "none" else ["qlora", method, "4-bit", "bitsandbytes"]
    results = eval_results(ev)
    rules = gate.get("rules") or []
    return ModelCardData(
        base_model=base_model or None, base_model_relation="adapter" if base_model else None,
        library_name="peft", license=license, pipeline_tag="text-generation", tags=tags + ["tailgate"],
        language=list(language) if language else None,
        eval_results=results or None, model_name=name if results else None,
        tailgate={
            "bundle_digest": m.bundle_digest, "gate_verdict": "PASS" if passed else "FAIL", "gate_rules": len(rules),
            "gate_failed": [r.get("name") for r in rules if not r.get("passed")] or list(gate.get("failed") or []),
            "eval_bundle_digest": ev["bundle_digest"], "gate_bundle_digest": gate["bundle_digest"],
            "suite": get_path(ev, "suite", "name"), "suite_version": get_path(ev, "suite", "version"),
            "headline_metric": ev.get("headline_metric"),
            "baseline_digest": get_path(gate, "baseline", "bundle_digest"),
            "engine": get_path(ev, "engine", "name"), "engine_exact": get_path(ev, "engine", "exact"),
            "engine_batch_invariant": get_path(ev, "engine", "batch_invariant"),
            "served_under_load": ({k: replay[k] for k in ("items", "identical", "different", "concurrency")}
                                  if replay else None),
            "curated_data_digest": data_digest.removeprefix("sha256:")})


def eval_results(ev: dict) -> list[EvalResult]:
    """One result for the whole suite and one per slice (dataset config = slice), headline metric."""
    metric, suite = ev.get("headline_metric"), get_path(ev, "suite", "name")
    if not metric or not suite:
        return []
    entries = [(None, get_path(ev, "overall", metric, "mean"))]
    entries += [(s, get_path(ev, "slices", s, metric, "mean")) for s in sorted(ev.get("slices") or {})]
    return [EvalResult(task_type="text-generation", task_name=suite, dataset_type=suite,
                       dataset_name=f"{suite} v{get_path(ev, 'suite', 'version')}", dataset_config=s,
                       metric_type=metric, metric_value=round(v, 4), metric_name=f"{metric} ({s or 'overall'})")
            for s, v in entries if is_number(v)]


def check_card_metadata(text: str) -> ModelCard:
    """The offline part of the Hub's card checks (ModelCard.validate asks the Hub itself): the
    front matter parses as model-card metadata, its model-index reads back as the same eval
    results, and every model or dataset it names is a valid Hub repo id. Raises ValueError."""
    card = ModelCard(text)  # raises ValueError on front matter or a model-index it cannot read
    data = card.data
    for key in ("base_model", "datasets"):  # the fields the Hub resolves as repo ids
        value = data.get(key)
        for repo_id in value if isinstance(value, list) else [value] if value else []:
            try:
                validate_repo_id(repo_id)
            except HFValidationError as exc:
                raise ValueError(f"card metadata {key}: {repo_id!r} is not a Hugging Face Hub id ({exc})") from None
    if data.eval_results:
        again = ModelCardData(**{"model-index": eval_results_to_model_index(data.model_name, data.eval_results)})
        if again.eval_results != data.eval_results or again.model_name != data.model_name:
            raise ValueError("card metadata: model-index does not round-trip through huggingface_hub's eval results")
    return card


def _p(v: Any) -> str:
    if not is_number(v):
        return "-"
    return f"{v:.2g}" if v < 0.001 else f"{v:.3f}"


def comparison_lines(gate: dict, heading: str = "## Against the previous release") -> list[str]:
    """The regression comparison a gate decision records (pipeline/gate/regression.py), for
    gate.md and the model card: which baseline, then per metric and slice baseline vs now, the
    items that flipped each way, the p-value and the verdict. A decision made before baselines
    were recorded renders as not recorded."""
    base, comp = gate.get("baseline"), gate.get("comparison") or {}
    out = [heading, ""]
    if not isinstance(base, dict):
        return out + ["Baseline: not recorded (a gate decision made before baselines were).", ""]
    if not base.get("bundle_digest") and not base.get("sha256"):
        return out + [f"Baseline: none. {str(base.get('note') or '').capitalize()}.", ""]
    suite = base.get("suite") or {}
    digests = ", ".join(f"{name} sha256 `{h}`" for name, h in sorted((base.get("sha256") or {}).items()))
    out += [f"Baseline: bundle `{base.get('bundle_digest')}` ({base.get('source')}"
            + (f", released {base['released_at']}" if base.get("released_at") else "")
            + (f", `{base['spec']}`" if base.get("spec") and base["spec"] != base.get("bundle_digest") else "")
            + f"), suite {suite.get('name')} v{suite.get('version')}; {digests}.", ""]
    if base.get("note"):
        out += [f"{base['note'][0].upper()}{base['note'][1:]}.", ""]
    rows, paired = comp.get("rows") or [], comp.get("paired")
    if not paired and not rows:
        return out
    if paired:
        alpha = comp.get("alpha")
        out += [f"Compared item by item on {comp.get('common_items')} items both runs scored "
                f"({comp.get('only_baseline')} only in the baseline, {comp.get('only_now')} only now"
                + (f", {comp['rewritten']} rewritten under the same id and left out" if comp.get("rewritten") else "")
                + (f", {comp['slice_changed']} in another slice now" if comp.get("slice_changed") else "")
                + "). 0/1 metrics: McNemar's exact test on the items that flipped; others: paired bootstrap of "
                f"the mean difference. One-sided p-values, Holm-adjusted over the {len(rows)} tests; a rule fails "
                "past its budget" + (f" or at adjusted p < {alpha}." if alpha else "."), ""]
    else:
        out += ["Compared by means, not item by item: no flips are counted and no test is run; a rule fails past "
                "its budget.", ""]
    out += ["| metric | n | baseline | now | worse | better | p (Holm) | budget | verdict |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        flips = (f"{r.get('worse')} | {r.get('better')} | {_p(r.get('p_value'))} ({_p(r.get('p_adjusted'))})"
                 if paired else "- | - | -")
        out.append(f"| {r.get('metric')} | {r.get('n')} | {_f3(r.get('baseline'))} | {_f3(r.get('now'))} | {flips} | "
                   f"{r.get('direction')} <= {r.get('budget')} | {'pass' if r.get('passed') else '**FAIL**'} |")
    if paired:
        out += ["", "worse/better: items right -> wrong / wrong -> right (0/1 metrics), or whose value fell / rose "
                "(others), in the direction the budget guards."]
    return out + [""]


def _f3(v: Any) -> str:
    return f"{v:.3f}" if is_number(v) else "-"
