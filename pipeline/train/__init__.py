"""train stage: QLoRA fine-tuning of LoRA adapters on the frozen pre-quantized base.

Reads: params `train`; `artifacts/base_q/` (the quantized base, loaded as saved, never
re-quantized); `artifacts/base/` (the 16-bit base: its tokenizer, and its weights when
`base_precision: reference`); `data/curated/{train,val}.jsonl` and
`meta.json` (which carries the shipped context length).
Writes: `artifacts/adapter/` (PEFT adapter in safetensors + training.json with the base digest
it was trained on and the system prompt the training records share, null if they share none)
and the report dict (loss per step, real tokens/s, peak RSS, optimizer).

The base is read-only: its hashes are checked before and after training.
"""

from __future__ import annotations

import logging
import math
import platform
import random
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from pipeline.artifacts import BASE_LOCK, TRAINING_META
from pipeline.base import check_lock
from pipeline.chat import IGNORE_INDEX, stop_token_ids
from pipeline.files import (
    atomic_dir, atomic_write_json, digest_json, files_digest, read_json, sha256_file, verify_files,
)
from pipeline.memory import check_budget, format_plan, plan_training
from pipeline.params import TrainParams
from pipeline.artifacts import QUANTIZE_REPORT as QUANT_REPORT
from pipeline.train.checkpoint import Checkpoints, run_key
from pipeline.train.data import batches, collate, encode_records, read_jsonl, system_prompt_of
from pipeline.train.distributed import setup as setup_ranks

log = logging.getLogger(__name__)


@dataclass
class _RunState:
    """Everything about the run so far that a checkpoint must carry besides tensors."""

    step: int = 0
    micro_batches: int = 0
    real_tokens: int = 0
    elapsed_s: float = 0.0
    steps: list = field(default_factory=list)
    val: list = field(default_factory=list)
    best_val: float | None = None
    best_step: int = 0
    bad_validations: int = 0
    stopped_early: bool = False
    resumed_from: int | None = None

    def __post_init__(self) -> None:
        if self.step and self.resumed_from is None:
            self.resumed_from = self.step  # built from a checkpoint

    def should_stop(self, val_loss: float | None, patience: int | None) -> bool:
        if val_loss is None:
            return False
        if self.best_val is None or val_loss < self.best_val:
            self.best_val, self.best_step, self.bad_validations = val_loss, self.step, 0
            return False
        self.bad_validations += 1
        self.stopped_early = patience is not None and self.bad_validations >= patience
        return self.stopped_early

    def state(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("step", "resumed_from")}


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def hardware() -> str:
    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return f"cpu:{platform.machine()}"


def library_versions() -> dict[str, str]:
    import bitsandbytes
    import peft
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "bitsandbytes": bitsandbytes.__version__}


def make_optimizer(params: TrainParams, trainable):
    """Paged AdamW on CUDA (optimizer states page to host memory under pressure); torch AdamW on
    CPU, where paging buys nothing. Returns (optimizer, the name of what actually runs)."""
    choice = params.optimizer
    if choice == "auto":
        choice = "paged_adamw_32bit" if torch.cuda.is_available() else "adamw_torch"
    kw = {"lr": params.learning_rate, "weight_decay": params.weight_decay}
    if choice.startswith("paged_"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"optimizer {choice} needs CUDA; use adamw_torch or auto on CPU")
        import bitsandbytes as bnb

        cls = bnb.optim.PagedAdamW32bit if choice == "paged_adamw_32bit" else bnb.optim.PagedAdamW8bit
        return cls(trainable, **kw), choice
    return torch.optim.AdamW(trainable, **kw), "adamw_torch"


def lr_at(step: int, params: TrainParams) -> float:
    """Linear warm-up then cosine decay to 10% of the peak."""
    if step < params.warmup_steps:
        return params.learning_rate * (step + 1) / params.warmup_steps
    progress = (step - params.warmup_steps) / max(1, params.max_steps - params.warmup_steps)
    return params.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def resolve_targets(model, target_modules: str | list[str]) -> list[str]:
    """Expand "all-linear" to the sorted names of every linear layer but the output head.

    peft expands it itself, but into full module paths in set order, which would make
    adapter_config.json (and so the bundle digest) differ between otherwise identical runs.
    """
    if target_modules != "all-linear":
        return sorted(target_modules) if isinstance(target_modules, list) else [target_modules]
    import bitsandbytes as bnb

    linear = (torch.nn.Linear, bnb.nn.Linear4bit)
    head = model.get_output_embeddings()
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                   if isinstance(m, linear) and m is not head})


