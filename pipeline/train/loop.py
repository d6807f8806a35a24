"""The training loop: the loss, the learning-rate schedule, validation, and the optimizer steps
with their checkpoints and early stopping.

Everything here runs the same in one process and under a launcher: `forward` and `ranks`
(pipeline/train/distributed.py) carry the difference.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field

import torch
from tqdm import tqdm

from pipeline.chat import IGNORE_INDEX
from pipeline.params import TrainParams
from pipeline.train.checkpoint import Checkpoints
from pipeline.train.data import TrainingData, batches, collate
from pipeline.train.guard import check_differentiable

log = logging.getLogger(__name__)


@dataclass
class RunState:
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


def lr_at(step: int, params: TrainParams) -> float:
    """Linear warm-up then cosine decay to 10% of the peak."""
    if step < params.warmup_steps:
        return params.learning_rate * (step + 1) / params.warmup_steps
    progress = (step - params.warmup_steps) / max(1, params.max_steps - params.warmup_steps)
    return params.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def loss_on_labels(model, batch) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over the assistant tokens only, and how many there were.

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
    forward = forward or (lambda batch: loss_on_labels(model, batch))
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        loss, n = forward(collate(examples[start:start + batch_size], pad_id))
        total += loss.item() * n
        count += n
    model.train()
    check_differentiable(model, "go on training after validation")
    return total / max(count, 1)


def resume(ckpts: Checkpoints | None, ranks, model, optimizer, max_steps: int) -> RunState:
    """The state of the last complete checkpoint, loaded into model and optimizer; a fresh
    RunState without one."""
    # Rank 0 looks first: latest() removes leftovers of killed writes, which must not race.
    if ckpts is not None and (latest := ranks.main_first(ckpts.latest)) is not None:
        run = RunState(**Checkpoints.load(latest, model, optimizer))
        check_differentiable(model, f"resume from {latest}")
        log.info("resuming from %s (step %d of %d)", latest, run.step, max_steps)
        return run
    return RunState()


def fit(params: TrainParams, model, optimizer, forward, trainable, ranks, data: TrainingData, run: RunState,
        ckpts: Checkpoints | None) -> float:
    """Take the optimizer steps from run.step to params.max_steps (or to an early stop),
    validating every val_every_steps and at the end, checkpointing every
    checkpoint_every_steps; run is updated in place. Returns the seconds the run took,
    checkpointed steps included."""
    stream = ranks.shard(batches(data.train, params.batch_size, params.seed))
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
            batch = collate(next(stream), data.pad_id)
            run.micro_batches += 1
            loss, _n = forward(batch)
            ranks.backward(loss / params.grad_accum_steps)
            step_loss += loss.item() / params.grad_accum_steps
            step_tokens += int(batch["attention_mask"].sum())
        step_loss, step_tokens = ranks.mean(step_loss), int(ranks.sum(step_tokens))  # over ranks; as is alone
        grad_norm = ranks.clip_grad_norm(trainable, params.max_grad_norm)
        # the gradients were computed already; a packed layer means they are wrong, so no step
        check_differentiable(model, f"take optimizer step {step + 1}")
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
            v = validation_loss(model, data.val, params.batch_size, data.pad_id, forward)
            run.val.append({"step": step + 1, "val_loss": v})
            log.info("step %d: train loss %.4f, val loss %s", step + 1, step_loss, f"{v:.4f}" if v else "n/a")
            if run.should_stop(v, params.early_stopping_patience):
                log.info("early stop at step %d: no better val loss in %d validations (best %.4f at step %d)",
                         step + 1, params.early_stopping_patience, run.best_val, run.best_step)
                break
        if (ckpts is not None and ranks.is_main and (step + 1) % params.checkpoint_every_steps == 0
                and step + 1 < params.max_steps):
            check_differentiable(model, f"checkpoint step {step + 1}")
            ckpts.save(step + 1, model, optimizer, run.state())
    bar.close()
    return time.perf_counter() - t0
