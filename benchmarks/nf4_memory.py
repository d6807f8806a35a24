"""NF4 against 16-bit: bytes on disk, RSS after loading for inference, peak RSS of LoRA steps.

Two arms on the default base, loaded the way the project loads them:

- `nf4`: `artifacts/base_q` as the quantize stage saved it (NF4 + double quantization), no
  re-quantization on load: what training (`pipeline.train.load_trainable`), evaluation and
  serving (`pipeline.engines.hf.load_model`) build;
- `bf16`: `artifacts/base`, the 16-bit safetensors, in the quantization's compute dtype: what
  evaluation's reference pass and `train.base_precision: reference` / `quantize.method: none`
  (plain LoRA on the 16-bit base) build.

Each measurement runs in a fresh process (peak RSS is per process and would mix otherwise):
`load` imports the libraries, records the runtime's RSS, loads the base for inference
(`load_model`, as evaluation and serving do) and runs one forward pass over a prompt so that
every weight has been read, then records the peak; `train` loads the base with fresh LoRA
adapters and runs a few optimizer steps on one fixed synthetic batch (the same for both arms;
shape and labelled share as in benchmarks/memory_plan.py), recording the peak and step times.

What CPU RSS means here. Every measurement runs twice: `live`, with glibc told to give every
freed block over 1 MiB back to the system (MALLOC_MMAP_THRESHOLD_), so peak RSS is the peak of
bytes live tensors held, the quantity the planner predicts and a GPU's max_memory_allocated
would report; and `default`, glibc as shipped, which keeps freed blocks in its heap: what a CPU
process really costs. RSS also counts file pages: safetensors is read through mmap, and a
16-bit tensor can stay a view of the file (clean pages the kernel may drop and read again), so
the load phase records RssAnon and RssFile apart, and the runtime's own (shared libraries are
file pages too).

The planner (pipeline/memory.py) predicts each arm's training step from the config alone.

    python -m benchmarks.nf4_memory [--batch 4] [--seq-len 512] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import machine, train_step, write_result
from benchmarks.memory_plan import LABELLED, synthetic_batch

BASE, BASE_Q = Path("artifacts/base"), Path("artifacts/base_q")
ARMS = ("nf4", "bf16")
LIVE_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}  # as benchmarks/memory_plan.py: peak RSS = live peak
MIB = 2 ** 20


def _status() -> dict:
    """The kernel's own figures for this process, in bytes: VmHWM is the exact peak RSS."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
            out[key] = int(rest.split()[0]) * 1024
    return out


def _arm(arm: str) -> tuple[Path, object]:
    """(directory, dtype) of an arm, as pipeline.train.setup.training_base chooses them."""
    import torch

    if arm == "nf4":
        return BASE_Q, None  # as saved: the config carries the quantization
    quant = json.loads((BASE_Q / "quantize.json").read_text())
    return BASE, getattr(torch, quant["params"]["compute_dtype"])


def measure_load(arm: str, prompt_tokens: int) -> dict:
    import torch
    import bitsandbytes  # noqa: F401  (imported before the baseline: the runtime is not the model)
    import peft  # noqa: F401
    import transformers  # noqa: F401

    from pipeline.engines.hf import load_model

    runtime = _status()
    base_dir, dtype = _arm(arm)
    t0 = time.perf_counter()
    model = load_model(base_dir, None, dtype)
    load_s = time.perf_counter() - t0
    loaded = _status()
    # One forward pass reads every weight once. Until then a 16-bit base loaded through mmap
    # may not be resident at all (its tensors are views of the file), so RSS right after
    # loading would flatter it; after the first forward both arms hold what inference holds.
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (1, prompt_tokens))
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    forward = _status()
    tensor_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    return {"runtime": runtime, "after_load": loaded, "after_forward": forward,
            "runtime_rss_bytes": runtime["VmRSS"], "peak_rss_bytes": forward["VmHWM"],
            "tensor_bytes": tensor_bytes, "load_s": round(load_s, 2)}


