"""The fixed-order product from 4-bit codes (pipeline/engines/fixedmm4.cpp) and the one-call LoRA
layer (fixedmm.lora): the same bits as the dense kernel on bitsandbytes' dequantized weight.

Built from real bitsandbytes 4-bit layers (NF4 and FP4, nested statistics or not, blocks of 64 and
128, rows that blocks do not tile), every path this CPU has (AVX-512, AVX2, portable: each forced
by its limit) must dequantize to bitsandbytes' own weights bit for bit and multiply to the dense
kernel's outputs bit for bit; a weight whose codes do not reproduce it is never attached.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.engines import fixedmm
from pipeline.engines.dequant import _absmax, dequantized_weight, prepare_for_inference

LIMITS = (0, 1, 2)  # portable, AVX2, AVX-512 (each at most what this CPU has)


def _layer(n: int, k: int, quant_type: str = "nf4", nested: bool = True, blocksize: int = 64, seed: int = 0):
    import bitsandbytes as bnb

    gen = torch.Generator().manual_seed(seed * 131 + n + k)
    layer = bnb.nn.Linear4bit(k, n, bias=False, compute_dtype=torch.float32, quant_type=quant_type,
                              compress_statistics=nested)
    layer.weight = bnb.nn.Params4bit(torch.randn(n, k, generator=gen) * 0.05, requires_grad=False,
                                     quant_type=quant_type, compress_statistics=nested, blocksize=blocksize)
    return layer.to("cpu")


def _four(layer) -> fixedmm.FourBit:
    state = layer.weight.quant_state
    return fixedmm.FourBit(layer.weight.data.view(torch.uint8).reshape(-1), _absmax(state).float().contiguous(),
                           state.code.float().contiguous(), int(state.shape[0]), int(state.blocksize))


LAYERS = [(192, 576, "nf4", True, 64), (1536, 576, "nf4", True, 64), (576, 1536, "nf4", False, 64),
          (48, 256, "fp4", True, 64), (40, 384, "nf4", True, 128), (24, 96, "nf4", True, 64),  # 96: blocks cross rows
          (7, 40, "nf4", False, 64)]


def _flat_dequantized(layer) -> torch.Tensor:
    """bitsandbytes' own definition of the weights (its portable implementation: blocks of the
    flattened matrix), which its CPU kernel departs from where blocks cross rows (below)."""
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute

    state = layer.weight.quant_state
    return _dequantize_4bit_compute(layer.weight.data.view(torch.uint8).reshape(-1), _absmax(state), state.code,
                                    state.blocksize, state.shape, torch.float32)


@pytest.mark.parametrize("n,k,qt,nested,bs", LAYERS)
def test_every_path_dequantizes_to_bitsandbytes_weights_and_multiplies_to_the_dense_bits(n, k, qt, nested, bs):
    layer = _layer(n, k, qt, nested, bs)
    dense = _flat_dequantized(layer)
    if k % bs == 0:  # and bitsandbytes' CPU kernel, which the engine's kept weights come from, agrees
        assert torch.equal(dense, dequantized_weight(layer, torch.float32))
    four = _four(layer)
    ext = fixedmm._extension()
    x = torch.randn(9, k, generator=torch.Generator().manual_seed(n))
    x[0, 0] = -0.0
    for limit in LIMITS:
        mine = ext.dequantize_4bit(four.q, four.absmax, four.code, n, k, four.blocksize, limit)
        assert torch.equal(mine.view(torch.int32), dense.view(torch.int32)), (limit, ext.path_4bit(k, bs, limit))
        for m in (1, 2, 3, 4, 5, 8, 9):
            got = ext.fixed_linear_4bit(x[:m], four.q, four.absmax, four.code, n, four.blocksize, limit)
            assert torch.equal(got, fixedmm.linear(x[:m], dense)), (limit, m)


def test_the_vector_paths_run_where_blocks_tile_the_rows():
    ext = fixedmm._extension()
    assert ext.path_4bit(576, 64, 0) == "portable"
    assert ext.path_4bit(96, 64, 2) == "portable"  # a block crosses rows
    if ext.has_avx2_fma():
        assert ext.path_4bit(576, 64, 1) == "avx2"
        assert ext.path_4bit(576, 64, 2) in ("avx2", "avx512")


def test_a_row_is_the_row_alone_in_any_company():
    layer = _layer(1536, 576)
    kept = dequantized_weight(layer, torch.float32)
    assert fixedmm.attach_4bit(kept, _four(layer))
    x = torch.randn(13, 576, generator=torch.Generator().manual_seed(3))
    together = fixedmm.linear(x, kept)
    for r in range(13):
        assert torch.equal(fixedmm.linear(x[r:r + 1].clone(), kept)[0], together[r])
    crowd = torch.cat([torch.zeros(3, 576), x, torch.randn(5, 576)])
    assert torch.equal(fixedmm.linear(crowd, kept)[3:16], together)


def test_a_weight_its_codes_do_not_reproduce_is_not_attached(caplog):
    layer = _layer(192, 576)
    kept = dequantized_weight(layer, torch.float32)
    tampered = kept.clone()
    tampered[5, 17] = torch.nextafter(tampered[5, 17], torch.tensor(1.0))  # one ulp
    assert not fixedmm.attach_4bit(tampered, _four(layer))
    assert "not bitsandbytes' bit for bit" in caplog.text and not fixedmm.attached(tampered)
    x = torch.randn(2, 576)
    assert torch.equal(fixedmm.linear(x, tampered), fixedmm._extension().fixed_linear(x, tampered, False))
    assert fixedmm.attach_4bit(kept, _four(layer)) and fixedmm.attached(kept)
    fixedmm.detach_4bit(kept)
    assert not fixedmm.attached(kept)


def test_where_the_cpu_kernel_departs_from_the_flat_blocks_the_weight_stays_dense(caplog):
    """bitsandbytes 0.50's CPU dequantize gives other weights than its portable implementation
    when a block crosses rows (96 inputs, blocks of 64); the engine evaluates the CPU kernel's
    weights, so the codes are not attached and the kept weight is multiplied as it is."""
    layer = _layer(24, 96)
    kept = dequantized_weight(layer, torch.float32)
    if torch.equal(kept, _flat_dequantized(layer)):
        pytest.skip("this bitsandbytes dequantizes blocks across rows as its portable implementation does")
    assert not fixedmm.attach_4bit(kept, _four(layer))
    assert "not bitsandbytes' bit for bit" in caplog.text


def test_bad_codes_are_refused_with_a_reason():
    ext, layer = fixedmm._extension(), _layer(24, 128)
    four = _four(layer)
    with pytest.raises(RuntimeError, match="codes must be contiguous uint8"):
        ext.fixed_linear_4bit(torch.zeros(1, 128), four.q[:-1], four.absmax, four.code, 24, 64)
    with pytest.raises(RuntimeError, match="absmax must be contiguous float32"):
        ext.fixed_linear_4bit(torch.zeros(1, 128), four.q, four.absmax[:3], four.code, 24, 64)
    with pytest.raises(RuntimeError, match="16 float32 values"):
        ext.fixed_linear_4bit(torch.zeros(1, 128), four.q, four.absmax, four.code[:8], 24, 64)
    with pytest.raises(RuntimeError, match="float32 CPU matrix"):
        ext.fixed_linear_4bit(torch.zeros(1, 128, dtype=torch.bfloat16), four.q, four.absmax, four.code, 24, 64)


@pytest.mark.parametrize("scaling", [2.0, 0.5, 1 / 3, 16 / 7], ids=["2", "0.5", "1/3", "16/7"])
@pytest.mark.parametrize("base", ["dense", "4bit"])
def test_one_call_lora_is_the_composed_product(scaling, base):
    """fixedmm.lora against the products and torch's float32 multiply and add, as peft composes
    them (a scaling float32 does not hold exactly checks its rounding)."""
    layer = _layer(576, 1536, seed=4)
    kept = dequantized_weight(layer, torch.float32)
    if base == "4bit":
        assert fixedmm.attach_4bit(kept, _four(layer))
    gen = torch.Generator().manual_seed(5)
    a, b = torch.randn(16, 1536, generator=gen) * 0.02, torch.randn(576, 16, generator=gen) * 0.02
    x = torch.randn(6, 1, 1536, generator=gen)
    want = fixedmm.linear(x, kept) + fixedmm.linear(fixedmm.linear(x, a), b) * scaling
    got = fixedmm.lora(x, kept, a, b, scaling)
    assert got.shape == want.shape and torch.equal(got, want)
    assert torch.equal(fixedmm.lora(x, kept, a, b, scaling, portable=True), want)
    assert (got - (F.linear(x, kept) + F.linear(F.linear(x, a), b) * scaling)).abs().max() < 1e-4


def test_a_kept_4bit_weight_is_multiplied_from_its_codes_with_the_same_numbers():
    """The engine's preparation (pipeline/engines/dequant.py): the first inference call keeps
    the dequantized float32 weight and attaches its codes; a decode-shaped call then gives the
    dense kernel's bits on the kept weight."""
    layer = _layer(192, 576, seed=6).eval()
    model = torch.nn.Sequential(layer)
    prepare_for_inference(model)
    x = torch.randn(4, 576)
    with torch.inference_mode():
        first = model(x)
    kept = layer.tailgate_kept[torch.float32]
    assert fixedmm.attached(kept)
    assert torch.equal(first, F.linear(x, dequantized_weight(layer, torch.float32)))
    assert torch.equal(fixedmm.linear(x, kept), fixedmm._extension().fixed_linear(x, kept, False))


