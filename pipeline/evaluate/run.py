"""evaluate stage: score the exact bundle on the suite, per slice, with the tails.

Reads: params `evaluate`; the bundle (verified before anything loads); the suite (items,
lm-eval tasks, scorers); the 16-bit reference base (quantization damage); optionally the gate
rules, to fail before generating when one names a metric the suite cannot produce.
Writes (via the stage): the report (bound to the bundle digest), one row per item, and the
golden outputs the serving parity probe replays.

Order matters for a user's own suite: the suite is checked first (items load, every scorer runs
and scores the reference answers perfectly on its correctness metrics, the headline and the
gate's metrics will exist), because generation is the expensive part; and the model's outputs
are saved before they are scored, so a scorer that fails on one of them loses nothing.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path

from pipeline.bundle.verify import adapter_trained_on, verify_bundle
from pipeline.chat import encode_prompt
from pipeline.engines.base import GenerationRequest, SamplingParams
from pipeline.evaluate import damage, stats, tasks
from pipeline.evaluate.scoring import (
    Output, Scorer, build_scorers, correctness_metrics, lower_is_better, score_item,
)
from pipeline.files import atomic_write_text, files_digest
from pipeline.params import EvaluateParams, GateParams
from pipeline.platform import detect
from pipeline.suites import EvalItem, Suite, load_suite

log = logging.getLogger(__name__)


class ScoringError(RuntimeError):
    """A scorer failed on a model output; the unscored outputs were saved first."""


def spread(items: list[EvalItem]) -> list[EvalItem]:
    """Items in round-robin order over the slices, so that any first n cover every slice (the
    serving probe replays the first few golden prompts)."""
    by_slice: dict[str, list[EvalItem]] = {}
    for it in items:
        by_slice.setdefault(it.slice, []).append(it)
    out, k = [], 0
    while len(out) < len(items):
        for name in sorted(by_slice):
            if k < len(by_slice[name]):
                out.append(by_slice[name][k])
        k += 1
    return out


def _golden(engine, it: EvalItem, messages: list[dict], prompt: list[int], budget: int, c) -> dict:
    return {"id": it.id, "slice": it.slice, "messages": messages, "prompt_ids": prompt,
            "max_new_tokens": budget, "token_ids": c.token_ids, "logprobs": c.logprobs,
            "finish_reason": c.finish_reason, "text": engine.tokenizer.decode(c.token_ids, skip_special_tokens=True)}


def golden_from_evaluation(engine, items: list[EvalItem], default_system: str | None,
                           completions: dict[tuple[int, ...], tuple]) -> list[dict]:
    """The golden outputs are the evaluation's own: every item generated greedily, with the
    token ids and log-probs it was scored on. The engine is batch-invariant, so these are also
    what serving answers under any load (`python -m serving.replay` checks that)."""
    golden = []
    for it in spread(items):
        messages = it.prompt_messages(default_system)
        prompt = encode_prompt(engine.tokenizer, messages)
        sampling, c = completions[tuple(prompt)]
        if sampling.greedy:  # a sampled answer is not replayable token for token
            golden.append(_golden(engine, it, messages, prompt, sampling.max_new_tokens, c))
    return golden


def golden_outputs(engine, items: list[EvalItem], default_system: str | None, n: int,
                   max_new_tokens: int) -> list[dict]:
    """Greedy outputs of the first n items (spread over the slices), generated afresh in one
    batch: for golden files made outside an evaluation (tests, a bundle served on its own)."""
    chosen, prompts, budgets = spread(items)[:n], [], []
    for it in chosen:
        prompts.append(encode_prompt(engine.tokenizer, it.prompt_messages(default_system)))
        budgets.append(min(max_new_tokens, engine.max_context_tokens - len(prompts[-1])))
    done = engine.generate([GenerationRequest(p, SamplingParams(max_new_tokens=b)) for p, b in zip(prompts, budgets)])
    return [_golden(engine, it, it.prompt_messages(default_system), p, b, c)
            for it, p, b, c in zip(chosen, prompts, budgets, done)]


def collect(lm, items: list[EvalItem], default_system: str | None, samples: dict[str, list]) -> list[dict]:
    """Unscored rows: each item's output, option log-likelihoods and reference-answer NLL."""
    gen = tasks.by_id(samples["generate_task"])
    ll = tasks.by_id(samples.get("loglikelihood_task", []))
    choice = tasks.by_id(samples.get("choice_task", []))
    rows = []
    for it in sorted(items, key=lambda i: i.id):
        g = gen[it.id]
        prompt_ids = encode_prompt(lm.tokenizer, it.prompt_messages(default_system))
        if lm.encode(g["arguments"][0][0]) != prompt_ids:
            raise RuntimeError(f"lm-eval rendered item {it.id} differently from the serving chat encoding")
        # the prompt as sent and the suite's reference answer ("gold"), beside what the model said
        row = {"id": it.id, "slice": it.slice, "prompt": it.prompt_messages(default_system),
               "prompt_tokens": len(prompt_ids), "gold": it.reference, "output": g["filtered_resps"][0]}
        if it.id in choice:
            row["option_logprobs"] = list(tasks.option_logprobs(choice[it.id]))
        if it.id in ll:
            args = ll[it.id]["arguments"][0]
            n_tok = len(lm.split_pair(args[0], args[1])[1])
            row["nll_per_token"] = -ll[it.id]["resps"][0][0][0] / max(n_tok, 1)
            row["reply_tokens"] = n_tok
        rows.append(row)
    return rows


