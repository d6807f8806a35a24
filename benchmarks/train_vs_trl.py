"""tailgate's train loop against TRL's SFTTrainer: real (non-padding) training tokens per second.

Both arms train the same pre-quantized NF4 base (`artifacts/base_q`, loaded as saved) with the
same LoRA (every linear layer but the head, r, alpha and dropout from the `train` params), on the
same curated records (`data/curated/train.jsonl`), the same sequence limit (`meta.json`
max_seq_len_tokens), batch 4, torch AdamW, gradient clipping at the same norm, linear warm-up then
cosine learning rate, loss on the assistant reply only, no gradient checkpointing, no evaluation,
no saving, no logging.

- `ours`: the train stage's own pieces, called as `pipeline.train.train()` calls them:
  `load_trainable`, `encode_records`, the seeded length-grouped `batches`, `collate`, `loss_on_labels`
  (head only on labelled positions), backward, `clip_grad_norm_`, `optimizer.step`.
- `trl`: `trl.SFTTrainer` configured as a user would with `SFTConfig` defaults otherwise
  (no packing, random sampler, bf16 autocast, its fused LM head). The chat template of the
  default base has no `{% generation %}` markers and TRL cannot patch it, so
  `assistant_only_loss=True` fails; the records are given in TRL's documented conversational
  prompt-completion form (`prompt` = system + user turns, `completion` = the assistant turn),
  where TRL's default `completion_only_loss` puts the loss on the reply, as ours does. This is
  the headline comparison.
- `trl_padding_free` (second TRL row): the same with `padding_free=True` (batches flattened into
  one sequence, no pad tokens; `max_length=None`, which TRL requires there; every record already
  fits the limit).

Each arm sees the same set of records; the order is each tool's own (ours: shuffled, length
grouped windows; TRL: the Trainer's random sampler), with the same seed per repetition.

Measure: a fresh model and optimizer per run; 2 warm-up optimizer steps, then `--steps` timed
steps. Real tokens = the attention-mask sum of what each step was fed (the flattened length
without padding when there is no mask), counted by the same helper for every arm; the time is
wall clock from the end of the last warm-up step to the end of the last timed step, data loading
and collation included. Arms alternate (ours, trl, ..., ours, trl, ...) in one process, so load
from neighbours hits all of them; the median per arm and the ratio of medians are reported.
Each run records its cpu_share (process CPU time / wall time / threads); runs below 0.8 shared
their cores with other processes and are listed as contended. The defaults take about 14 minutes
on 2 idle cores. Needs `dvc repro curate quantize` first and `pip install -e ".[bench]"` (trl).

    python -m benchmarks.train_vs_trl [--steps 10] [--reps 3] [--threads N] [--no-padding-free]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from benchmarks import machine, write_result

GOAL_RATIO = 1.5  # the goal: ours >= 1.5x TRL
WARMUP_STEPS = 2
CONTENDED = 0.8  # cpu_share below this: the run shared its cores with other processes
BASE_Q, BASE, DATA = Path("artifacts/base_q"), Path("artifacts/base"), Path("data/curated")


def real_tokens(batch: dict) -> int:
    """Non-padding tokens in a batch: the attention-mask sum, or, for a padding-free batch (no
    mask, sequences flattened into one row), the number of input ids."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel())


def _window(ends: list[float], tokens: list[int], positions: list[int], warmup: int,
            cpu: list[float] | None = None, threads: int = 1) -> dict:
    """Throughput over the steps after `warmup`: ends[i] is when step i finished, tokens[i] the real
    tokens it fed, positions[i] the positions it computed (padding included), cpu[i] the process's
    CPU time then. cpu_share = CPU time used / (wall time x threads): well below 1 means the
    threads waited for cores other processes held, and the run measured the neighbours too."""
    timed = len(ends) - warmup
    seconds = ends[-1] - ends[warmup - 1]
    n = sum(tokens[warmup:])
    share = {} if cpu is None else {"cpu_share": round((cpu[-1] - cpu[warmup - 1]) / (seconds * threads), 3)}
    return {"timed_steps": timed, "real_tokens": n, "seconds": round(seconds, 3), **share,
            "tokens_per_s": round(n / seconds, 2), "s_per_step": round(seconds / timed, 3),
            "padding_share": round(1 - n / sum(positions[warmup:]), 4),
            "tokens_per_step": tokens[warmup:],
            "step_s": [round(b - a, 2) for a, b in zip(ends[warmup - 1:], ends[warmup:])]}


