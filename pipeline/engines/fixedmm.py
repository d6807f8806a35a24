"""A float32 matmul whose every output is summed in one fixed order: the decode blocks' product.

Why: a batch-invariant engine must give a row the same bits whether it decodes alone or among
31 others. A BLAS picks its kernel by the number of rows (and MKL by the CPU), so the engine
used to multiply decode rows in blocks of widths probed per shape and per machine
(pipeline/engines/widths.py): a lone row paid for three or seven padding rows, and the widths
were the host's (2-15 rows on the Intel host, 4, 8 and 12-16 on the AMD EPYC). This product
needs neither. Each output is eight lanes of fused multiply-adds over k (lane k % 8), the lanes
summed pairwise in a fixed tree, then the tail (fixedmm.cpp spells the order out), so:

- a row's bits do not depend on how many rows are multiplied with it or where it sits: any
  number of live rows is one block, with no padding rows;
- they do not depend on the thread count (threads split the outputs, never a sum);
- they do not depend on the CPU: the AVX2 + FMA path and the portable path (`std::fma` one lane
  at a time, for a CPU without AVX2 or with TAILGATE_FIXEDMM_PORTABLE=1) give the same bits,
  since every step is one IEEE fused multiply-add or add (tests/unit/test_fixedmm.py).

It is also the faster product for the decode shapes: one row of the default model's step
multiplies in about a quarter of MKL's time (benchmarks/results/fixed_matmul.json). Prefill and
training keep torch's matmul: a prompt's positions are one row's work, whatever else runs.

A 4-bit base's weights are multiplied from their codes (`attach_4bit`, fixedmm4.cpp): the
kernel dequantizes each weight in registers, code value times block scale, one float32 multiply
as bitsandbytes' dequantize computes it, and sums in the same order. So a decode step reads the
4-bit codes, an eighth of the dequantized copy's bytes, and computes the same bits; a layer is
attached only after its weights, dequantized by the path that will run, were compared with
bitsandbytes' bit for bit. The platform id does not change with it: the arithmetic does not.

The kernel is a C++ extension compiled against the installed torch at install time
(`make install`; setup.py). Without it, or with TAILGATE_DECODE_KERNEL=blas, the engine falls
back to the BLAS blocks; the platform record's `decode_matmul` says which ran, so a release
evaluated with one is never taken for the other.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import NamedTuple

import torch

log = logging.getLogger(__name__)

HOW = "fixed"
ENV_KERNEL = "TAILGATE_DECODE_KERNEL"  # "fixed" (the default) or "blas"
ENV_PORTABLE = "TAILGATE_FIXEDMM_PORTABLE"  # "1": the path without AVX2 (the same bits, slower)


class FourBit(NamedTuple):
    """A weight kept as bitsandbytes' 4-bit storage: what fixedmm4.cpp multiplies by."""

    q: torch.Tensor  # uint8, two indices a byte, the high nibble first
    absmax: torch.Tensor  # float32, one scale a block (a nested absmax already restored)
    code: torch.Tensor  # float32, the 16 values an index stands for
    n: int  # outputs
    blocksize: int


# the attribute of a dequantized weight the engine keeps that holds its codes (`attach_4bit`);
# an attribute rather than a dictionary keyed by the tensor, since it is read at every product
_ATTR = "tailgate_four_bit"


@functools.lru_cache(maxsize=1)
def _extension():
    try:
        from pipeline.engines import _fixedmm
    except ImportError as e:
        log.warning("the fixed-order decode matmul is not built (%s): decode blocks use the BLAS, a different "
                    "arithmetic; `make install` builds it", e)
        return None
    return _fixedmm


def available() -> bool:
    """Whether the compiled kernel is importable here."""
    return _extension() is not None


def enabled() -> bool:
    """Whether decode blocks use it in this process (built, and not turned off)."""
    choice = os.environ.get(ENV_KERNEL, HOW).strip().lower()
    if choice not in (HOW, "blas"):
        raise ValueError(f"{ENV_KERNEL}={choice!r}: expected {HOW!r} or 'blas'")
    return choice == HOW and available()