def score_rows(rows: list[dict], items: list[EvalItem], scorers: list[Scorer], unscored_path: Path | None) -> None:
    """Add every scorer's outputs to the rows; on a scorer failure save the rows first."""
    by_id = {it.id: it for it in items}
    try:
        for r in rows:
            lp = r.get("option_logprobs")
            r.update(score_item(scorers, Output(r["output"], tuple(lp) if lp is not None else None), by_id[r["id"]]))
    except Exception as exc:
        where = "nowhere (no path given)"
        if unscored_path is not None:
            atomic_write_text(unscored_path, "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows))
            where = str(unscored_path)
        raise ScoringError(f"scoring failed ({exc}); the {len(rows)} generated outputs are saved in {where}") from exc


def aggregate(rows: list[dict], suite: Suite, params: EvaluateParams, scorers: list[Scorer]) -> dict:
    # every per-item number, the reference answer's NLL included (its per-slice mean and CI)
    metrics = list(dict.fromkeys(k for r in rows for k, v in r.items() if isinstance(v, float)))
    overall, slices = {}, {}
    for m in metrics:
        have = [r for r in rows if m in r]
        interval = stats.interval_for([r[m] for r in have])
        overall[m] = stats.summarize([r[m] for r in have], params.bootstrap_samples, params.seed, interval)
        for name, s in stats.per_slice(have, m, params.bootstrap_samples, params.seed, suite.spec.min_slice_n,
                                       interval).items():
            slices.setdefault(name, {"n": s["n"], "too_small": s["too_small"]})[m] = {
                "mean": s["mean"], "ci95": s["ci95"], "interval": s["interval"]}
    head = suite.spec.headline_metric
    headline = {name: {"n": s["n"], "mean": s[head]["mean"], "too_small": s["too_small"]}
                for name, s in slices.items() if head in s}
    nll = [r["nll_per_token"] for r in rows if "nll_per_token" in r and math.isfinite(r["nll_per_token"])]
    out = {
        "overall": overall,
        "slices": slices,
        "worst_slice": stats.worst_slice(headline, lower_is_better=head in lower_is_better(scorers)),
        "length_buckets": stats.length_buckets(rows, head, suite.spec.length_buckets_tokens),
    }
    if nll:
        out["nll_per_token"] = stats.quantiles(nll)
        out["nll_by_slice"] = {name: stats.quantiles([r["nll_per_token"] for r in rows if r["slice"] == name])
                               for name in sorted(slices)}
    return out


def default_system_prompt(suite: Suite, manifest) -> tuple[str | None, str]:
    """The system prompt for items that bring none, and where it came from."""
    pinned = manifest.tokenizer.system_prompt
    if suite.spec.system_prompt is None:
        return pinned, "bundle" if pinned is not None else "none"
    if suite.spec.system_prompt != pinned:
        log.warning("suite %s sets a system prompt that differs from the bundle's pinned one (%r): the report "
                    "describes requests that send the suite's; serving applies the pinned one to requests that "
                    "bring none", suite.name, pinned)
    return suite.spec.system_prompt, "suite"


def run_suite(engine, suite: Suite, items: list[EvalItem], default_system: str | None, params: EvaluateParams,
          budget: int, scorers: list[Scorer], unscored_path: Path | None) -> tuple[list[dict], dict]:
    """One run of the suite's lm-eval tasks through engine, scored into per-item rows; also
    every generation by its prompt ids (the golden outputs)."""
    from pipeline.evaluate.lm_model import TailgateLM

    lm = TailgateLM(engine=engine, batch_size=params.batch_size, max_gen_toks=budget)
    with tempfile.TemporaryDirectory(prefix="tailgate-eval-") as tmp:
        data = Path(tmp) / "items.jsonl"
        tasks.write_rendered(engine.tokenizer, items, default_system, data)
        rows = collect(lm, items, default_system, tasks.run_lm_eval(lm, suite, data, budget))
    if not rows:
        raise RuntimeError("evaluation produced no rows")
    score_rows(rows, items, scorers, unscored_path)
    return rows, lm.completions


def suite_record(suite: Suite, items: int, scorers: list[Scorer], system: str | None, source: str,
                 budget: int) -> dict:
    """What a report says about the suite it ran (the bundle's report and an export's alike)."""
    return {"name": suite.name, "version": suite.spec.version, "items": items,
            "correctness_metrics": correctness_metrics(scorers), "lower_is_better": lower_is_better(scorers),
            "system_prompt": {"text": system, "source": source},
            "max_new_tokens": budget, "stop": list(suite.spec.generation.stop)}


def engine_record(engine) -> dict:
    return {"name": engine.name, "exact": engine.exact, "batch_invariant": engine.batch_invariant,
            "description": engine.description}


def record_limit(report: dict, suite: Suite, limit: int | None) -> None:
    """Say everywhere a count appears how much of the suite was evaluated: the suite's size
    beside the items run, per slice too (the gate refuses a limited run unless allowed)."""
    full: dict[str, int] = {}
    for it in suite.items():
        full[it.slice] = full.get(it.slice, 0) + 1
    report["suite"].update(suite_items=sum(full.values()), limit_per_slice=limit,
                           limited=report["suite"]["items"] < sum(full.values()))
    for name, s in report["slices"].items():
        s["suite_n"] = full.get(name, s["n"])


def prepare(params: EvaluateParams, gate: GateParams | None = None,
            tokenizer_dir: str | Path | None = None) -> tuple[Suite, list[Scorer]]:
    """Load and check the suite before anything expensive runs; raise SuiteError naming every
    problem (the bundle's tokenizer, when given, checks the references fit the budget)."""
    from pipeline.suites.check import check_suite

    suite = load_suite(params.suite)
    tokenizer = None
    if tokenizer_dir is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=False)
    check = check_suite(suite, gate=gate, damage=params.damage, limit=params.limit, tokenizer=tokenizer)
    for warning in check.warnings:
        log.warning("suite %s: %s", suite.name, warning)
    check.raise_for_problems()
    return suite, build_scorers(suite)