def _load_inputs():
    from transformers import AutoTokenizer

    from pipeline.params import load_section
    from pipeline.train.data import read_jsonl

    params = load_section("train")
    meta = json.loads((DATA / "meta.json").read_text())
    tok = AutoTokenizer.from_pretrained(BASE)
    return params, int(meta["max_seq_len_tokens"]), tok, read_jsonl(DATA / "train.jsonl")


def run_ours(params, max_len: int, records: list[dict], steps: int, seed: int) -> dict:
    """The train stage's loop body (pipeline.train.train), without validation and checkpoints."""
    import torch
    from transformers import AutoTokenizer

    from pipeline.chat import stop_token_ids
    from pipeline.train import load_trainable, loss_on_labels, lr_at, make_optimizer
    from pipeline.train.data import batches, collate, encode_records

    total = WARMUP_STEPS + steps
    params = params.model_copy(update={"max_steps": total, "seed": seed})
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(BASE)
    stops = stop_token_ids(tokenizer)
    examples = encode_records(tokenizer, records, stops, max_len)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    model = load_trainable(BASE_Q, params)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer, optimizer_name = make_optimizer(params, trainable)
    stream = batches(examples, params.batch_size, params.seed)
    ends, tokens, positions, cpu, losses = [], [], [], [], []
    for step in range(total):
        lr = lr_at(step, params)
        for group in optimizer.param_groups:
            group["lr"] = lr
        step_loss, step_tokens, step_positions = 0.0, 0, 0
        for _ in range(params.grad_accum_steps):
            batch = collate(next(stream), pad_id)
            loss, _n = loss_on_labels(model, batch)
            (loss / params.grad_accum_steps).backward()
            step_loss += loss.item() / params.grad_accum_steps
            step_tokens += real_tokens(batch)
            step_positions += batch["input_ids"].numel()
        float(torch.nn.utils.clip_grad_norm_(trainable, params.max_grad_norm))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ends.append(time.perf_counter())
        cpu.append(time.process_time())
        tokens.append(step_tokens)
        positions.append(step_positions)
        losses.append(round(step_loss, 4))
    lora_dtype = str(trainable[0].dtype)
    del model, optimizer, trainable
    gc.collect()
    return {**_window(ends, tokens, positions, WARMUP_STEPS, cpu, torch.get_num_threads()), "loss": losses,
            "optimizer": optimizer_name, "lora_param_dtype": lora_dtype, "examples": len(examples)}


def _trl_dataset(records: list[dict]):
    from datasets import Dataset

    # Conversational prompt-completion: TRL's completion_only_loss (default for this format)
    # puts the loss on the assistant reply.
    return Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in records])


def trl_config(params, max_len: int, steps: int, seed: int, out_dir: str, padding_free: bool):
    import torch
    from trl import SFTConfig

    return SFTConfig(
        use_cpu=not torch.cuda.is_available(),  # transformers refuses bf16 on CPU without it
        output_dir=out_dir,
        max_steps=WARMUP_STEPS + steps,
        per_device_train_batch_size=params.batch_size,
        gradient_accumulation_steps=params.grad_accum_steps,
        learning_rate=params.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=params.warmup_steps,
        weight_decay=params.weight_decay,
        max_grad_norm=params.max_grad_norm,
        optim="adamw_torch",
        bf16=True,
        gradient_checkpointing=False,  # TRL's default is True; ours is off
        max_length=None if padding_free else max_len,
        padding_free=padding_free,
        packing=False,
        seed=seed,
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataset_num_proc=None,
    )


