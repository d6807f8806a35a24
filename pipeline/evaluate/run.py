"""evaluate stage: the exact bundle, through the shipped engine, scored per slice with tails.

Reads: params `evaluate`; the bundle (through the one verifying loader); the suite.
Writes (returned as dicts, written by the stage): the eval report bound to the bundle digest,
per-example rows, and the golden outputs (prompt ids, greedy token ids and log-probs) that the
serving parity probe replays.

Generation and log-likelihood both run through lm-eval with the bundle's Engine wrapped as an
lm-eval model, so a suite is an ordinary lm-eval task and the numbers come from the same code
path serving uses.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import yaml

from pipeline.bundle.verify import adapter_trained_on, verify_bundle
from pipeline.chat import encode_prompt
from pipeline.engines.base import GenerationRequest, SamplingParams
from pipeline.files import files_digest
from pipeline.evaluate import damage, stats
from pipeline.evaluate.scorers import SCORERS
from pipeline.suites import Suite, load_suite
from pipeline.params import EvaluateParams

log = logging.getLogger(__name__)

HEADLINE = "field_accuracy"


def run_lm_eval(lm, suite: Suite, limit: int | None) -> dict[str, list[dict]]:
    """Run the suite's two lm-eval tasks; return lm-eval's per-doc samples by task name."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    # A suite is self-contained: its two tasks are handed over as configs below. Indexing
    # lm-eval's thousands of built-in task YAMLs as well cost 8.9 s per evaluation here
    # (0.06 s without) and added nothing the suite uses.
    tm = TaskManager(include_path=str(suite.task_dir), include_defaults=False)
    data_files = {"test": str(suite.data_path.resolve())}
    # The task YAMLs name their data relative to the repository; point them at this suite's
    # file so a suite evaluates the same items from any working directory.
    tasks = []
    for name in (suite.spec.generate_task, suite.spec.loglikelihood_task):
        config = yaml.safe_load((suite.task_dir / f"{name}.yaml").read_text())
        tasks.append({**config, "dataset_kwargs": {**config.get("dataset_kwargs", {}), "data_files": data_files}})
    out = simple_evaluate(model=lm, tasks=tasks, task_manager=tm, apply_chat_template=True,
                          system_instruction=suite.spec.system_prompt, log_samples=True, limit=limit,
                          bootstrap_iters=0, random_seed=0, numpy_random_seed=0, torch_random_seed=0)
    return out["samples"]


def golden_outputs(engine, suite: Suite, items: list[dict], n: int, max_new_tokens: int) -> list[dict]:
    """Greedy outputs of n items spread over the slices, one prompt per call (as serving's
    probe replays them), with token ids and log-probs."""
    by_slice: dict[str, list[dict]] = {}
    for it in items:
        by_slice.setdefault(suite.slice_of(it), []).append(it)
    chosen, k = [], 0
    while len(chosen) < min(n, len(items)):
        for name in sorted(by_slice):
            if k < len(by_slice[name]) and len(chosen) < n:
                chosen.append(by_slice[name][k])
        k += 1
    golden = []
    for it in chosen:
        prompt = encode_prompt(engine.tokenizer, it["messages"][:-1])
        budget = min(max_new_tokens, engine.max_context_tokens - len(prompt))
        c = engine.generate([GenerationRequest(prompt, SamplingParams(max_new_tokens=budget))])[0]
        golden.append({"id": it["id"], "slice": suite.slice_of(it), "messages": it["messages"][:-1],
                       "prompt_ids": prompt, "max_new_tokens": budget, "token_ids": c.token_ids,
                       "logprobs": c.logprobs, "finish_reason": c.finish_reason,
                       "text": engine.tokenizer.decode(c.token_ids, skip_special_tokens=True)})
    return golden


def score_rows(lm, suite: Suite, samples: dict[str, list[dict]]) -> list[dict]:
    """Join generation and log-likelihood samples per item and apply the suite's scorers."""
    items = {it["id"]: it for it in suite.items()}
    gen = {s["doc"]["id"]: s for s in samples[suite.spec.generate_task]}
    ll = {s["doc"]["id"]: s for s in samples[suite.spec.loglikelihood_task]}
    rows = []
    for item_id in sorted(gen):
        item, g = items[item_id], gen[item_id]
        context = g["arguments"][0][0]
        prompt_ids = encode_prompt(lm.tokenizer, item["messages"][:-1])
        if lm.encode(context) != prompt_ids:
            raise RuntimeError(f"lm-eval rendered item {item_id} differently from the serving chat encoding")
        text = g["filtered_resps"][0]
        row = {"id": item_id, "slice": suite.slice_of(item), "prompt_tokens": len(prompt_ids), "output": text}
        for name in suite.spec.scorers:
            row.update(SCORERS[name](text, item))
        if item_id in ll:
            s = ll[item_id]
            args = s["arguments"][0]
            logprob = s["resps"][0][0][0]
            n_tok = len(lm.split_pair(args[0], args[1])[1])
            row["nll_per_token"] = -logprob / max(n_tok, 1)
            row["reply_tokens"] = n_tok
        rows.append(row)
    return rows


