"""One call per LoRA linear in an inference pass: peft's arithmetic without its Python.

A decode step of the default model runs 210 LoRA-wrapped linears. For each of them peft's
forward, bitsandbytes' forward and five module calls (base, dropout, A, B, and the row-block
wrapper of each matmul) run Python around three small matmuls: measured on the default bundle
that Python was about a tenth of an eight-row decode step (benchmarks/results/decode_step.json).

`fuse` gives each LoRA layer of an inference model a forward that runs the same torch ops on
the same tensors in peft's order and dtypes: the base's linear (a 4-bit base multiplies by the
weight pipeline/engines/dequant.py keeps, as its kept forward does; a 16-bit base by its
weight), then `lora_B(lora_A(x)) * scaling` cast and added as peft adds it. In a decode pass
each of its three products runs in the row blocks the blocked matmul modules use for that
shape, multiplied as they multiply it on this machine (pipeline/engines/blockmm.py and
widths.py: peft's `F.linear` wherever that is row-invariant). So the numbers are those of
peft's forward under the row blocks, bit for bit (tests/unit/test_lora_fused.py compares every
layer and whole decode passes).

Anything else runs peft's own forward: training or autograd, autocast, an adapter switched off
or merged, several adapters, a variant (DoRA, aLoRA), active dropout, extra arguments, or a
4-bit layer whose weight is not kept (first call, or over the memory budget). And each layer
checks itself once: its first fused call also runs peft's forward (under the row blocks, in a
decode pass) and keeps the fused one only if the two agree bit for bit, so a peft or
bitsandbytes release that computes a LoRA layer another way leaves that layer on peft's
forward (with a warning) instead of changing numbers.
"""

from __future__ import annotations

import logging
from typing import Callable, Protocol

import torch
import torch.nn.functional as F

from pipeline.engines import fixedmm
from pipeline.engines.blockmm import key_of

log = logging.getLogger(__name__)

Linear = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


