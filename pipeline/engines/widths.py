"""Decode blocks of other widths than DECODE_WIDTH where they compute a row to the same bits.

The rowwise engine's arithmetic is a row multiplied in a block of DECODE_WIDTH rows (8), each
shape the way pipeline/engines/blockmm.py found row-invariant. A BLAS picks its kernel by the
number of rows, so a block of another width may compute a row otherwise, but often it does
not: on this project's AVX-512 host MKL computes a row of the default model's 576x1536 product
the same in every block of 2 to 15 rows, and of its 576x576 one in every block of 4 to 64.
Where a width gives the same bits, using it changes nothing a release promises and saves
memory traffic: a lone request need not multiply seven padding rows through every weight (two
rows read the MLP and head weights nearly as fast as one), and 32 rows can run as three blocks
instead of four, so each weight is read fewer times per step.

`widths` probes, once per process and shape, which widths of CANDIDATES give a probe row the
bits it gets in a block of DECODE_WIDTH, in every slot, beside random rows and beside zero
rows (kernel choice depends on shapes and strides, not on values); DECODE_WIDTH itself always
qualifies. `cover` then splits a pass's live rows into the fewest blocks of those widths, each
shape on its own, so a row's arithmetic is the evaluated one whatever the load
(tests/unit/test_widths.py checks the allowed widths of the default model's shapes on other data;
tests/unit/test_blockmm.py decodes a row alone and among 3, 8, 13 and 20 rows under this host's
dispatch and the AVX2 one, bit for bit). The probe multiplies dense weights,
as the CPU engine does (its 4-bit weights dequantized once); on a GPU bitsandbytes' own 4-bit
kernel chooses its method by the number of rows, so the engine keeps DECODE_WIDTH alone there.
"""

from __future__ import annotations

import functools

import torch

from pipeline.engines.blockmm import block_linear

# Widths a block may take. Up to 16 covers serving's 8 and evaluation's 32 rows in few blocks;
# every candidate costs a probe at start-up (about a second for the default model's head).
CANDIDATES = tuple(range(1, 17))


@functools.lru_cache(maxsize=None)
def widths(n_in: int, n_out: int, dtype: torch.dtype, bias: bool, how: str, reference: int,
           device: str = "cpu") -> tuple[int, ...]:
    """The widths of CANDIDATES (and `reference`) whose blocks, multiplied `how`, give a row the
    bits a block of `reference` rows gives it, in every slot."""
    gen = torch.Generator().manual_seed(n_in * 7919 + n_out * 31 + reference)
    rand = lambda *shape: torch.randn(*shape, generator=gen).to(dtype=dtype, device=device)  # noqa: E731
    weight, b = rand(n_out, n_in), (rand(n_out) if bias else None)
    probe = rand(n_in)

    def row(width: int, slot: int, zeros: bool) -> torch.Tensor:
        block = torch.zeros(width, n_in, dtype=dtype, device=device) if zeros else rand(width, n_in)
        block[slot] = probe
        return block_linear(block, weight, b, how)[slot]

    ok = {reference}
    with torch.inference_mode():
        want = row(reference, 0, False)
        for width in CANDIDATES:
            if width != reference and all(torch.equal(row(width, slot, False), want) for slot in range(width)) \
                    and all(torch.equal(row(width, slot, True), want) for slot in {0, width - 1}):
                ok.add(width)
    return tuple(sorted(ok))


@functools.lru_cache(maxsize=None)
def cover(rows: int, allowed: tuple[int, ...]) -> tuple[int, ...]:
    """Block widths from `allowed` for a pass of `rows` live rows: the fewest rows at or above
    `rows` that the widths sum to exactly, in the fewest blocks, widest first."""
    top = max(allowed)
    # best[r]: the fewest blocks summing to exactly r (None where no sum of allowed widths does)
    best: list[tuple[int, ...] | None] = [()] + [None] * (rows + top)
    for r in range(1, rows + top + 1):
        for w in sorted(allowed, reverse=True):
            prev = best[r - w] if r >= w else None
            if prev is not None and (best[r] is None or len(prev) + 1 < len(best[r])):
                best[r] = (w,) + prev
        if r >= rows and best[r] is not None:
            return tuple(sorted(best[r], reverse=True))
    raise ValueError(f"no blocks of widths {allowed} cover {rows} rows")  # unreachable: reference is allowed