def applies(dtype: torch.dtype, device: str) -> bool:
    """Whether a decode block of this dtype on this device is multiplied by the kernel."""
    return dtype == torch.float32 and device == "cpu" and enabled()


def path() -> str:
    """'avx2-fma' or 'portable': which implementation runs (the same bits either way)."""
    ext = _extension()
    if ext is None:
        raise RuntimeError("the fixed-order matmul is not built; `make install` builds it")
    return "portable" if _portable() or not ext.has_avx2_fma() else "avx2-fma"


@functools.lru_cache(maxsize=1)
def _portable() -> bool:
    # read once per process (every product asks); tests set it for a subprocess
    return os.environ.get(ENV_PORTABLE, "") == "1"


def _limit(portable: bool) -> int:
    return 0 if portable else 2  # fixedmm4.cpp's paths: the best this CPU has, or the portable one


def attach_4bit(weight: torch.Tensor, four: FourBit) -> bool:
    """Multiply `weight` (a float32 (out, in) CPU matrix bitsandbytes dequantized from `four`)
    from the 4-bit codes from now on, if the path this process runs dequantizes them to exactly
    its bits; returns whether it does (else the weight is multiplied as it is, with a warning)."""
    ext = _extension()
    if ext is None or weight.dtype != torch.float32 or weight.device.type != "cpu" or weight.dim() != 2:
        return False
    n, k = weight.shape
    if n != four.n:
        raise ValueError(f"attach_4bit: a weight of {n} outputs with codes of {four.n}")
    mine = ext.dequantize_4bit(four.q, four.absmax, four.code, n, k, four.blocksize, _limit(_portable()))
    if not torch.equal(mine.view(torch.int32), weight.contiguous().view(torch.int32)):
        log.warning("a %dx%d 4-bit weight: the kernel's dequantization is not bitsandbytes' bit for bit; it is "
                    "multiplied from its dequantized copy", n, k)
        return False
    setattr(weight, _ATTR, four)
    return True


def attached(weight: torch.Tensor) -> bool:
    """Whether `linear` multiplies this weight from its 4-bit codes."""
    return getattr(weight, _ATTR, None) is not None


def detach_4bit(weight: torch.Tensor) -> None:
    """Multiply `weight` as it is again (benchmarks compare the two)."""
    if hasattr(weight, _ATTR):
        delattr(weight, _ATTR)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           portable: bool | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` for x (..., in): each output summed in the fixed order, then
    the bias added; from the 4-bit codes where the weight has them attached (the same bits)."""
    ext = _extension()
    if ext is None:
        raise RuntimeError("the fixed-order matmul is not built; `make install` builds it")
    portable = _portable() if portable is None else portable
    flat = x.reshape(-1, x.shape[-1])
    four = getattr(weight, _ATTR, None)
    if four is not None:
        out = ext.fixed_linear_4bit(flat, four.q, four.absmax, four.code, four.n, four.blocksize, _limit(portable))
    else:
        out = ext.fixed_linear(flat, weight, portable)
    if bias is not None:
        out = out + bias
    return out.reshape(*x.shape[:-1], weight.shape[0])


def lora(x: torch.Tensor, weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float,
         portable: bool | None = None) -> torch.Tensor:
    """A LoRA layer without biases in one call, float32: `linear(x, weight) + linear(linear(x, a),
    b) * scaling`, each product as `linear` computes it and the scaling and the add as torch's
    float32 ops round them (pipeline/engines/lora_fused.py checks the layer against peft)."""
    ext = _extension()
    if ext is None:
        raise RuntimeError("the fixed-order matmul is not built; `make install` builds it")
    limit = _limit(_portable() if portable is None else portable)
    flat = x.reshape(-1, x.shape[-1])
    four = getattr(weight, _ATTR, None)
    if four is not None:
        out = ext.fixed_lora(flat, None, four.q, four.absmax, four.code, four.n, four.blocksize, a, b, scaling, limit)
    else:
        out = ext.fixed_lora(flat, weight, None, None, None, 0, 0, a, b, scaling, limit)
    return out.reshape(*x.shape[:-1], weight.shape[0])