def run_trl(params, max_len: int, records: list[dict], steps: int, seed: int, padding_free: bool,
            ours_examples=None) -> dict:
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback, set_seed
    from trl import SFTTrainer

    from pipeline.train import resolve_targets

    set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(BASE)
    model = AutoModelForCausalLM.from_pretrained(BASE_Q)
    lora = LoraConfig(r=params.lora_r, lora_alpha=params.lora_alpha, lora_dropout=params.lora_dropout,
                      target_modules=resolve_targets(model, params.target_modules), bias="none",
                      task_type="CAUSAL_LM")
    ends: list[float] = []
    tokens: list[int] = []
    positions: list[int] = []
    cpu: list[float] = []
    fed = [0, 0]  # real tokens, positions of the micro-batches of the current optimizer step

    class Count(SFTTrainer):
        def training_step(self, model, inputs, *args, **kwargs):
            fed[0] += real_tokens(inputs)
            fed[1] += inputs["input_ids"].numel()
            return super().training_step(model, inputs, *args, **kwargs)

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):  # after clipping, optimizer and scheduler step
            ends.append(time.perf_counter())
            cpu.append(time.process_time())
            tokens.append(fed[0])
            positions.append(fed[1])
            fed[0] = fed[1] = 0

    with tempfile.TemporaryDirectory() as out:
        args = trl_config(params, max_len, steps, seed, out, padding_free)
        trainer = Count(model=model, args=args, train_dataset=_trl_dataset(records), processing_class=tokenizer,
                        peft_config=lora, callbacks=[Clock()])
        ds = trainer.train_dataset
        parity = None if ours_examples is None else data_parity(ours_examples, ds["input_ids"], ds["labels"])
        result = trainer.train()
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    out = {**_window(ends, tokens, positions, WARMUP_STEPS, cpu, torch.get_num_threads()),
           "train_loss": round(result.training_loss, 4),
           "optimizer": type(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer")
                             else trainer.optimizer).__name__,
           "lora_param_dtype": str(trainable[0].dtype), "examples": len(ds),
           "threads_after": torch.get_num_threads()}
    if parity is not None:
        out["data_parity"] = parity
    del trainer, model, trainable
    gc.collect()
    return out


