"""Where the time goes: one prefill, one decode step, one log-likelihood batch and one training
step of the default bundle, under torch.profiler, on both CPU host classes.

    python -m benchmarks.profile --out benchmarks/results/profile.json [--bundle artifacts/bundle]

Each arm runs in its own process. `native` is this machine as it is. `avx2` simulates a CPU
without AVX512-BF16 or AVX-512 on the same machine: bitsandbytes' CPU probe answers no (so the
4-bit layers dequantize on every call instead of running the packed bf16 kernel), ATen's vector
kernels are capped at AVX2 (ATEN_CPU_CAPABILITY), oneDNN's at AVX2 (ONEDNN_MAX_CPU_ISA) and MKL's
at AVX2 (MKL_ENABLE_INSTRUCTIONS). On an AVX2-only host both arms are the same class.

For each phase the result has its wall time (median of the profiled repeats) and the operators
that took most of the CPU time (self time, share of the phase), so a change that claims to
remove a cost can name the line it removes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ARMS = {"native": {}, "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                               "MKL_ENABLE_INSTRUCTIONS": "AVX2", "TAILGATE_PROFILE_NO_AVX512BF16": "1"}}
TOP_OPS = 8
DECODE_ROWS = 8  # the batch-invariant engine's fixed decode width


def _profiled(fn, repeats: int) -> dict:
    """Wall time of fn (median of `repeats` runs after one warm-up) and its top operators."""
    from torch.profiler import ProfilerActivity, profile

    fn()  # warm-up: first-call conversions (bitsandbytes packs here) and allocator growth
    walls = []
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            walls.append(time.perf_counter() - t0)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:TOP_OPS]
    return {"wall_s": round(statistics.median(walls), 4), "repeats": repeats,
            "top_ops": [{"op": e.key, "self_cpu_share": round(e.self_cpu_time_total / total, 4),
                         "calls_per_run": round(e.count / repeats, 1)} for e in top]}


def run_arm(bundle_dir: str, golden_path: str, data_dir: str, base_q: str, base: str) -> dict:
    """The four phases in this process (its environment decides the arm)."""
    if os.environ.get("TAILGATE_PROFILE_NO_AVX512BF16"):
        import bitsandbytes.nn.modules as bnb_modules

        bnb_modules.has_avx512bf16 = lambda: False  # read by each Linear4bit when it is built
    import torch

    from benchmarks import train_step
    from pipeline.bundle.verify import verify_bundle
    from pipeline.engines.hf import HFEngine
    from pipeline.params import TrainParams
    from pipeline.platform import detect
    from pipeline.train import load_trainable
    from pipeline.train.data import collate, load_training_data

    golden = json.loads(Path(golden_path).read_text())["prompts"]
    prompt = max(golden, key=lambda g: len(g["prompt_ids"]))["prompt_ids"]
    engine = HFEngine.from_bundle(verify_bundle(bundle_dir))
    out = {"platform": detect(engine.model).as_record(), "prompt_tokens": len(prompt)}
    with torch.inference_mode():
        out["prefill"] = _profiled(lambda: engine.start(prompt), 3)
        seqs = [engine.start(g["prompt_ids"])[0] for g in golden[:DECODE_ROWS]]
        tokens = [g["token_ids"][0] for g in golden[:DECODE_ROWS]]
        out["decode_step"] = {**_profiled(lambda: engine.step(seqs, tokens), 5), "rows": DECODE_ROWS}
        pairs = [(g["prompt_ids"], g["token_ids"]) for g in golden[:DECODE_ROWS]]
        out["loglikelihood_batch"] = {**_profiled(lambda: engine.loglikelihood(pairs), 2), "sequences": len(pairs)}
    del engine
    data = load_training_data(base, data_dir)
    torch.manual_seed(0)
    model = load_trainable(Path(base_q), TrainParams())
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch = collate(data.train[:4], data.pad_id)
    out["train_step"] = {**_profiled(lambda: train_step(model, opt, batch), 2),
                         "batch_tokens": int(batch["attention_mask"].sum())}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--bundle", default="artifacts/bundle")
    p.add_argument("--golden", default="reports/golden.json")
    p.add_argument("--data", default="data/curated")
    p.add_argument("--base-q", default="artifacts/base_q")
    p.add_argument("--base", default="artifacts/base", help="the 16-bit base (its tokenizer encodes the data)")
    p.add_argument("--arm", choices=sorted(ARMS), help=argparse.SUPPRESS)  # one arm, in this process
    args = p.parse_args(argv)
    if args.arm:
        result = run_arm(args.bundle, args.golden, args.data, args.base_q, args.base)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        return 0
    from benchmarks import machine, write_result

    record = {"machine": machine(), "cpus": os.cpu_count(), "load_avg_before": [round(x, 2) for x in os.getloadavg()],
              "arms": {}, "arm_env": ARMS}
    for name, env in ARMS.items():
        part = Path(args.out).with_suffix(f".{name}.tmp.json")
        cmd = [sys.executable, "-m", "benchmarks.profile", "--arm", name, "--out", str(part), "--bundle", args.bundle,
               "--golden", args.golden, "--data", args.data, "--base-q", args.base_q, "--base", args.base]
        subprocess.run(cmd, check=True, env={**os.environ, **env})
        record["arms"][name] = json.loads(part.read_text())
        part.unlink()
    record["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    write_result(args.out, record)
    for name, arm in record["arms"].items():
        print(name, arm["platform"]["kernel_4bit"], {k: arm[k]["wall_s"] for k in
                                                      ("prefill", "decode_step", "loglikelihood_batch", "train_step")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