def _four_bit_lora(seed: int = 0):
    """Two float32-compute 4-bit linears with a trained-looking LoRA adapter, prepared as the
    engine prepares a model (kept weights, codes attached at the first call)."""
    from peft import LoraConfig, get_peft_model

    net = torch.nn.Sequential()
    net.add_module("proj", _layer(1536, 576, seed=seed))
    net.add_module("out", _layer(576, 1536, seed=seed + 1))
    net.is_loaded_in_4bit = True  # what peft reads to wrap bitsandbytes' layers as its 4-bit LoRA layers
    model = get_peft_model(net, LoraConfig(r=16, lora_alpha=32, target_modules=["proj", "out"]))
    for m in model.modules():
        if hasattr(m, "lora_B") and len(m.lora_B):
            torch.nn.init.normal_(m.lora_B["default"].weight, std=0.02)
    model.eval()
    prepare_for_inference(model)
    return model


def test_a_4bit_lora_decode_pass_is_one_call_a_layer_with_pefts_numbers(monkeypatch):
    from pipeline.engines.lora_fused import fuse, unfuse
    from pipeline.engines.rowwise import _RowBlocks

    model = _four_bit_lora()
    x = torch.randn(5, 1, 576, generator=torch.Generator().manual_seed(8))
    with torch.inference_mode():
        model(x.view(1, 5, 576))  # a prefill: keeps each weight and attaches its codes
        blocks = _RowBlocks(model)
        blocks.on, blocks.live = True, 5
        theirs = model(x)  # peft's forward, each product in the row blocks
        assert fuse(model, blocks) == 2
        calls = []
        real = fixedmm.lora
        monkeypatch.setattr(fixedmm, "lora", lambda *a, **k: calls.append(1) or real(*a, **k))
        first, second = model(x), model(x)  # the first one-call pass checks itself against peft's
        unfuse(model)
    assert calls == [1, 1, 1, 1] and torch.equal(first, theirs) and torch.equal(second, theirs)
    kept = [m.tailgate_kept[torch.float32] for m in model.modules() if hasattr(m, "tailgate_kept")]
    assert len(kept) == 2 and all(fixedmm.attached(w) for w in kept)


def test_a_one_call_layer_that_differs_from_peft_multiplies_block_by_block(monkeypatch, caplog):
    from pipeline.engines.lora_fused import fuse
    from pipeline.engines.rowwise import _RowBlocks

    model = _four_bit_lora(seed=2)
    x = torch.randn(3, 1, 576, generator=torch.Generator().manual_seed(9))
    real = fixedmm.lora
    monkeypatch.setattr(fixedmm, "lora", lambda *a, **k: real(*a, **k) * (1 + 2 ** -20))  # as if another order
    with torch.inference_mode():
        model(x.view(1, 3, 576))
        blocks = _RowBlocks(model)
        blocks.on = True
        theirs = model(x)
        fuse(model, blocks)
        first, second = model(x), model(x)
    assert torch.equal(first, theirs) and torch.equal(second, theirs)
    assert "one-call decode product does not reproduce peft's numbers" in caplog.text