def data_parity(examples, trl_ids: list[list[int]], trl_labels: list[list[int]]) -> dict:
    """Do both tools feed the same tokens? Ours: encode_records; TRL: its own tokenization of the
    prompt-completion records, in record order. Counts are over the whole train set."""
    from pipeline.chat import IGNORE_INDEX

    same_ids = same_labels = 0
    extra, label_diff = set(), set()
    for e, ids, labels in zip(examples, trl_ids, trl_labels, strict=True):
        same_ids += list(ids) == e.input_ids
        same_labels += list(labels) == e.labels
        extra.add(len(ids) - len(e.input_ids))
        label_diff.add(sum(a != b for a, b in zip(labels, e.labels)))
    return {"records": len(examples),
            "ours_tokens": sum(len(e.input_ids) for e in examples),
            "trl_tokens": sum(len(x) for x in trl_ids),
            "ours_labelled_tokens": sum(sum(1 for t in e.labels if t != IGNORE_INDEX) for e in examples),
            "trl_labelled_tokens": sum(sum(1 for t in lab if t != -100) for lab in trl_labels),
            "trl_input_ids_equal_ours": same_ids, "trl_labels_equal_ours": same_labels,
            "trl_extra_tokens_per_record": sorted(extra),
            "labels_differing_per_record": sorted(label_diff)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps per run (after 2 warm-up steps)")
    p.add_argument("--reps", type=int, default=3, help="runs per arm, alternating between arms")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's default)")
    p.add_argument("--no-padding-free", action="store_true", help="skip the TRL padding_free row")
    p.add_argument("--out", default="benchmarks/results/train_vs_trl.json")
    args = p.parse_args(argv)

    import datasets
    import torch
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    params, max_len, tokenizer, records = _load_inputs()
    from pipeline.chat import stop_token_ids
    from pipeline.train.data import encode_records

    ours_examples = encode_records(tokenizer, records, stop_token_ids(tokenizer), max_len)
    parity = None
    arms = ["ours", "trl"] + ([] if args.no_padding_free else ["trl_padding_free"])
    runs = []
    load_before = os.getloadavg()
    t_all = time.perf_counter()
    for rep in range(args.reps):
        seed = params.seed + rep
        for arm in arms:
            torch.set_num_threads(threads)
            t0 = time.perf_counter()
            if arm == "ours":
                r = run_ours(params, max_len, records, args.steps, seed)
            else:
                r = run_trl(params, max_len, records, args.steps, seed, padding_free=arm == "trl_padding_free",
                            ours_examples=ours_examples if parity is None else None)
                parity = r.pop("data_parity", parity)
            r.update(arm=arm, rep=rep, seed=seed, run_wall_s=round(time.perf_counter() - t0, 1),
                     load_avg_1m=round(os.getloadavg()[0], 2))
            runs.append(r)
            print(f"[{arm} rep {rep}] {r['tokens_per_s']:.1f} real tok/s ({r['real_tokens']} tokens in "
                  f"{r['seconds']:.1f} s, {r['s_per_step']:.2f} s/step, cpu share {r['cpu_share']:.2f})",
                  file=sys.stderr, flush=True)

    median = {a: statistics.median(r["tokens_per_s"] for r in runs if r["arm"] == a) for a in arms}
    ratios = {f"ours_vs_{a}": round(median["ours"] / median[a], 3) for a in arms if a != "ours"}
    contended = [f"{r['arm']} rep {r['rep']}" for r in runs if r["cpu_share"] < CONTENDED]
    quiet = {a: [r["tokens_per_s"] for r in runs if r["arm"] == a and r["cpu_share"] >= CONTENDED] for a in arms}
    quiet_median = {a: statistics.median(v) for a, v in quiet.items() if v}
    import peft
    import trl

    summary = {
        "benchmark": "train_vs_trl",
        "metric": "real (non-padding) training tokens per wall-clock second, median over runs",
        "headline": "ours_vs_trl (TRL defaults, no packing, prompt-completion records)",
        "goal_ratio": GOAL_RATIO,
        "ratio": ratios["ours_vs_trl"],
        "meets_goal": ratios["ours_vs_trl"] >= GOAL_RATIO,
        "ratios": ratios,
        "median_tokens_per_s": {a: round(v, 2) for a, v in median.items()},
        "contended_runs": contended,
        "uncontended": ({"median_tokens_per_s": {a: round(v, 2) for a, v in quiet_median.items()},
                         "ratios": {f"ours_vs_{a}": round(quiet_median["ours"] / quiet_median[a], 3)
                                    for a in arms if a != "ours"}}
                        if len(quiet_median) == len(arms) else None),
        "machine": {**machine(), "torch_threads": threads, "contended_below_cpu_share": CONTENDED,
                    "load_avg_before": [round(x, 2) for x in load_before],
                    "load_avg_after": [round(x, 2) for x in os.getloadavg()]},
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                     "torch": torch.__version__, "bitsandbytes": version("bitsandbytes"),
                     "accelerate": version("accelerate"), "datasets": version("datasets")},
        "config": {
            "base": str(BASE_Q), "data": str(DATA / "train.jsonl"), "max_seq_len_tokens": max_len,
            "batch_size": params.batch_size, "grad_accum_steps": params.grad_accum_steps,
            "lora": {"r": params.lora_r, "alpha": params.lora_alpha, "dropout": params.lora_dropout,
                     "target_modules": params.target_modules},
            "learning_rate": params.learning_rate, "warmup_steps": params.warmup_steps,
            "max_grad_norm": params.max_grad_norm, "gradient_checkpointing": False,
            "warmup_steps_untimed": WARMUP_STEPS, "timed_steps": args.steps, "reps": args.reps,
            "order": "alternating per rep: " + ", ".join(arms),
            "ours": "pipeline.train pieces as train() calls them: length-grouped batches, head on labelled "
                    "positions only, no autocast, LoRA parameters as peft creates them",
            "trl": "SFTTrainer(model=pre-quantized base, peft_config=identical LoraConfig), SFTConfig: "
                   "packing=False, padding_free=False, max_length=max_seq_len_tokens, bf16=True, "
                   "optim=adamw_torch, cosine schedule, gradient_checkpointing=False, no eval/save/logging; "
                   "records as conversational prompt-completion (completion_only_loss default -> loss on the "
                   "reply); assistant_only_loss=True is refused for this chat template (no generation markers)",
            "trl_padding_free": "as trl, with padding_free=True and max_length=None",
            "sampling": "same records for every arm; order: ours = seeded shuffle + length-grouped windows, "
                        "TRL = Trainer's seeded random sampler; seed = train.seed + rep",
        },
        "data_parity": parity,
        "runs": runs,
        "total_wall_s": round(time.perf_counter() - t_all, 1),
    }
    write_result(args.out, summary)
    med = summary["median_tokens_per_s"]
    print(f"train_vs_trl: ours {med['ours']:.1f} real tok/s, TRL {med['trl']:.1f} -> {ratios['ours_vs_trl']:.2f}x "
          f"(goal >= {GOAL_RATIO}x: {'met' if summary['meets_goal'] else 'NOT met'})"
          + (f"; TRL padding_free {med['trl_padding_free']:.1f} -> {ratios['ours_vs_trl_padding_free']:.2f}x"
             if "trl_padding_free" in med else "")
          + f"; trl {trl.__version__}, {threads} threads"
          + (f"; WARNING contended runs (other processes held the cores): {', '.join(contended)}" if contended else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
