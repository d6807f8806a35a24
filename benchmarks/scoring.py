"""Log-likelihood and choice scoring: each pair prefilled whole vs one prefill per context.

    python -m benchmarks.scoring --out benchmarks/results/scoring.json [--items 40] [--options 5]

The work of a choice suite on the default bundle: `--items` evaluated prompts (the golden
prompts, spread over the slices), each scored with `--options` label continuations and with its
reference answer (the evaluated output), so (options + 1) pairs an item. Four arms, one process,
one after the other:

- `before`: the previous scoring: every pair prefilled whole, alone, with the 4-bit kernel
  bitsandbytes picks on this host (it packs on AVX512-BF16 CPUs);
- `whole_pairs`: the same scoring on the engine's kernel now (no packing, weights dequantized
  once): the kernel's share of the change;
- `shared_prefix`: the engine's scoring now, cold: each context prefilled once, its
  continuations run over copies of its cache;
- `after_generation`: the same with the contexts kept from the generation pass that evaluation
  runs first (its prefills are done before the clock starts, as evaluation did them).

Checks: the two shared-prefix arms give bit-identical scores; the largest difference to whole
pairs (the same model summed in another order) and to `before` (another kernel) are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# label continuations of a discharge-disposition choice (what a five-label task scores)
OPTIONS = [" home", " home with services", " skilled nursing facility", " rehabilitation unit", " hospice"]


def _whole_pairs(engine, pairs):
    """The previous scoring: context + continuation prefilled together, alone."""
    import torch

    out = []
    with torch.inference_mode():
        for ctx, cont in pairs:
            runner = engine._stepper
            hidden = runner.prefill(runner.new_sequence(), list(ctx) + list(cont))
            lp = torch.log_softmax(runner.logits(hidden[len(ctx) - 1:-1]).float(), dim=-1)
            out.append(lp.gather(-1, torch.tensor(list(cont))[:, None]).squeeze(-1).tolist())
    return out


def _timed(fn):
    t0 = time.perf_counter()
    result = fn()
    return result, round(time.perf_counter() - t0, 2)


def _max_diff(a, b) -> float:
    return max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))


def run(bundle_dir: str, golden_path: str, items: int, n_options: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.bundle.verify import verify_bundle
    from pipeline.engines.hf import HFEngine
    from pipeline.engines.prefix import default_budget
    from pipeline.platform import kernel_4bit

    golden = json.loads(Path(golden_path).read_text())["prompts"][:items]
    bundle = verify_bundle(bundle_dir)
    tok = AutoTokenizer.from_pretrained(bundle.root / "tokenizer")
    options = [tok(o, add_special_tokens=False)["input_ids"] for o in OPTIONS[:n_options]]
    pairs = [(g["prompt_ids"], o) for g in golden for o in options]
    pairs += [(g["prompt_ids"], g["token_ids"] or [bundle.manifest.tokenizer.stop_token_ids[0]]) for g in golden]
    record = {"items": len(golden), "options": len(options), "pairs": len(pairs),
              "context_tokens": sum(len(g["prompt_ids"]) for g in golden),
              "continuation_tokens": sum(len(c) for _, c in pairs), "threads": torch.get_num_threads(),
              "bundle_digest": bundle.manifest.bundle_digest, "arms": {}}

    # before: the model as bitsandbytes builds it on this host, scored pair by pair
    from peft import PeftModel

    m = bundle.manifest
    model = AutoModelForCausalLM.from_pretrained(bundle.root / "base_q", device_map={"": "cpu"})
    model = PeftModel.from_pretrained(model, bundle.root / "adapter", is_trainable=False).eval()
    before_engine = HFEngine(model, tok, max_context_tokens=m.inference.max_context_tokens,
                             stop_token_ids=m.tokenizer.stop_token_ids)
    before, wall = _timed(lambda: _whole_pairs(before_engine, pairs))
    record["arms"]["before"] = {"wall_s": wall, "kernel_4bit": kernel_4bit(before_engine.model),
                                "prefills": len(pairs)}
    del before_engine, model

    engine = HFEngine.from_bundle(bundle, prefix_cache_bytes=default_budget())
    kernel = kernel_4bit(engine.model)
    _whole_pairs(engine, pairs[:1])  # the first call dequantizes every layer once: not scoring's cost
    whole, wall = _timed(lambda: _whole_pairs(engine, pairs))
    record["arms"]["whole_pairs"] = {"wall_s": wall, "kernel_4bit": kernel, "prefills": len(pairs)}

    engine.prefixes.clear()
    shared, wall = _timed(lambda: engine.token_logprobs(pairs))
    record["arms"]["shared_prefix"] = {"wall_s": wall, "kernel_4bit": kernel, "prefills": engine.prefixes.misses}

    engine.prefixes.clear()
    with torch.inference_mode():
        for g in golden:
            engine._prefilled(g["prompt_ids"])  # the generation pass's prefills
    misses = engine.prefixes.misses
    warm, wall = _timed(lambda: engine.token_logprobs(pairs))
    record["arms"]["after_generation"] = {"wall_s": wall, "kernel_4bit": kernel,
                                          "prefills": engine.prefixes.misses - misses}

    record["shared_equal_after_generation"] = shared == warm
    record["max_abs_diff_shared_vs_whole_pairs"] = _max_diff(shared, whole)
    record["max_abs_diff_whole_pairs_vs_before"] = _max_diff(whole, before)
    b = record["arms"]["before"]["wall_s"]
    record["speedup_vs_before"] = {k: round(b / a["wall_s"], 2) for k, a in record["arms"].items() if a["wall_s"]}
    return record


def page(r: dict) -> tuple[list[tuple[str, str, str, str]], list[str]]:
    """RESULTS.md's headline rows (measure, measured, target, verdict) and section for a result."""
    arms = r["arms"]
    cold, warm = arms["shared_prefix"]["wall_s"], arms["after_generation"]["wall_s"]
    rows = [(f"scoring {r['items']} items x {r['options']} options + reference, one prefill per context",
             f"{cold:g} s (before: {arms['before']['wall_s']:g} s)", "<= 60 s", "pass" if cold <= 60 else "FAIL"),
            ("scoring: shared-prefix scores equal with and without the generation's prefills",
             str(r["shared_equal_after_generation"]), "True", "pass" if r["shared_equal_after_generation"] else "FAIL")]
    lines = ["| arm | 4-bit kernel | prefills | wall s | vs before |", "|---|---|---|---|---|"]
    for name, a in arms.items():
        lines.append(f"| {name} | {a['kernel_4bit']} | {a['prefills']} | {a['wall_s']:g} | "
                     f"{r['speedup_vs_before'][name]:g}x |")
    lines.append(f"\n{r['pairs']} pairs ({r['context_tokens']:,} context tokens, {r['continuation_tokens']:,} "
                 f"continuation tokens), bundle {r['bundle_digest'][:12]}, {r['threads']} threads; after the "
                 f"generation pass scoring took {warm:g} s. Largest |delta log-prob| per token: shared prefix vs "
                 f"whole pairs {r['max_abs_diff_shared_vs_whole_pairs']:.2e}, whole pairs on the two kernels "
                 f"{r['max_abs_diff_whole_pairs_vs_before']:.2e}. Load average {r['load_avg_before']} before, "
                 f"{r['load_avg_after']} after.")
    return rows, lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scoring", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--bundle", default="artifacts/bundle")
    p.add_argument("--golden", default="reports/golden.json")
    p.add_argument("--items", type=int, default=40)
    p.add_argument("--options", type=int, default=5)
    args = p.parse_args(argv)
    from benchmarks import machine, write_result

    record = {"machine": machine(), "load_avg_before": [round(x, 2) for x in os.getloadavg()]}
    record.update(run(args.bundle, args.golden, args.items, args.options))
    record["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    write_result(args.out, record)
    print(json.dumps({k: record[k] for k in ("arms", "speedup_vs_before", "shared_equal_after_generation",
                                             "max_abs_diff_shared_vs_whole_pairs")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