def aggregate(rows: list[dict], suite: Suite, params: EvaluateParams) -> dict:
    metrics = [k for k in rows[0] if k not in ("id", "slice", "prompt_tokens", "output", "reply_tokens")
               and isinstance(rows[0][k], float)]
    overall = {m: stats.summarize([r[m] for r in rows], params.bootstrap_samples, params.seed) for m in metrics}
    slices: dict[str, dict] = {}
    for m in metrics:
        for name, s in stats.per_slice(rows, m, params.bootstrap_samples, params.seed, suite.spec.min_slice_n).items():
            slices.setdefault(name, {"n": s["n"], "too_small": s["too_small"]})[m] = {"mean": s["mean"], "ci95": s["ci95"]}
    headline = {name: {"n": s["n"], "mean": s[HEADLINE]["mean"], "too_small": s["too_small"]}
                for name, s in slices.items()}
    nll = [r["nll_per_token"] for r in rows if "nll_per_token" in r and math.isfinite(r["nll_per_token"])]
    return {
        "overall": overall,
        "slices": slices,
        "worst_slice": stats.worst_slice(headline),
        "nll_per_token": stats.quantiles(nll),
        "nll_by_slice": {name: stats.quantiles([r["nll_per_token"] for r in rows if r["slice"] == name])
                         for name in sorted(slices)},
        "length_buckets": stats.length_buckets(rows, HEADLINE, suite.spec.length_buckets_tokens),
    }


def _pass(engine, suite: Suite, params: EvaluateParams) -> tuple[list[dict], "TailgateLM"]:
    """One run of the suite's lm-eval tasks through engine, scored into per-item rows."""
    from pipeline.evaluate.lm_model import TailgateLM

    lm = TailgateLM(engine=engine, batch_size=params.batch_size, max_gen_toks=params.max_new_tokens)
    rows = score_rows(lm, suite, run_lm_eval(lm, suite, params.limit))
    if not rows:
        raise RuntimeError("evaluation produced no rows")
    return rows, lm


def evaluate(params: EvaluateParams, bundle_dir: str | Path,
             reference_base_dir: str | Path | None = None) -> tuple[dict, list[dict], dict]:
    """Return (report, per-example rows, golden record).

    With params.damage, the suite runs a second time with the 16-bit base (reference_base_dir,
    checked against the bundle's pinned base) under the same adapter, and the report gains a
    `damage` section. A bundle whose base is not quantized is its own reference.
    """
    from pipeline.engines.hf import HFEngine

    bundle = verify_bundle(bundle_dir)
    manifest = bundle.manifest
    suite = load_suite(params.suite)
    unknown = [s for s in suite.spec.scorers if s not in SCORERS]
    if unknown:
        raise ValueError(f"suite {suite.name}: unknown scorers {unknown}; known: {sorted(SCORERS)}")
    quantized = manifest.quantization.method != "none"
    if params.damage and quantized:
        if reference_base_dir is None:
            raise ValueError("evaluate.damage needs the 16-bit reference base (--reference-base)")
        damage.check_reference_base(manifest, reference_base_dir)
    engine = HFEngine.from_bundle(bundle)
    log.info("evaluate: shipped precision (%s)", manifest.quantization.method)
    rows, _lm = _pass(engine, suite, params)
    items = [it for it in suite.items() if it["id"] in {r["id"] for r in rows}]
    golden = golden_outputs(engine, suite, items, params.golden_prompts, params.max_new_tokens)
    engine_info = {"name": engine.name, "exact": engine.exact, "description": engine.description}
    del engine, _lm
    digest = manifest.bundle_digest
    report = {
        "bundle_digest": digest,
        "bundle": {"quantization": manifest.quantization.method,
                   "base_sha256": manifest.base.source_sha256,
                   "adapter_trained_on": adapter_trained_on(manifest),
                   "adapter_digest": files_digest(manifest.adapter.files),
                   "tokenizer_digest": files_digest(manifest.tokenizer.files),
                   "chat_template_sha256": manifest.tokenizer.chat_template_sha256},
        "suite": {"name": suite.name, "version": suite.spec.version, "items": len(rows)},
        "engine": engine_info,
        "headline_metric": HEADLINE,
        **aggregate(rows, suite, params),
    }
    if params.damage:
        if quantized:
            log.info("evaluate: reference precision (16-bit base %s, same adapter)", reference_base_dir)
            ref_engine = HFEngine.from_bundle(bundle, precision="reference", reference_base_dir=reference_base_dir)
            ref_rows, _ = _pass(ref_engine, suite, params)
            del ref_engine
            description = f"{manifest.quantization.compute_dtype} base (lock {manifest.base.source_sha256[:12]}) + the same adapter"
        else:
            ref_rows, description = rows, "the shipped model itself (its base is not quantized)"
        report["damage"] = damage.compare(rows, ref_rows, sorted(report["slices"]), description)
        report["reference"] = {k: v for k, v in aggregate(ref_rows, suite, params).items()
                               if k in ("overall", "slices", "nll_per_token", "length_buckets")}
        damage.attach_reference(rows, ref_rows)
    golden_record = {"bundle_digest": digest, "engine": engine_info["name"], "prompts": golden}
    return report, rows, golden_record
