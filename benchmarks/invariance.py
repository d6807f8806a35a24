"""Batch invariance on a real bundle: each request's tokens and log-probs alone vs inside
batches of 2, 4 and 8, and its logits under a random join/leave schedule, for the invariant hf
engine and for the padded one, in one run.

    python -m benchmarks.invariance [--bundle artifacts/bundle] [--prompts 8] [--max-tokens 48]

The tiny-model tests (tests/unit/test_batch_invariance.py) hold the same properties in
`make test`; this is the same check on the default model's shapes (30 layers, GQA 9/3 heads,
a 49k vocabulary), where the padded path's rounding differences were first measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path

from benchmarks import load_avg, versions, write_result


def _prompts(engine, suite_dir: str, n: int, system: str | None) -> list[list[int]]:
    """n suite prompts spread over the suite, encoded as serving encodes them (pinned system
    prompt in front)."""
    from pipeline.chat import encode_prompt, with_system
    from pipeline.suites import load_suite

    items = load_suite(suite_dir).items()
    step = max(1, len(items) // n)
    return [encode_prompt(engine.tokenizer, with_system([dict(m) for m in it.messages], system)) for it in items[::step][:n]]


def generation(engine, prompts, max_tokens: int) -> dict:
    """Greedy answers alone vs in batches of 2, 4, 8: identical token sequences and the largest
    log-prob difference."""
    import torch  # noqa: F401  (engine already loaded it)

    from pipeline.engines.base import GenerationRequest, SamplingParams

    reqs = [GenerationRequest(p, SamplingParams(max_new_tokens=max_tokens)) for p in prompts]
    t0 = time.perf_counter()
    alone = [engine.generate([r])[0] for r in reqs]
    out = {"alone_s": round(time.perf_counter() - t0, 2), "batches": []}
    for size in (2, 4, 8):
        t0 = time.perf_counter()
        together = []
        for i in range(0, len(reqs), size):
            together += engine.generate(reqs[i:i + size])
        same = sum(a.token_ids == b.token_ids for a, b in zip(alone, together))
        diff = max((abs(x - y) for a, b in zip(alone, together) for x, y in zip(a.logprobs, b.logprobs)), default=0.0)
        out["batches"].append({"batch": size, "identical_tokens": same, "requests": len(reqs),
                               "max_abs_logprob_diff": diff, "wall_s": round(time.perf_counter() - t0, 2)})
    return out


def schedule(engine, prompts, steps: int, seed: int) -> dict:
    """Rows join at random steps and leave after random lengths, fed the same tokens as alone;
    every step's logits compared with the row's logits alone (torch.equal and max |diff|)."""
    import torch

    rng = random.Random(seed)
    vocab = engine.model.config.vocab_size
    plans = [{"ids": p, "feed": [rng.randrange(vocab) for _ in range(rng.randint(2, steps))],
              "join": rng.randint(0, steps // 2)} for p in prompts]
    with torch.inference_mode():
        expected = []
        for p in plans:
            seq, first = engine.start(p["ids"])
            logits = [first[-1]]
            for tok in p["feed"]:
                logits.append(engine.step([seq], [tok])[0])
            expected.append(logits)
        got = [[] for _ in plans]
        running, seqs, step = [], {}, 0
        while step <= steps or running:
            for i, p in enumerate(plans):
                if p["join"] == step:
                    seqs[i], first = engine.start(p["ids"])
                    got[i].append(first[-1])
                    running.append(i)
            if running:
                logits = engine.step([seqs[i] for i in running], [plans[i]["feed"][len(got[i]) - 1] for i in running])
                for j, i in enumerate(running):
                    got[i].append(logits[j])
                running = [i for i in running if len(got[i]) <= len(plans[i]["feed"])]
            step += 1
    pairs = [(a, b) for e, g in zip(expected, got) for a, b in zip(e, g)]
    return {"rows": len(plans), "logit_vectors": len(pairs),
            "bitwise_equal": sum(torch.equal(a, b) for a, b in pairs),
            "max_abs_logit_diff": max(float((a.float() - b.float()).abs().max()) for a, b in pairs)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default="artifacts/bundle")
    p.add_argument("--suite", default="eval_suites/discharge")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--out", default="benchmarks/results/invariance.json")
    args = p.parse_args(argv)

    import torch

    from pipeline.bundle.verify import verify_bundle
    from pipeline.engines.hf import HFEngine

    bundle = verify_bundle(args.bundle)
    result = {"bundle_digest": bundle.manifest.bundle_digest, "compute_dtype": bundle.manifest.quantization.compute_dtype,
              "max_tokens": args.max_tokens, "torch_threads": torch.get_num_threads(),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
              "versions": versions("torch", "transformers", "peft", "bitsandbytes"),
              "load_avg_before": load_avg(), "engines": {}}
    for name, invariant in (("invariant", True), ("padded", False)):
        engine = HFEngine.from_bundle(bundle, batch_invariant=invariant)
        prompts = _prompts(engine, args.suite, args.prompts, bundle.manifest.tokenizer.system_prompt)
        result["prompt_tokens"] = [len(x) for x in prompts]
        result["engines"][name] = {"generation": generation(engine, prompts, args.max_tokens),
                                   "schedule": schedule(engine, prompts, args.steps, seed=0)}
        print(name, json.dumps(result["engines"][name]), flush=True)
        del engine
    result["load_avg_after"] = load_avg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
