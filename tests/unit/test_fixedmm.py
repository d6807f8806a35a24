"""The fixed-order matmul (pipeline/engines/fixedmm.py): one order per output, on every host.

What the engine relies on, checked on random data of the shapes it meets and of awkward ones
(K not a multiple of 8, one output, one row): a row's bits do not depend on the rows beside it,
their number or order, nor on the thread count; the portable path (a CPU without AVX2,
simulated) gives the AVX2 + FMA path's bits; both follow the order the module documents,
replayed here in Python; and the product is F.linear's up to float32 rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.engines import fixedmm

SHAPES = [(1, 576, 576), (3, 576, 192), (8, 1536, 576), (13, 576, 16), (5, 16, 1536), (32, 576, 1000),
          (7, 21, 37), (2, 5, 3), (1, 8, 1), (9, 1543, 11)]


def _data(m: int, k: int, n: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed * 1009 + m * 31 + k * 7 + n)
    return torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen) * 0.05


def test_the_kernel_is_built_here():
    """make install compiles it (setup.py); an environment without it would evaluate and serve
    another arithmetic, so the suite refuses to pass without it."""
    assert fixedmm.available() and fixedmm.enabled()
    assert fixedmm.path() in ("avx2-fma", "portable")


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_every_row_is_the_row_alone_in_any_company(m, k, n):
    x, w = _data(m, k, n)
    together = fixedmm.linear(x, w)
    for r in range(m):
        assert torch.equal(fixedmm.linear(x[r:r + 1].clone(), w)[0], together[r])
    perm = torch.randperm(m, generator=torch.Generator().manual_seed(m))
    assert torch.equal(fixedmm.linear(x[perm], w), together[perm])
    crowd = torch.cat([torch.randn(11, k), x, torch.zeros(4, k)])  # random and padding rows beside
    assert torch.equal(fixedmm.linear(crowd, w)[11:11 + m], together)


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_the_portable_path_gives_the_avx2_bits(m, k, n):
    x, w = _data(m, k, n, seed=1)
    x[0, 0], w[0, -1] = -0.0, 3.0e38  # a signed zero and a product near overflow
    assert torch.equal(fixedmm.linear(x, w, portable=True), fixedmm.linear(x, w, portable=False))


def test_the_thread_count_does_not_change_a_bit():
    x, w = _data(6, 576, 1536, seed=2)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fixedmm.linear(x, w)
        torch.set_num_threads(max(2, before))
        many = fixedmm.linear(x, w)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, many)


def _fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 fused multiply-add: the float32 product is exact in float64 and the sum is
    rounded once more; for the data below that is the single rounding (checked by the test
    against both compiled paths, which use the hardware's and libm's fma)."""
    return (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(np.float32)


def test_the_order_is_the_documented_one():
    x, w = _data(3, 43, 5, seed=3)  # 5 lanes of 8 and a tail of 3
    xs, ws = x.numpy(), w.numpy()
    want = np.zeros((3, 5), dtype=np.float32)
    for m in range(3):
        for n in range(5):
            lane = np.zeros(8, dtype=np.float32)
            for k in range(0, 40, 8):
                lane = _fma32(xs[m, k:k + 8], ws[n, k:k + 8], lane)
            s = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]))
            for k in range(40, 43):
                s = _fma32(xs[m, k], ws[n, k], s)
            want[m, n] = s
    assert torch.equal(fixedmm.linear(x, w), torch.from_numpy(want))
    # another order (one chain over k) gives other bits on the same data: the test can tell
    chain = np.zeros((3, 5), dtype=np.float32)
    for k in range(43):
        chain = _fma32(xs[:, k:k + 1], ws[:, k][None, :], chain)
    assert not np.array_equal(chain, want)


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_the_product_is_f_linear_up_to_rounding(m, k, n):
    x, w = _data(m, k, n, seed=4)
    b = torch.randn(n)
    exact = (x.double() @ w.double().t() + b.double())
    bound = 4 * k * torch.finfo(torch.float32).eps * (x.double().abs() @ w.double().abs().t() + b.double().abs())
    err = (fixedmm.linear(x, w, b).double() - exact).abs()
    assert (err <= bound + 1e-30).all()
    assert fixedmm.linear(x[:, None, :], w, b).shape == (m, 1, n)  # (..., in) as F.linear takes it


def test_bad_input_is_refused_with_a_reason():
    with pytest.raises(RuntimeError, match="float32 only"):
        fixedmm.linear(torch.zeros(2, 8, dtype=torch.bfloat16), torch.zeros(3, 8, dtype=torch.bfloat16))
    with pytest.raises(RuntimeError, match="do not multiply"):
        fixedmm.linear(torch.zeros(2, 8), torch.zeros(3, 9))


def test_the_switch_is_read_and_checked(monkeypatch):
    monkeypatch.setenv(fixedmm.ENV_KERNEL, "blas")
    assert not fixedmm.enabled() and not fixedmm.applies(torch.float32, "cpu")
    monkeypatch.setenv(fixedmm.ENV_KERNEL, "fixed")
    assert fixedmm.applies(torch.float32, "cpu")
    assert not fixedmm.applies(torch.bfloat16, "cpu") and not fixedmm.applies(torch.float32, "cuda")
    monkeypatch.setenv(fixedmm.ENV_KERNEL, "mkl")
    with pytest.raises(ValueError, match="TAILGATE_DECODE_KERNEL"):
        fixedmm.enabled()
