"""Data-parallel training when the stage runs under `accelerate launch` or `torchrun`.

With WORLD_SIZE > 1 in the environment, `train` runs one process per device through
accelerate's Accelerator, which reads the launcher's environment (DDP, or FSDP from
configs/accelerate/fsdp-qlora.yaml). Without it (or WORLD_SIZE=1) nothing here is used and the
single-process loop is exactly the one that makes a resumed run byte-identical to an
uninterrupted one.

The rules the loop follows across ranks:
- The seeded micro-batch stream is the single-process one, dealt round-robin: rank r takes
  micro-batches r, r + W, r + 2W, ... so the ranks see disjoint data and one optimizer step
  consumes W x grad_accum_steps micro-batches (global batch = batch_size x W x grad_accum_steps).
- The forward runs through the wrapped module (DDP or FSDP), so gradients are averaged across
  ranks and FSDP gathers the shards it needs; the loss is the same assistant-token loss.
- Step loss is averaged and token counts summed across ranks for the report.
- Only rank 0 writes checkpoints, the adapter and the report; the others wait at a barrier.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

log = logging.getLogger(__name__)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 (or no launcher at all): the one process that writes outputs."""
    return int(os.environ.get("RANK", "0")) == 0


class _LossModule(torch.nn.Module):
    """Puts the loss computation inside one module so that DDP/FSDP see it as the forward.

    `loss_on_labels` (pipeline/train/loop.py) runs the decoder and then the head at the
    labelled positions only; called on the bare model it would bypass the wrapper (DDP would
    not average those gradients, FSDP would not gather the root's shards).
    """

    def __init__(self, peft_model, loss_fn: Callable) -> None:
        super().__init__()
        self.peft = peft_model
        self.loss_fn = loss_fn

    def forward(self, batch):
        return self.loss_fn(self.peft, batch)


@dataclass
class Ranks:
    """This process's place in the run; Ranks() is the single-process run."""

    rank: int = 0
    world_size: int = 1
    accelerator: object | None = None
    fsdp: bool = False
    wrapped: torch.nn.Module | None = None

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device_map(self, default: str) -> dict | None:
        """Where from_pretrained puts the model: this rank's device for DDP; nowhere (CPU, or meta on
        ranks > 0 with cpu_ram_efficient_loading) under FSDP, which moves the shards itself."""
        if not self.active:
            return {"": default}
        return None if self.fsdp else {"": str(self.accelerator.device)}

    def shard(self, stream: Iterator) -> Iterator:
        """Rank r's micro-batches of the shared seeded stream: r, r + W, r + 2W, ..."""
        if not self.active:
            yield from stream
            return
        for i, item in enumerate(stream):
            if i % self.world_size == self.rank:
                yield item

    def prepare(self, model, optimizer, loss_fn: Callable):
        """(forward(batch) -> (loss, n), optimizer) for this run; single-process: the bare model."""
        if not self.active:
            return (lambda batch: loss_fn(model, batch)), optimizer
        module = _LossModule(model, loss_fn)
        if self.fsdp:
            from peft.utils.other import fsdp_auto_wrap_policy

            # LoRA layers wrapped apart from the frozen blocks: with use_orig_params=false one flat
            # tensor may not mix trainable and frozen parameters.
            self.accelerator.state.fsdp_plugin.auto_wrap_policy = fsdp_auto_wrap_policy(model)
        self.wrapped, optimizer = self.accelerator.prepare(module, optimizer)
        return self.wrapped, optimizer

    def backward(self, loss: torch.Tensor) -> None:
        if self.active:
            self.accelerator.backward(loss)
        else:
            loss.backward()

    def clip_grad_norm(self, trainable, max_norm: float) -> float:
        if not self.active:
            return float(torch.nn.utils.clip_grad_norm_(trainable, max_norm))
        # FSDP's norm must be computed over the shards by the wrapper, which accelerate only does
        # when handed exactly the wrapped module's parameters.
        params = list(self.wrapped.parameters()) if self.fsdp else trainable
        return float(self.accelerator.clip_grad_norm_(params, max_norm))

    def sum(self, value: float) -> float:
        if not self.active:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.accelerator.device)
        torch.distributed.all_reduce(t)
        return float(t.item())

    def mean(self, value: float) -> float:
        return self.sum(value) / self.world_size if self.active else value

    def barrier(self) -> None:
        if self.active:
            self.accelerator.wait_for_everyone()

    def main_first(self, fn: Callable):
        """fn() on rank 0, then on the others (rank 0 may clean up what they would read)."""
        if self.active and not self.is_main:
            self.barrier()
        out = fn()
        if self.active and self.is_main:
            self.barrier()
        return out

    def adapter_state(self) -> dict | None:
        """The full LoRA state dict on rank 0 under FSDP (a collective: every rank calls it);
        None elsewhere, where the peft model's own parameters are whole."""
        if not self.fsdp:
            return None
        full = self.accelerator.get_state_dict(self.wrapped)
        return {k[len("peft."):]: v for k, v in full.items() if k.startswith("peft.")} if self.is_main else None

    def key_extra(self) -> dict:
        """What the checkpoint key must add: another world size is another trajectory."""
        return {"world_size": self.world_size, "fsdp": self.fsdp} if self.active else {}

    def close(self) -> None:
        if self.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def setup(quant_params: dict) -> Ranks:
    """Ranks() without a launcher; otherwise start the process group through accelerate.

    quant_params are the params the base was actually quantized with (quantize.json): FSDP is
    refused here too when they cannot shard, whatever the accelerate config says.
    """
    if world_size() <= 1:
        return Ranks()
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    # Without cpu=True accelerate sees no GPU and falls back to one process even under torchrun.
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    if fsdp:
        from pipeline.train.launch import check_fsdp

        check_fsdp(quant_params)
        log.warning("FSDP: no resumable checkpoints are written (the sharded optimizer state is not saved); "
                    "a killed run starts over")
    if accelerator.device.type == "cuda":
        torch.cuda.set_device(accelerator.device)
    log.info("rank %d of %d on %s (%s)", accelerator.process_index, accelerator.num_processes, accelerator.device,
             accelerator.distributed_type.value)
    return Ranks(rank=accelerator.process_index, world_size=accelerator.num_processes, accelerator=accelerator,
                 fsdp=fsdp)