def evaluate(params: EvaluateParams, bundle_dir: str | Path, reference_base_dir: str | Path | None = None, *,
             gate: GateParams | None = None, unscored_path: str | Path | None = None) -> tuple[dict, list[dict], dict]:
    """Return (report, per-example rows, golden record).

    With params.damage, the suite runs a second time with the 16-bit base (reference_base_dir,
    checked against the bundle's pinned base) under the same adapter, and the report gains a
    `damage` section. A bundle whose base is not quantized is its own reference.
    """
    from pipeline.engines.hf import HFEngine
    from pipeline.engines.prefix import default_budget as prefix_budget

    bundle = verify_bundle(bundle_dir)  # hashes only: the suite is still checked before any weights load
    suite, scorers = prepare(params, gate, bundle.root / "tokenizer")
    manifest = bundle.manifest
    quantized = manifest.quantization.method != "none"
    if params.damage and quantized:
        if reference_base_dir is None:
            raise ValueError("evaluate.damage needs the 16-bit reference base (--reference-base)")
        damage.check_reference_base(manifest, reference_base_dir)
    items = suite.limited(params.limit)
    system, system_source = default_system_prompt(suite, manifest)
    budget = params.max_new_tokens or suite.spec.generation.max_new_tokens
    unscored = Path(unscored_path) if unscored_path is not None else None
    # Prompts are kept once prefilled (the generation's prefill serves the reference answer's
    # NLL and every option of a choice item); a copy computes what a fresh prefill would.
    keep = prefix_budget()
    engine = HFEngine.from_bundle(bundle, prefix_cache_bytes=keep)
    log.info("evaluate: shipped precision (%s), %d items", manifest.quantization.method, len(items))
    rows, completions = run_suite(engine, suite, items, system, params, budget, scorers, unscored)
    golden = golden_from_evaluation(engine, items, system, completions)
    # after the pass: bitsandbytes picks its CPU kernel at the first forward, so this is what ran
    platform = detect(engine.model).as_record()
    log.info("evaluate: golden outputs hold for platform %s", platform["description"])
    engine_info = engine_record(engine)
    del engine
    correct, lower = correctness_metrics(scorers), lower_is_better(scorers)
    head = suite.spec.headline_metric
    report = {
        "bundle_digest": manifest.bundle_digest,
        "bundle": {"quantization": manifest.quantization.method,
                   "base_sha256": manifest.base.source_sha256,
                   "adapter_trained_on": adapter_trained_on(manifest),
                   "adapter_digest": files_digest(manifest.adapter.files),
                   "tokenizer_digest": files_digest(manifest.tokenizer.files),
                   "chat_template_sha256": manifest.tokenizer.chat_template_sha256},
        "suite": suite_record(suite, len(rows), scorers, system, system_source, budget),
        "engine": engine_info,
        "platform": platform,
        "headline_metric": head,
        **aggregate(rows, suite, params, scorers),
    }
    record_limit(report, suite, params.limit)
    if params.damage:
        if quantized:
            log.info("evaluate: reference precision (16-bit base %s, same adapter)", reference_base_dir)
            ref_engine = HFEngine.from_bundle(bundle, precision="reference", reference_base_dir=reference_base_dir,
                                              prefix_cache_bytes=keep)
            ref_rows, _ = run_suite(ref_engine, suite, items, system, params, budget, scorers, unscored)
            del ref_engine
            description = f"{manifest.quantization.compute_dtype} base (lock {manifest.base.source_sha256[:12]}) + the same adapter"
        else:
            ref_rows, description = rows, "the shipped model itself (its base is not quantized)"
        report["damage"] = damage.compare(rows, ref_rows, sorted(report["slices"]), description, head, correct,
                                          lower_is_better=head in lower)
        report["reference"] = {k: v for k, v in aggregate(ref_rows, suite, params, scorers).items()
                               if k in ("overall", "slices", "nll_per_token", "length_buckets")}
        damage.attach_reference(rows, ref_rows, head)
    golden_record = {"bundle_digest": manifest.bundle_digest, "engine": engine_info["name"], "platform": platform,
                     "prompts": golden}
    return report, rows, golden_record