def measure_train(arm: str, batch: int, seq_len: int, steps: int) -> dict:
    import torch

    from pipeline.params import load_section
    from pipeline.train import load_trainable, make_optimizer

    params = load_section("train")
    base_dir, dtype = _arm(arm)
    torch.manual_seed(params.seed)
    model = load_trainable(base_dir, params, dtype)
    model.train()
    torch.manual_seed(0)  # the same batch for both arms, whatever the adapters' init consumed
    step_batch = synthetic_batch(model.config.vocab_size, batch, seq_len)
    opt, opt_name = make_optimizer(params, [p for p in model.parameters() if p.requires_grad])
    times = []
    for _ in range(steps):
        times.append(train_step(model, opt, step_batch))
    # step_s[0] includes first-call warm-up (kernel selection, allocator growth)
    return {"peak_rss_bytes": _status()["VmHWM"], "optimizer": opt_name, "step_s": [round(t, 3) for t in times],
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def planned(batch: int, seq_len: int) -> dict:
    """The planner's prediction of each arm's training step (and its weight terms alone)."""
    from pipeline.memory import Setup, Shape, plan
    from pipeline.params import load_section

    params = load_section("train")
    quant = json.loads((BASE_Q / "quantize.json").read_text())["params"]
    shape = Shape.from_config(json.loads((BASE / "config.json").read_text()))
    out = {}
    for arm in ARMS:
        p = plan(shape, Setup(seq_len=seq_len, batch_size=batch, lora_r=params.lora_r,
                              method=quant["method"] if arm == "nf4" else "none",
                              double_quant=bool(quant["double_quant"]),
                              gradient_checkpointing=params.gradient_checkpointing, labelled_fraction=LABELLED))
        out[arm] = {"train_total_bytes": p.total,
                    "weights_bytes": p.terms["quantized_weights"] + p.terms["16bit_embeddings_norms"],
                    "terms_mib": {k: round(v / MIB, 1) for k, v in p.terms.items()}}
    return out


def disk_bytes(directory: Path) -> int:
    """Bytes of weights: the safetensors files (configs and tokenizer are the same for both)."""
    return sum(f.stat().st_size for f in directory.glob("*.safetensors"))


def _child(args: list[str], env: dict) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.nf4_memory", *args], capture_output=True, text=True,
                         env={**os.environ, **env})
    if out.returncode:
        raise SystemExit(f"benchmarks.nf4_memory {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps per training measurement")
    ap.add_argument("--prompt-tokens", type=int, default=256, help="tokens of the one forward pass after loading")
    ap.add_argument("--out", default="benchmarks/results/nf4_memory.json")
    ap.add_argument("--one", nargs=2, metavar=("ARM", "PHASE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        arm, phase = args.one
        r = (measure_load(arm, args.prompt_tokens) if phase == "load"
             else measure_train(arm, args.batch, args.seq_len, args.steps))
        print(json.dumps(r))
        return 0
    for d in (BASE, BASE_Q):
        if not (d / "config.json").exists():
            print(f"no base at {d}: run `dvc repro quantize` first", file=sys.stderr)
            return 2
    load_before = os.getloadavg()
    arms = {arm: {"dir": str(_arm(arm)[0]), "disk_bytes": disk_bytes(_arm(arm)[0])} for arm in ARMS}
    # Arms alternate inside each phase and allocator mode, so a noisy neighbour hits both.
    for phase in ("load", "train"):
        for mode, env in (("live", LIVE_ENV), ("default", {})):
            for arm in ARMS:
                extra = ["--batch", str(args.batch), "--seq-len", str(args.seq_len), "--steps", str(args.steps),
                         "--prompt-tokens", str(args.prompt_tokens)]
                arms[arm][f"{phase}_{mode}"] = r = _child([*extra, "--one", arm, phase], env)
                print(f"{arm} {phase} {mode}: peak RSS {r['peak_rss_bytes'] / MIB:,.0f} MiB",
                      file=sys.stderr, flush=True)
    plan_ = planned(args.batch, args.seq_len)
    for arm in ARMS:
        arms[arm]["planned"] = plan_[arm]

    def ratio(key) -> float:
        return round(key(arms["bf16"]) / key(arms["nf4"]), 3)

    result = {
        "benchmark": "nf4_memory",
        "config": {"batch": args.batch, "seq_len": args.seq_len, "steps": args.steps,
                   "prompt_tokens": args.prompt_tokens,
                   "labelled_fraction": LABELLED,
                   "live_env": LIVE_ENV, "batch_data": "synthetic token ids, fixed seed, same for both arms"},
        "arms": arms,
        # 16-bit / NF4: how many times more the 16-bit base costs
        "ratios_16bit_over_nf4": {
            "disk_bytes": ratio(lambda a: a["disk_bytes"]),
            "load_peak_rss_live": ratio(lambda a: a["load_live"]["peak_rss_bytes"]),
            "load_peak_over_runtime_live": ratio(lambda a: a["load_live"]["peak_rss_bytes"]
                                                 - a["load_live"]["runtime_rss_bytes"]),
            "train_peak_rss_live": ratio(lambda a: a["train_live"]["peak_rss_bytes"]),
            "train_peak_rss_default": ratio(lambda a: a["train_default"]["peak_rss_bytes"]),
            "planned_train": ratio(lambda a: a["planned"]["train_total_bytes"]),
        },
        "machine": {**machine(), "load_avg_before": [round(x, 2) for x in load_before],
                    "load_avg_after": [round(x, 2) for x in os.getloadavg()]},
    }
    write_result(args.out, result)
    r = result["ratios_16bit_over_nf4"]
    print(f"16-bit / NF4: disk {r['disk_bytes']}x, inference load peak {r['load_peak_rss_live']}x "
          f"({r['load_peak_over_runtime_live']}x above the runtime), training peak {r['train_peak_rss_live']}x live, "
          f"{r['train_peak_rss_default']}x default allocator; planner {r['planned_train']}x -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