class Blocks(Protocol):
    """A decode pass's row blocks and how each block is multiplied (rowwise._RowBlocks)."""

    live: int | None  # the pass's live rows (None: every row)

    def decoding(self, x: torch.Tensor) -> bool: ...
    def multiply(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor: ...
    def how(self, n_in: int, n_out: int, dtype: torch.dtype, bias: bool) -> str: ...


def _kind(module) -> str | None:
    """'4bit' or 'linear' for a LoRA layer this module can run, else None."""
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:
        return None
    if type(module) is LoraLinear and type(module.base_layer) is torch.nn.Linear:
        return "linear"
    try:
        import bitsandbytes as bnb
        from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit
    except ImportError:
        return None
    if type(module) is LoraLinear4bit and isinstance(module.base_layer, bnb.nn.Linear4bit):
        return "4bit"
    return None


def _plain_dropout(dropout) -> bool:
    return isinstance(dropout, torch.nn.Identity) or (isinstance(dropout, torch.nn.Dropout) and not dropout.training)


def _fused_forward(module, kind: str, blocks: Blocks | None):
    (name,) = module.lora_A.keys()
    base, lora_A, lora_B = module.base_layer, module.lora_A[name], module.lora_B[name]
    dropout, scaling = module.lora_dropout[name], module.scaling[name]

    def lora(x: torch.Tensor, linear: Linear) -> torch.Tensor:
        # peft's _cast_input_dtype, then lora_B(lora_A(dropout(x))) * scaling with dropout off
        if getattr(module, "cast_input_dtype_enabled", True) and x.dtype != lora_A.weight.dtype:
            x = x.to(lora_A.weight.dtype)
        return linear(linear(x, lora_A.weight, lora_A.bias), lora_B.weight, lora_B.bias) * scaling

    def one_4bit(x: torch.Tensor, linear: Linear, weight: torch.Tensor) -> torch.Tensor:
        # dequant._cached_forward's base (x in the compute dtype, linear, back to x's dtype),
        # then peft's bnb LoRA: the update cast to the result's dtype before it is added
        result = linear(x.to(base.compute_dtype), weight, base.bias).to(x.dtype)
        return result + lora(x, linear).to(result.dtype)

    def one_linear(x: torch.Tensor, linear: Linear) -> torch.Tensor:
        # peft's dense LoRA: added in the promoted dtype, cast back to the base's result dtype
        result = linear(x, base.weight, base.bias)
        return (result + lora(x, linear)).to(result.dtype)

    # "one_call": None until the first one-call pass was compared with peft's forward in the same
    # decode pass (then whether it agreed)
    state = {"checked": False, "agrees": True, "one_call": None}
    # the layer as one fixed-order call (fixedmm.lora) in a decode pass, where every operand is
    # float32 without a bias and the plan multiplies all three shapes by the fixed-order kernel
    plain = (lora_A.bias is None and lora_B.bias is None and base.bias is None
             and lora_A.weight.dtype == lora_B.weight.dtype == torch.float32
             and (kind == "4bit" and base.compute_dtype == torch.float32
                  or kind == "linear" and base.weight.dtype == torch.float32))
    shapes = [key_of(lora_A.weight, None), key_of(lora_B.weight, None),
              (base.in_features, base.out_features, torch.float32, False)]

    def one_call(x: torch.Tensor) -> bool:
        if not (plain and state["one_call"] is not False and x.dtype == torch.float32 and blocks is not None
                and blocks.decoding(x) and blocks.live in (None, x.shape[0])):
            return False
        if "fixed" not in state:  # a shape's plan is probed once a process, so asked once
            state["fixed"] = all(blocks.how(*k) == fixedmm.HOW for k in shapes)
        return state["fixed"]

    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if (not state["agrees"] or args or kwargs or module.training or torch.is_grad_enabled()
                or torch.is_autocast_enabled() or module.disable_adapters or module.merged
                or module.active_adapters != [name] or name in getattr(module, "lora_variant", ())
                or not _plain_dropout(dropout)):
            return forward.tailgate_fused_lora(x, *args, **kwargs)
        if kind == "4bit":
            weight = None
            if base.compute_type_is_set and base.compute_dtype is not None and not base.training:
                weight = getattr(base, "tailgate_kept", {}).get(base.compute_dtype)
            if weight is None or (base.bias is not None and base.bias.dtype != base.compute_dtype):
                # bitsandbytes' path sets the compute type and keeps the weight
                return forward.tailgate_fused_lora(x)
            one = lambda b, linear: one_4bit(b, linear, weight)  # noqa: E731
        else:
            weight, one = None, one_linear
        if one_call(x):
            out = fixedmm.lora(x, base.weight if weight is None else weight, lora_A.weight, lora_B.weight, scaling)
            if state["one_call"] is None:  # checked once, in a decode pass, against peft's forward
                theirs = forward.tailgate_fused_lora(x)
                state["one_call"] = out.dtype == theirs.dtype and torch.equal(out, theirs)
                if not state["one_call"]:
                    log.warning("LoRA layer %s: the one-call decode product does not reproduce peft's numbers; "
                                "the layer multiplies block by block", type(module).__name__)
                    return theirs
        else:
            # in a decode pass each product runs block by block, each shape in its own blocks;
            # the casts, the scaling and the add are per element, so they run on the whole pass
            out = one(x, blocks.multiply if blocks is not None and blocks.decoding(x) else F.linear)
        # peft's forward under the row blocks multiplies each block as the plan says too
        # (rowwise._RowBlocks), so the two agree bit for bit in every pass
        if not state["checked"]:
            theirs = forward.tailgate_fused_lora(x)
            state["checked"], state["agrees"] = True, out.dtype == theirs.dtype and torch.equal(out, theirs)
            if not state["agrees"]:
                log.warning("LoRA layer %s: the one-call forward does not reproduce peft's numbers with this "
                            "peft/bitsandbytes; the layer keeps peft's forward", type(module).__name__)
                return theirs
        return out

    forward.tailgate_fused_lora = module.forward  # peft's: the fallback, and what unfuse restores
    return forward


def fuse(model, blocks: Blocks | None = None) -> int:
    """Give every LoRA layer of model (an inference model: see the module's docstring) the
    one-call forward; `blocks` (rowwise._RowBlocks) splits a decode pass into row blocks and
    multiplies each. Returns how many layers were fused; idempotent."""
    n = 0
    for module in model.modules():
        kind = _kind(module)
        if kind is None or len(module.lora_A) != 1 or getattr(module.forward, "tailgate_fused_lora", None):
            continue
        module.forward = _fused_forward(module, kind, blocks)
        n += 1
    return n


def unfuse(model) -> int:
    """Put peft's forward back on every fused layer (benchmarks compare the two)."""
    n = 0
    for module in model.modules():
        original = getattr(module.forward, "tailgate_fused_lora", None)
        if original is not None:
            module.forward = original
            n += 1
    return n
