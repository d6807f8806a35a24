"""Decode blocks of other widths (pipeline/engines/widths.py): a width the probe allows computes
a row to the bits a block of DECODE_WIDTH does, in every slot, and `cover` splits a pass into
the fewest such blocks. The engine-level checks (a row alone and among 3, 8, 13, 20 rows, on
both host classes) are in tests/unit/test_blockmm.py and test_batch_invariance.py."""

from __future__ import annotations

import pytest
import torch

from pipeline.engines.blockmm import block_linear, orientation
from pipeline.engines.rowwise import DECODE_WIDTH
from pipeline.engines.widths import CANDIDATES, cover, widths

SETS = [(8,), tuple(range(2, 16)), tuple(range(4, 17)), (4, 5, 8, 9, 12, 13), (3, 8)]


def _splittable(total: int, allowed: tuple[int, ...]) -> int | None:
    """Fewest blocks of allowed widths summing to exactly total (None if none), by brute force."""
    frontier, seen, depth = {0}, {0}, 0
    while frontier:
        if total in frontier:
            return depth
        frontier = {s + w for s in frontier for w in allowed if s + w <= total} - seen
        seen |= frontier
        depth += 1
    return None


@pytest.mark.parametrize("allowed", SETS)
def test_cover_takes_the_fewest_rows_then_the_fewest_blocks(allowed):
    for rows in range(1, 41):
        sizes = cover(rows, allowed)
        total = sum(sizes)
        assert all(w in allowed for w in sizes) and total >= rows
        assert list(sizes) == sorted(sizes, reverse=True)
        assert all(_splittable(t, allowed) is None for t in range(rows, total)), (rows, sizes)
        assert len(sizes) == _splittable(total, allowed)
    if allowed == (8,):
        assert cover(1, allowed) == (8,) and cover(9, allowed) == (8, 8)  # the engine before widths


@pytest.mark.parametrize("shape", [(576, 1536), (1536, 576), (1536, 16), (16, 576)])
def test_every_width_the_probe_allows_computes_a_row_as_the_decode_width_does(shape):
    """Checked on other data than the probe's: each allowed width gives a row the bits it gets in
    a block of DECODE_WIDTH, in every slot; each refused one differs somewhere."""
    n_in, n_out = shape
    how = orientation(n_in, n_out, torch.float32, False, DECODE_WIDTH)
    allowed = widths(n_in, n_out, torch.float32, False, how, DECODE_WIDTH)
    assert DECODE_WIDTH in allowed and set(allowed) <= set(CANDIDATES) | {DECODE_WIDTH}
    gen = torch.Generator().manual_seed(99)
    weight, probe = torch.randn(n_out, n_in, generator=gen), torch.randn(n_in, generator=gen)

    def row(width: int, slot: int, zeros: bool = False) -> torch.Tensor:
        block = torch.zeros(width, n_in) if zeros else torch.randn(width, n_in, generator=gen)
        block[slot] = probe
        return block_linear(block, weight, None, how)[slot]

    with torch.inference_mode():
        want = row(DECODE_WIDTH, 0)
        for width in CANDIDATES:
            same = [torch.equal(row(width, slot), want) for slot in range(width)]
            same += [torch.equal(row(width, slot, zeros=True), want) for slot in {0, width - 1}]
            assert all(same) if width in allowed else not all(same), (width, same)


def test_blocks_past_the_end_of_a_pass_are_padded_and_misaligned_rows_copied():
    """A shape met only during a pass may need more rows than the pass carries: its blocks get
    zero rows past the end rather than a width never allowed; a block that would start at
    another alignment than a fresh tensor is a copy."""
    from pipeline.engines.rowwise import blocks_of

    x = torch.randn(3, 1, 16)  # 64-byte rows: views
    got = blocks_of(x, (4,))
    assert [b.shape[0] for b in got] == [4] and torch.equal(got[0][:3], x) and not got[0][3].any()
    views = blocks_of(torch.randn(6, 1, 16), (4, 2))
    assert all(b._base is not None for b in views)
    odd = blocks_of(torch.randn(6, 1, 10), (4, 2))  # 40-byte rows: the second block would be misaligned
    assert [b.shape[0] for b in odd] == [4, 2] and all(b.data_ptr() % 64 == 0 for b in odd)


def test_off_the_cpu_every_shape_keeps_blocks_of_the_decode_width(monkeypatch):
    """On a GPU a 4-bit layer runs bitsandbytes' kernel, which picks its method by row count
    where the probe does not look: no other width is allowed there."""
    import pipeline.engines.rowwise as rowwise

    blocks = rowwise._RowBlocks(torch.nn.Linear(32, 48))
    assert DECODE_WIDTH in blocks.allowed((32, 48, torch.float32, True))
    blocks.device = "cuda"  # its orientation probe would run on the GPU: not here
    monkeypatch.setattr(rowwise, "orientation", lambda *key: "linear")
    assert blocks.allowed((64, 48, torch.float32, False)) == (DECODE_WIDTH,)
    assert blocks.rows(1) >= DECODE_WIDTH
