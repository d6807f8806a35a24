"""The memory planner against measured peaks: tiny and default models, several step shapes.

Each case runs in a fresh process (peak RSS is per process): load the quantized base with
fresh LoRA adapters exactly as the train stage does, run three QLoRA steps on a fixed batch
(random token ids, a fixed share of them labelled, as a chat record's reply is), and report
the process's peak RSS. The planner predicts the same case from the config alone
(pipeline/memory.py). Needs `dvc repro quantize` for the default model; the tiny model is
built in a temporary directory.

Two peaks per case. The plan counts bytes held by live tensors, which is what
torch.cuda.max_memory_allocated reports on a GPU. On CPU, glibc keeps freed blocks in its heap
and reuses them imperfectly from step to step, so peak RSS also holds memory no tensor owns.
`live` runs the case with MALLOC_MMAP_THRESHOLD_ fixed at 1 MiB, so every large tensor is its
own mapping, returned to the system when freed: its peak RSS is the live peak, and the check
(within 25%) is against it. `rss` is the same case under the default allocator, what a CPU run
really costs; the plan with the allocator's kept heap (`heap_retention`, what the train stage
plans on CPU) is checked against it, within 25% too. The last case steps through batches of
mixed lengths up to long records, as the train stage does.

    python -m benchmarks.memory_plan [--out benchmarks/results/memory_plan.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import load_avg, machine, train_step, write_result

# Large blocks become their own mappings, unmapped when freed: peak RSS = peak live bytes.
LIVE_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
LABELLED = 0.25  # share of positions labelled (the reply); the head runs only there
CASES = [  # (model, batch, longest seq_len, gradient checkpointing, steps of mixed lengths)
    ("tiny", 4, 512, False, False), ("tiny", 2, 1024, False, False),
    ("default", 4, 256, False, False), ("default", 4, 512, False, False), ("default", 2, 1024, False, False),
    ("default", 4, 512, True, False), ("default", 2, 1024, True, False),
    # long records, batches of every length as the train stage's length-grouped batches come
    # (its largest is 4 x 870 on the default data): the allocator's kept heap is at its worst
    ("default", 4, 870, False, True),
]
# the mixed case's step lengths, as shares of its longest
MIXED = (1.0, 0.35, 0.7, 0.52, 1.0, 0.6, 0.8, 0.44)
# An AVX2-only host on this one (--simulate-avx2): torch's, oneDNN's and MKL's kernels capped at
# AVX2, as benchmarks/profile.py simulates it. bitsandbytes needs nothing: a training step
# dequantizes its 4-bit weights on every call on both classes (the packed AVX512-BF16 layout is
# made only by an eval-mode forward without gradients).
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def synthetic_batch(vocab: int, batch: int, seq_len: int) -> dict:
    """Random token ids with the last LABELLED share of each row labelled, as a chat record's
    reply is; call after seeding torch (the caller's seed decides the ids)."""
    import torch

    from pipeline.chat import IGNORE_INDEX

    ids = torch.randint(0, vocab, (batch, seq_len))
    labels = torch.full_like(ids, IGNORE_INDEX)
    start = seq_len - int(seq_len * LABELLED)
    labels[:, start:] = ids[:, start:]
    mask = torch.ones_like(ids)
    mask[0, -8:] = 0  # one padded row, as every length-grouped batch has: the kernel gets a mask
    labels[0, -8:] = IGNORE_INDEX
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def measure(base_q: str, batch: int, seq_len: int, checkpointing: bool, lora_r: int, mixed: bool = False) -> dict:
    import torch

    from pipeline.params import TrainParams
    from pipeline.train import load_trainable

    params = TrainParams(lora_r=lora_r, gradient_checkpointing=checkpointing)
    torch.manual_seed(0)
    model = load_trainable(Path(base_q), params)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    for share in (MIXED if mixed else (1.0, 1.0, 1.0)):
        train_step(model, opt, synthetic_batch(model.config.vocab_size, batch, int(seq_len * share)))
    return {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def predict(config: dict, batch: int, seq_len: int, checkpointing: bool, lora_r: int, compute_dtype: str,
            heap: bool = False) -> dict:
    """The plan of a case: live tensors only, or (heap) with what glibc's default allocator keeps."""
    from pipeline.memory import Setup, Shape, dtype_bytes, plan

    p = plan(Shape.from_config(config), Setup(seq_len=seq_len, batch_size=batch, lora_r=lora_r,
                                              gradient_checkpointing=checkpointing, labelled_fraction=LABELLED,
                                              compute_bytes=dtype_bytes(compute_dtype), heap_retention=heap))
    return p.as_dict()


def tiny_base_q(tmp: Path) -> Path:
    from pipeline.base import fetch_base
    from pipeline.params import BaseParams, QuantizeParams
    from pipeline.quantize import quantize_base
    from tests.conftest import build_tiny_model_dir

    build_tiny_model_dir(tmp / "tiny_hf")
    fetch_base(BaseParams(source="local_dir", local_dir=str(tmp / "tiny_hf")), tmp / "base")
    quantize_base(QuantizeParams(), tmp / "base", tmp / "base_q")
    return tmp / "base_q"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/memory_plan.json")
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--models", nargs="+", default=["tiny", "default"])
    ap.add_argument("--simulate-avx2", action="store_true", help="cap torch/oneDNN/MKL at AVX2 in every case")
    ap.add_argument("--one", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        base_q, batch, seq_len, ckpt, mixed = args.one
        print(json.dumps(measure(base_q, int(batch), int(seq_len), ckpt == "1", args.lora_r, mixed == "1")))
        return 0
    rows, load_before = [], load_avg()
    with tempfile.TemporaryDirectory() as tmp:
        bases = {"tiny": tiny_base_q(Path(tmp)), "default": Path("artifacts/base_q")}
        for model, batch, seq_len, ckpt, mixed in (c for c in CASES if c[0] in args.models):
            config = json.loads((bases[model] / "config.json").read_text())
            peaks = {}
            for mode, env in (("live", LIVE_ENV), ("rss", {})):
                out = subprocess.run([sys.executable, "-m", "benchmarks.memory_plan", "--lora-r", str(args.lora_r),
                                      "--one", str(bases[model]), str(batch), str(seq_len), "1" if ckpt else "0",
                                      "1" if mixed else "0"],
                                     capture_output=True, text=True,
                                     env={**os.environ, **(AVX2_ENV if args.simulate_avx2 else {}), **env})
                if out.returncode:
                    raise SystemExit(out.stderr[-3000:])
                peaks[mode] = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_bytes"]
            compute = json.loads((bases[model] / "quantize.json").read_text())["params"]["compute_dtype"]
            planned = predict(config, batch, seq_len, ckpt, args.lora_r, compute)
            planned_rss = predict(config, batch, seq_len, ckpt, args.lora_r, compute, heap=True)["total_bytes"]
            rows.append({"model": model, "batch": batch, "seq_len": seq_len, "gradient_checkpointing": ckpt,
                         "mixed_lengths": mixed, "compute_dtype": compute,
                         "measured_live_mib": round(peaks["live"] / 2 ** 20),
                         "measured_rss_mib": round(peaks["rss"] / 2 ** 20),
                         "planned_mib": round(planned["total_bytes"] / 2 ** 20),
                         "planned_over_measured": round(planned["total_bytes"] / peaks["live"], 3),
                         "planned_rss_mib": round(planned_rss / 2 ** 20),
                         "planned_rss_over_measured": round(planned_rss / peaks["rss"], 3),
                         "rss_over_live": round(peaks["rss"] / peaks["live"], 3),
                         "terms_mib": {k: round(v / 2 ** 20, 1) for k, v in planned["terms_bytes"].items()}})
            print(json.dumps(rows[-1]), flush=True)
    worst = max(abs(r["planned_over_measured"] - 1) for r in rows)
    worst_rss = max(abs(r["planned_rss_over_measured"] - 1) for r in rows)
    result = {"machine": {**machine(), "load_avg_before": load_before, "load_avg_after": load_avg()},
              "simulated": AVX2_ENV if args.simulate_avx2 else None,
              "labelled_fraction": LABELLED, "lora_r": args.lora_r, "cases": rows,
              "worst_relative_error": round(worst, 3), "worst_rss_relative_error": round(worst_rss, 3),
              "target": 0.25, "passed": worst <= 0.25 and worst_rss <= 0.25}
    write_result(args.out, result)
    print(f"worst |planned/live peak - 1| = {worst:.1%}, |planned/default-allocator RSS - 1| = {worst_rss:.1%} "
          f"(target 25%); default-allocator RSS / live peak: "
          f"{min(r['rss_over_live'] for r in rows):.2f}-{max(r['rss_over_live'] for r in rows):.2f}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