def _canonical_adapter_config(path: Path) -> None:
    """peft stores target_modules as a set and writes it in hash-seed order, so the same run
    gave different adapter_config.json bytes (and bundle digests) in different processes."""
    cfg = read_json(path)
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    atomic_write_json(path, cfg)


def load_trainable(base_dir: Path, params: TrainParams, dtype: torch.dtype | None = None,
                   device_map: dict | str | None = "device"):
    """The frozen base as saved (no re-quantization) with fresh LoRA adapters.

    device_map "device" puts it all on device(); None leaves it on the CPU (FSDP moves the shards).

    peft's prepare_model_for_kbit_training is deliberately not used: it casts norms and
    embeddings to fp32, so training would compute in a precision serving never runs. The base
    stays exactly as shipped.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": dtype} if dtype is not None else {}
    if device_map is not None:
        kwargs["device_map"] = {"": device()} if device_map == "device" else device_map
    model = AutoModelForCausalLM.from_pretrained(base_dir, trust_remote_code=False, **kwargs)
    for p in model.parameters():
        p.requires_grad_(False)
    if params.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = LoraConfig(r=params.lora_r, lora_alpha=params.lora_alpha, lora_dropout=params.lora_dropout,
                      target_modules=resolve_targets(model, params.target_modules), bias="none",
                      task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    # Recorded relative to the bundle, so the adapter bytes do not depend on where it was built.
    model.peft_config["default"].base_model_name_or_path = "base_q"
    return model


def _loss(model, batch) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over the assistant tokens only.

    The output head runs only at positions that carry a label: on a discharge note about 80%
    of the positions are prompt, and a 49k-wide head over them is most of the step's
    arithmetic and memory that the loss would then ignore.
    """
    inner = model.get_base_model()
    batch = {k: v.to(inner.device) for k, v in batch.items()}
    hidden = inner.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE_INDEX
    n = int(keep.sum())
    logits = inner.lm_head(hidden[:, :-1][keep]).float()
    loss = torch.nn.functional.cross_entropy(logits, labels[keep], reduction="sum")
    return loss / max(n, 1), n


@torch.no_grad()
def validation_loss(model, examples, batch_size: int, pad_id: int, forward=None) -> float | None:
    """forward(batch) -> (loss, n): the distributed wrapper's where there is one (FSDP must gather)."""
    if not examples:
        return None
    forward = forward or (lambda batch: _loss(model, batch))
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        loss, n = forward(collate(examples[start:start + batch_size], pad_id))
        total += loss.item() * n
        count += n
    model.train()
    return total / max(count, 1)


def _training_base(params: TrainParams, base_q: Path, base_dir: Path, quant: dict):
    """(directory, dtype, digest) of the base the adapter learns on.

    quantized: base_q as saved, pinned by the digest of its files. reference: the 16-bit base
    base_q was quantized from, in the compute dtype evaluation's reference pass uses, pinned by
    the sha256 of its lock (the manifest's base.source_sha256), so a bundle says which one it is.
    """
    if params.base_precision == "quantized":
        return base_q, None, files_digest(quant["files"])
    lock_sha = sha256_file(base_dir / BASE_LOCK)
    if lock_sha != quant["base_lock_sha256"]:
        raise ValueError(f"{base_dir} is not the base {base_q} was quantized from "
                         f"(lock {lock_sha[:16]}..., quantize.json says {quant['base_lock_sha256'][:16]}...)")
    return base_dir, getattr(torch, quant["params"]["compute_dtype"]), lock_sha


