"""What a training run leaves behind: the adapter directory with training.json, and the report
the stage writes as reports/train.json.

training.json travels inside the bundle and is hashed into its digest, so it carries only what
decides the adapter (TrainParams.adapter_params and the inputs' digests); the runtime settings
and everything measured (times, memory, losses) go to the report.
"""

from __future__ import annotations

import resource
from pathlib import Path

import torch

from pipeline.artifacts import TRAINING_META
from pipeline.files import atomic_dir, atomic_write_json, digest_json, read_json
from pipeline.params import TrainParams
from pipeline.train.data import TrainingData
from pipeline.train.loop import RunState


def training_meta(params: TrainParams, base_digest: str, data: TrainingData, versions: dict, hardware: str,
                  optimizer_name: str, ranks_extra: dict) -> dict:
    """training.json: the base and data the adapter learned from and the settings that decide it."""
    identity = params.adapter_params()
    return {
        "base_digest": base_digest,
        "base_precision": params.base_precision,
        "curated_data_digest": data.digest,
        "params_digest": digest_json(identity),
        "params": identity,
        "seed": params.seed,
        "max_seq_len_tokens": data.max_seq_len_tokens,
        **data.system.meta(),
        "versions": versions,
        "hardware": hardware,
        "optimizer": optimizer_name,
        **ranks_extra,
    }


def _canonical_adapter_config(path: Path) -> None:
    """peft stores target_modules as a set and writes it in hash-seed order, so the same run
    gave different adapter_config.json bytes (and bundle digests) in different processes."""
    cfg = read_json(path)
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    atomic_write_json(path, cfg)


def write_adapter(out_dir: str | Path, model, state: dict | None, meta: dict) -> None:
    """The adapter (safetensors), its canonical config and training.json, atomically.
    state: the full LoRA state dict where the model holds only shards (FSDP), else None."""
    with atomic_dir(out_dir) as tmp:
        # save_embedding_layers=False: the adapter never resizes the vocabulary (the tokenizer is
        # the base's), and peft's "auto" asks the Hub whether it did (a network call offline)
        model.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False,
                              **({"state_dict": state} if state else {}))
        # peft's stub card names the base by the path it was loaded from (artifacts/base_q, or
        # wherever the stage ran), which made the same weights a different bundle digest when
        # trained from another directory; the release's model card is the card
        (Path(tmp) / "README.md").unlink(missing_ok=True)
        _canonical_adapter_config(Path(tmp) / "adapter_config.json")
        atomic_write_json(Path(tmp) / TRAINING_META, meta)


def train_report(params: TrainParams, run: RunState, train_s: float, meta: dict, memory: dict,
                 n_trainable: int, base_lock_files: int, ranks_extra: dict) -> dict:
    """reports/train.json: the loss curve, speed, memory, and every setting the run used."""
    steps, val_curve, real_tokens = run.steps, run.val, run.real_tokens
    first = sum(s["loss"] for s in steps[:10]) / min(10, len(steps))
    last = sum(s["loss"] for s in steps[-10:]) / min(10, len(steps))
    return {
        "steps": steps,
        "val": val_curve,
        "loss_first10_mean": first,
        "loss_last10_mean": last,
        "final_val_loss": val_curve[-1]["val_loss"] if val_curve else None,
        "train_time_s": round(train_s, 2),
        "resumed_from_step": run.resumed_from,
        "stopped_early": run.stopped_early,
        "real_tokens": real_tokens,
        "real_tokens_per_s": round(real_tokens / train_s, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "memory_plan": memory,
        "trainable_params": n_trainable,
        "optimizer": meta["optimizer"],
        "gradient_checkpointing": params.gradient_checkpointing,
        "hardware": meta["hardware"],
        "base_lock_files": base_lock_files,
        "base_precision": params.base_precision,
        # the adapter's identity as training.json has it, and the settings left out of it
        "params_digest": meta["params_digest"],
        "runtime_params": params.runtime_params(),
        # what num_threads=null resolved to on this machine (torch's default: the cores it sees)
        "cpu_threads": torch.get_num_threads(),
        **ranks_extra,
    }
