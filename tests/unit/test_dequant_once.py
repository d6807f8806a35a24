"""Inference engines run one 4-bit kernel on every CPU and dequantize each weight once.

Both host classes are simulated here: bitsandbytes' CPU probe is made to answer yes
(AVX512-BF16: its layers would pack at the first eval forward) or no (AVX2: they dequantize at
every call) before the model is built, as each host would build it.
"""

from __future__ import annotations

import pytest
import torch

from pipeline.engines.dequant import dequantize_once, no_packing
from pipeline.platform import four_bit_layers, is_packed, kernel_4bit


@pytest.fixture(params=[True, False], ids=["avx512bf16-host", "avx2-host"])
def host(request, monkeypatch):
    import bitsandbytes.nn.modules as bnb_modules

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: request.param)
    return request.param


def _bare(tiny_pipeline):
    """The tiny 4-bit base as bitsandbytes builds it, nothing of ours applied."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_pipeline["base_q"], device_map={"": "cpu"}).eval()


def test_engines_never_pack_on_either_host(tiny_pipeline, host):
    from pipeline.engines.hf import load_model

    model = load_model(tiny_pipeline["base_q"], tiny_pipeline["bundle"] / "adapter")
    layers = four_bit_layers(model)
    assert layers and all(m.support_avx512bf16_for_cpu == host for _n, m in four_bit_layers(_bare(tiny_pipeline)))
    with torch.inference_mode():
        model(input_ids=torch.tensor([[1, 2, 3, 4]]))
    assert not any(is_packed(m) for _n, m in layers)
    assert kernel_4bit(model) == "cpu-dequantize"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 7])
def test_the_kept_weight_gives_bitsandbytes_own_numbers(tiny_pipeline, host, dtype, rows):
    """Every layer, several calls (the first dequantizes, the later ones reuse): bit for bit
    what bitsandbytes' dequantize-then-linear computes for the same input."""
    theirs, ours = _bare(tiny_pipeline), _bare(tiny_pipeline)
    no_packing(theirs)
    no_packing(ours)
    assert dequantize_once(ours, budget_bytes=1 << 30)
    gen = torch.Generator().manual_seed(rows)
    for (name, a), (_n, b) in zip(four_bit_layers(theirs), four_bit_layers(ours)):
        for _call in range(2):
            x = torch.randn(1, rows, a.in_features, generator=gen).to(dtype)
            with torch.inference_mode():
                want, got = a(x), b(x)
            assert want.dtype == got.dtype and torch.equal(want, got), name


def test_a_budget_too_small_keeps_nothing_and_changes_nothing(tiny_pipeline):
    model = _bare(tiny_pipeline)
    no_packing(model)
    assert not dequantize_once(model, budget_bytes=1)
    assert not any(getattr(m.forward, "tailgate_dequantize_once", False) for _n, m in four_bit_layers(model))


def test_gradients_and_training_go_through_bitsandbytes(tiny_pipeline):
    """A kept weight is for no-grad inference only: an input that needs a gradient still gets
    bitsandbytes' autograd path (the input's gradient flows)."""
    model = _bare(tiny_pipeline)
    no_packing(model)
    dequantize_once(model, budget_bytes=1 << 30)
    _name, layer = four_bit_layers(model)[0]
    x = torch.randn(2, layer.in_features, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)