def _memory_plan(params: TrainParams, model_dir: Path, quant: dict, examples) -> dict:
    """Log the plan of the largest step; fail here, before the model loads, over budget."""
    setup, p = plan_training(read_json(model_dir / "config.json"), params, quant["params"],
                             [(len(e.input_ids), sum(x != IGNORE_INDEX for x in e.labels)) for e in examples],
                             device())
    log.info("memory plan for the largest batch (%d x %d tokens, %.0f%% labelled), budget %s:\n%s",
             setup.batch_size, setup.seq_len, 100 * setup.labelled_fraction,
             f"{params.memory_budget_gb:g} GiB" if params.memory_budget_gb else "none", format_plan(p))
    check_budget(p, setup, params.memory_budget_gb)
    return {"seq_len": setup.seq_len, "batch_size": setup.batch_size, "labelled_fraction": round(setup.labelled_fraction, 4),
            "planned_gib": round(p.total / 2 ** 30, 3), "budget_gib": params.memory_budget_gb,
            "terms_mib": {k: round(v / 2 ** 20, 1) for k, v in p.terms.items()}}


def train(params: TrainParams, base_q: str | Path, base_dir: str | Path, data_dir: str | Path,
          out_dir: str | Path, checkpoint_dir: str | Path | None = None) -> dict:
    """base_dir is the 16-bit base: the tokenizer comes from it, and the weights too under
    base_precision=reference. With checkpoint_dir, checkpoints are written there every
    params.checkpoint_every_steps and a run of the same configuration resumes from the last
    complete one (pipeline/train/checkpoint.py)."""
    from transformers import AutoTokenizer

    base_q, base_dir, data_dir = Path(base_q), Path(base_dir), Path(data_dir)
    if params.num_threads:
        torch.set_num_threads(params.num_threads)
    random.seed(params.seed)
    torch.manual_seed(params.seed)
    base_lock = check_lock(base_dir)
    quant = read_json(base_q / QUANT_REPORT)
    verify_files(base_q, quant["files"])
    ranks = setup_ranks(quant["params"])  # Ranks() unless a launcher started several processes
    model_dir, model_dtype, base_digest = _training_base(params, base_q, base_dir, quant)
    meta = read_json(data_dir / "meta.json")
    max_len = int(meta["max_seq_len_tokens"])

    tokenizer = AutoTokenizer.from_pretrained(base_dir, trust_remote_code=False)
    stops = stop_token_ids(tokenizer)
    train_records = read_jsonl(data_dir / "train.jsonl")
    system = system_prompt_of(train_records)  # pinned in the bundle; serving applies it to requests
    train_ex = encode_records(tokenizer, train_records, stops, max_len)
    val_ex = encode_records(tokenizer, read_jsonl(data_dir / "val.jsonl"), stops, max_len)
    if not train_ex:
        raise ValueError(f"{data_dir}/train.jsonl is empty: nothing to train on")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    memory = _memory_plan(params, model_dir, quant, train_ex)

    if ranks.fsdp:  # loaded in the storage dtype (= compute dtype, checked) so every flat tensor has one dtype
        model_dtype = getattr(torch, quant["params"]["compute_dtype"])
    model = load_trainable(model_dir, params, model_dtype, device_map=ranks.device_map(device()))
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer, optimizer_name = make_optimizer(params, trainable)
    n_trainable = sum(p.numel() for p in trainable)
    log.info("training %d LoRA parameters on %d examples (%d val), %d steps, optimizer %s, on the %s base",
             n_trainable, len(train_ex), len(val_ex), params.max_steps, optimizer_name, params.base_precision)

    versions, where = library_versions(), hardware()
    ckpts = None
    if checkpoint_dir is not None and params.checkpoint_every_steps and not ranks.fsdp:
        key = run_key({**params.model_dump(mode="json"), **ranks.key_extra()}, base_digest, meta["digest"], versions,
                      where)
        ckpts = Checkpoints(checkpoint_dir, key, params.keep_checkpoints)
    run = _RunState()
    # Rank 0 looks first: latest() removes leftovers of killed writes, which must not race.
    if ckpts is not None and (latest := ranks.main_first(ckpts.latest)) is not None:
        run = _RunState(**Checkpoints.load(latest, model, optimizer))
        log.info("resuming from %s (step %d of %d)", latest, run.step, params.max_steps)
    forward, optimizer = ranks.prepare(model, optimizer, _loss)

    stream = ranks.shard(batches(train_ex, params.batch_size, params.seed))
    for _ in range(run.micro_batches):  # the batches the checkpointed steps consumed (no compute)
        next(stream)
    t0 = time.perf_counter() - run.elapsed_s
    bar = tqdm(range(run.step, params.max_steps), desc="train", unit="step", dynamic_ncols=True,
               initial=run.step, total=params.max_steps, disable=not ranks.is_main)
    for step in bar:
        lr = lr_at(step, params)
        for group in optimizer.param_groups:
            group["lr"] = lr
        step_loss, step_tokens = 0.0, 0
        for _ in range(params.grad_accum_steps):
            batch = collate(next(stream), pad_id)
            run.micro_batches += 1
            loss, _n = forward(batch)
            ranks.backward(loss / params.grad_accum_steps)
            step_loss += loss.item() / params.grad_accum_steps
            step_tokens += int(batch["attention_mask"].sum())
        step_loss, step_tokens = ranks.mean(step_loss), int(ranks.sum(step_tokens))  # over ranks; as is alone
        grad_norm = ranks.clip_grad_norm(trainable, params.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        run.real_tokens += step_tokens
        run.step = step + 1
        elapsed = time.perf_counter() - t0
        run.elapsed_s = elapsed
        run.steps.append({"step": step + 1, "loss": round(step_loss, 6), "lr": lr, "grad_norm": round(grad_norm, 6),
                          "tokens": step_tokens, "elapsed_s": round(elapsed, 3)})
        bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{run.real_tokens / elapsed:.0f}")
        if (step + 1) % params.val_every_steps == 0 or step + 1 == params.max_steps:
            v = validation_loss(model, val_ex, params.batch_size, pad_id, forward)
            run.val.append({"step": step + 1, "val_loss": v})
            log.info("step %d: train loss %.4f, val loss %s", step + 1, step_loss, f"{v:.4f}" if v else "n/a")
            if run.should_stop(v, params.early_stopping_patience):
                log.info("early stop at step %d: no better val loss in %d validations (best %.4f at step %d)",
                         step + 1, params.early_stopping_patience, run.best_val, run.best_step)
                break
        if (ckpts is not None and ranks.is_main and (step + 1) % params.checkpoint_every_steps == 0
                and step + 1 < params.max_steps):
            ckpts.save(step + 1, model, optimizer, run.state())
    bar.close()
    steps, val_curve, real_tokens = run.steps, run.val, run.real_tokens
    train_s = time.perf_counter() - t0

    training_meta = {
        "base_digest": base_digest,
        "base_precision": params.base_precision,
        "curated_data_digest": meta["digest"],
        "params_digest": digest_json(params.model_dump(mode="json")),
        "params": params.model_dump(mode="json"),
        "seed": params.seed,
        "max_seq_len_tokens": max_len,
        **system.meta(),
        "versions": versions,
        "hardware": where,
        "optimizer": optimizer_name,
        **ranks.key_extra(),
    }
    state = ranks.adapter_state()  # FSDP: gathers the shards (every rank takes part), whole on rank 0
    if ranks.is_main:
        with atomic_dir(out_dir) as tmp:
            model.save_pretrained(tmp, safe_serialization=True, **({"state_dict": state} if state else {}))
            _canonical_adapter_config(Path(tmp) / "adapter_config.json")
            atomic_write_json(Path(tmp) / TRAINING_META, training_meta)
        if ckpts is not None:  # the adapter is written: nothing left to resume
            ckpts.clear()
        # The base must come out of training exactly as it went in.
        check_lock(base_dir)
        verify_files(base_q, quant["files"])
    ranks.barrier()
    ranks.close()
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
        "optimizer": optimizer_name,
        "gradient_checkpointing": params.gradient_checkpointing,
        "hardware": training_meta["hardware"],
        "base_lock_files": len(base_lock["files"]),
        "base_precision": params.base_precision,
        **ranks.key_extra(),
    }
