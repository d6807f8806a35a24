"""Gradient checkpointing on vs off: seconds per QLoRA step and peak RSS, as ratios in one run.

Each configuration runs in its own process (peak RSS is per process) on the same batches of
the curated data, with the default train params otherwise. Needs `dvc repro train` first.

    python -m benchmarks.train_checkpointing [--steps 6]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

from benchmarks import load_avg, machine, train_step, write_result


def one_config(checkpointing: bool, steps: int) -> dict:
    import torch

    from pipeline.chat import stop_token_ids
    from pipeline.params import load_section
    from pipeline.train import load_trainable
    from pipeline.train.data import batches, collate, encode_records, read_jsonl
    from transformers import AutoTokenizer

    params = load_section("train").model_copy(update={"gradient_checkpointing": checkpointing})
    torch.manual_seed(params.seed)
    tok = AutoTokenizer.from_pretrained("artifacts/base")
    meta = json.loads(Path("data/curated/meta.json").read_text())
    examples = encode_records(tok, read_jsonl("data/curated/train.jsonl"), stop_token_ids(tok), meta["max_seq_len_tokens"])
    model = load_trainable(Path("artifacts/base_q"), params)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=params.learning_rate)
    stream = batches(examples, params.batch_size, params.seed)
    times, tokens = [], 0
    for _ in range(steps + 1):  # the first step warms up kernels and allocators: not timed
        batch = collate(next(stream), tok.pad_token_id)
        times.append(train_step(model, opt, batch))
        tokens += int(batch["attention_mask"].sum())
    return {"gradient_checkpointing": checkpointing, "steps": steps, "s_per_step": sum(times[1:]) / steps,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--one", choices=["on", "off"], help=argparse.SUPPRESS)
    p.add_argument("--out", default="benchmarks/results/train_checkpointing.json")
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one_config(args.one == "on", args.steps)))
        return 0
    results, load_before = {}, load_avg()
    for mode in ("off", "on"):
        out = subprocess.run([sys.executable, "-m", "benchmarks.train_checkpointing", "--one", mode,
                              "--steps", str(args.steps)], capture_output=True, text=True, check=True)
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    summary = {"results": results,
               "time_ratio_on_vs_off": results["on"]["s_per_step"] / results["off"]["s_per_step"],
               "rss_ratio_on_vs_off": results["on"]["peak_rss_mb"] / results["off"]["peak_rss_mb"],
               "machine": {**machine(), "load_avg_before": load_before, "load_avg_after": load_avg()}}
    write_result(args.out, summary)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
