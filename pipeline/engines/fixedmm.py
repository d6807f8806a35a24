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

The kernel is a C++ extension compiled against the installed torch at install time
(`make install`; setup.py). Without it, or with TAILGATE_DECODE_KERNEL=blas, the engine falls
back to the BLAS blocks; the platform record's `decode_matmul` says which ran, so a release
evaluated with one is never taken for the other.
"""

from __future__ import annotations

import functools
import logging
import os

import torch

log = logging.getLogger(__name__)

HOW = "fixed"
ENV_KERNEL = "TAILGATE_DECODE_KERNEL"  # "fixed" (the default) or "blas"
ENV_PORTABLE = "TAILGATE_FIXEDMM_PORTABLE"  # "1": the path without AVX2 (the same bits, slower)


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


def _portable() -> bool:
    return os.environ.get(ENV_PORTABLE, "") == "1"


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           portable: bool | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` for x (..., in): each output summed in the fixed order, then
    the bias added."""
    ext = _extension()
    if ext is None:
        raise RuntimeError("the fixed-order matmul is not built; `make install` builds it")
    flat = x.reshape(-1, x.shape[-1])
    out = ext.fixed_linear(flat, weight, _portable() if portable is None else portable)
    if bias is not None:
        out = out + bias
    return out.reshape(*x.shape[:-1], weight.shape[0])
