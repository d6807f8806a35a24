"""A decode block's matmul whose rows do not depend on their place in the block, on any BLAS.

The rowwise engine runs every decode matmul on blocks of exactly DECODE_WIDTH rows, so that a
row's arithmetic is the same whatever the load. That holds only if a BLAS computes each row of
a block the same way wherever the row sits in it, and not every BLAS does: MKL's AVX2 float32
kernels (an Intel CPU without AVX-512, or MKL_ENABLE_INSTRUCTIONS=AVX2) tile the rows of
`F.linear`'s problem six at a time, so in a block of 8 the last two rows take the remainder
kernel and come out other in their last bits (3.8e-5 in the default bundle's logits): a request
served in slot 6 or 7 would drift from the one evaluated in slot 0. On AVX-512 the same call is
row-invariant.

So each matmul shape is probed once per process (`orientation`): the first of these that gives
a probe row the same bits in every slot of a block, with random rows and with zero rows beside
it, is the one used for that shape everywhere the engine computes it (evaluation and serving
alike):

- "fixed": the fixed-order kernel (pipeline/engines/fixedmm.py), row-invariant by construction
  and for any number of rows, where it applies (float32 on the CPU, built, not turned off); the
  probe still checks it;
- "linear": `F.linear` on the block, as peft and bitsandbytes call it;
- "transposed": the same product asked of the BLAS the other way round (weight @ blockᵀ), which
  puts the block's rows in the vector lanes of the micro-kernel, where every lane runs the same
  instructions (row-invariant on both MKL paths measured here, and the faster one on AVX2);
- "rows": one row at a time, row-invariant by construction.

The choice is part of the arithmetic, so of the platform (`decode_matmul` in the platform
record). Kernel selection depends on shapes and strides, not on values, which is why a probe
with random rows speaks for every row; tests/unit/test_blockmm.py runs the probe and the
engine under the AVX2 dispatch in a subprocess, where "linear" fails it.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from pipeline.engines import fixedmm

HOWS = (fixedmm.HOW, "linear", "transposed", "rows")
TRIALS = 3  # random companions twice, zero (padding) companions once


def block_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, how: str) -> torch.Tensor:
    """`F.linear(x, weight, bias)` for a block of rows x (..., in), computed `how`."""
    if how == "linear":
        return F.linear(x, weight, bias)
    if how == fixedmm.HOW:
        return fixedmm.linear(x, weight, bias)
    flat = x.reshape(-1, x.shape[-1])
    if how == "rows":  # each row a fresh tensor, so no row sits at another alignment than another
        out = torch.cat([F.linear(r.clone(), weight, bias) for r in flat.split(1)])
    elif how == "transposed":
        t = torch.mm(weight, flat.t()) if bias is None else torch.addmm(bias.unsqueeze(1), weight, flat.t())
        out = t.t().contiguous()
    else:
        raise ValueError(f"unknown orientation {how!r}")
    return out.reshape(*x.shape[:-1], weight.shape[0])


def _row_invariant(how: str, n_in: int, n_out: int, dtype: torch.dtype, bias: bool, width: int,
                   device: str) -> bool:
    gen = torch.Generator().manual_seed(n_in * 7919 + n_out)
    rand = lambda *shape: torch.randn(*shape, generator=gen).to(dtype=dtype, device=device)  # noqa: E731
    weight, b = rand(n_out, n_in), (rand(n_out) if bias else None)
    probe = rand(n_in)
    with torch.inference_mode():
        first = None
        for trial in range(TRIALS):
            for slot in range(width):
                block = rand(width, n_in) if trial < TRIALS - 1 else torch.zeros(width, n_in, dtype=dtype,
                                                                                 device=device)
                block[slot] = probe
                row = block_linear(block, weight, b, how)[slot]
                if first is None:
                    first = row
                elif not torch.equal(row, first):
                    return False
    return True


def orientation(n_in: int, n_out: int, dtype: torch.dtype, bias: bool, width: int, device: str = "cpu",
                fixed: bool | None = None) -> str:
    """How a block of `width` rows is multiplied by an (n_out, n_in) weight in this process: the
    first of HOWS that applies and whose rows are the same bits in every slot ("rows" always is).
    `fixed` says whether the fixed-order kernel may be chosen (default: where it applies)."""
    if fixed is None:
        fixed = fixedmm.applies(dtype, device)
    return _orientation(n_in, n_out, dtype, bias, width, device, fixed)


@functools.lru_cache(maxsize=None)
def _orientation(n_in: int, n_out: int, dtype: torch.dtype, bias: bool, width: int, device: str,
                 fixed: bool) -> str:
    for how in HOWS[:-1]:
        if how == fixedmm.HOW and not fixed:
            continue
        if _row_invariant(how, n_in, n_out, dtype, bias, width, device):
            return how
    return "rows"


def key_of(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple:
    return int(weight.shape[1]), int(weight.shape[0]), weight.dtype, bias is not None


def summary(plan: dict[tuple, str]) -> str:
    """The platform record's `decode_matmul`: "linear" when every shape multiplies as peft
    does, "fixed" when every shape runs the fixed-order kernel, else each shape not multiplied
    as peft does and how, sorted (so the same plan reads the same, as it did before the kernel:
    a release recorded then keeps its platform id)."""
    if plan and set(plan.values()) == {fixedmm.HOW}:
        return fixedmm.HOW
    other = sorted(f"{i}x{o} {str(d).removeprefix('torch.')}{' +bias' if b else ''}: {how}"
                   for (i, o, d, b), how in plan.items() if how != "linear")
    return "; ".join(other) if other else "linear"
