"""A decode step with peft's LoRA forward vs one call per LoRA layer (pipeline/engines/lora_fused.py).

    python -m benchmarks.decode_step --out benchmarks/results/decode_step.json [--steps 12]

On the default bundle, golden prompts prefilled alone, then `--steps` decode steps fed the
golden tokens, for 1, 8 and 32 live rows: the median wall time of a step with every LoRA layer
running peft's own forward, and with the fused forward the engine installs; the arms alternate
(two rounds each) so that drift on a shared machine falls on both. Every row's logits of every
step must be bitwise equal between the arms: the fused forward is a speed change only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

WIDTHS = (1, 8, 32)
ROUNDS = 2


def _arm(runner, prefilled, golden, n: int, steps: int):
    import torch

    seqs = [s.copy() for s in prefilled[:n]]
    logits, times = [], []
    for k in range(steps):
        feed = [g["token_ids"][k] if k < len(g["token_ids"]) else 0 for g in golden[:n]]
        t0 = time.perf_counter()
        logits.append(runner.decode(seqs, feed))
        times.append(time.perf_counter() - t0)
    return torch.stack(logits), times[1:]  # the first step of an arm warms the copies' caches


def run(bundle_dir: str, golden_path: str, steps: int) -> dict:
    import torch

    from pipeline.bundle.verify import verify_bundle
    from pipeline.engines.hf import HFEngine
    from pipeline.engines.lora_fused import fuse, unfuse

    golden = json.loads(Path(golden_path).read_text())["prompts"][:max(WIDTHS)]
    bundle = verify_bundle(bundle_dir)
    engine = HFEngine.from_bundle(bundle)
    runner = engine._stepper
    out = {}
    with torch.inference_mode():
        prefilled = [runner.start(g["prompt_ids"])[0] for g in golden]
        for n in WIDTHS:
            arms = {"peft": ([], None), "fused": ([], None)}
            for _ in range(ROUNDS):
                for name in ("peft", "fused"):
                    (unfuse if name == "peft" else lambda m: fuse(m, runner._blocks))(engine.model)
                    logits, times = _arm(runner, prefilled, golden, n, steps)
                    kept, first = arms[name]
                    kept.extend(times)
                    arms[name] = (kept, first if first is not None else logits)
            peft_ms = statistics.median(arms["peft"][0]) * 1e3
            fused_ms = statistics.median(arms["fused"][0]) * 1e3
            out[str(n)] = {"peft_ms": round(peft_ms, 1), "fused_ms": round(fused_ms, 1),
                           "speedup": round(peft_ms / fused_ms, 3),
                           "bitwise_equal": torch.equal(arms["peft"][1], arms["fused"][1])}
    fuse(engine.model, runner._blocks)
    return {"bundle_digest": bundle.manifest.bundle_digest, "threads": torch.get_num_threads(),
            "lora_layers": runner.fused_layers, "steps_per_arm": steps, "rounds": ROUNDS, "rows": out}


def page(r: dict) -> tuple[list[tuple[str, str, str, str]], list[str]]:
    """RESULTS.md's headline rows (measure, measured, target, verdict) and section for a result."""
    exact = all(a["bitwise_equal"] for a in r["rows"].values())
    a8 = r["rows"]["8"]
    ratio = a8["peft_ms"] / a8["fused_ms"]
    rows = [("decode step of 8 rows: one call per LoRA layer vs peft's forward",
             f"{ratio:.2f}x ({a8['fused_ms']:g} vs {a8['peft_ms']:g} ms)", "> 1x, bitwise equal",
             "pass" if exact and ratio > 1 else "FAIL")]
    lines = ["| live rows | peft's forward, ms/step | one call per layer, ms/step | speed-up | logits bitwise equal |",
             "|---|---|---|---|---|"]
    for n, a in r["rows"].items():
        lines.append(f"| {n} | {a['peft_ms']:g} | {a['fused_ms']:g} | {a['peft_ms'] / a['fused_ms']:.2f}x | "
                     f"{a['bitwise_equal']} |")
    lines.append(f"\nBundle {r['bundle_digest'][:12]}, {r['lora_layers']} LoRA layers, {r['threads']} threads; "
                 f"median of {r['rounds']} x {r['steps_per_arm'] - 1} timed steps an arm, the arms alternating. "
                 f"Load average {r['load_avg_before']} before, {r['load_avg_after']} after.")
    return rows, lines


def step_main(argv, prog: str, doc: str, measure) -> int:
    """The command line of a decode-step benchmark on the bundle: `measure(bundle, golden, steps)`
    timed into --out with the machine and its load (decode_widths.py runs the same way)."""
    p = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--bundle", default="artifacts/bundle")
    p.add_argument("--golden", default="reports/golden.json")
    p.add_argument("--steps", type=int, default=12)
    args = p.parse_args(argv)
    from benchmarks import machine, write_result

    record = {"machine": machine(), "load_avg_before": [round(x, 2) for x in os.getloadavg()]}
    record.update(measure(args.bundle, args.golden, args.steps))
    record["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    write_result(args.out, record)
    print(json.dumps(record["rows"], indent=1))
    return 0


def main(argv=None) -> int:
    return step_main(argv, "python -m benchmarks.decode_step", __doc__, run)


if __name__ == "__main__":
    sys.exit(main())
