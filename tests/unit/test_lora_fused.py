"""The one-call LoRA forward computes peft's numbers bit for bit (pipeline/engines/lora_fused.py).

Each comparison runs the same layer (or the same engine) through peft's own forward and through
the fused one on the same inputs and asks `torch.equal`: a difference of one ulp fails. Covered:
the tiny real bundle's NF4 + LoRA layers (bfloat16 compute, float32 adapter: the casts peft
inserts) and a float32 dense LoRA layer (the reference precision's kind), prefill shapes and
decode passes of one block and of several, and the cases that must fall back to peft.
"""

from __future__ import annotations

import pytest
import torch

from pipeline.engines.lora_fused import fuse, unfuse
from pipeline.engines.rowwise import DECODE_WIDTH, _RowBlocks


@pytest.fixture(scope="module")
def engine(tiny_pipeline):
    from pipeline.bundle.verify import verify_bundle
    from pipeline.engines.hf import HFEngine

    engine = HFEngine.from_bundle(verify_bundle(tiny_pipeline["bundle"]))
    engine.start([1, 2, 3])  # each layer's first fused call, which checks itself against peft's
    return engine


def _lora_layers(model):
    return [(n, m) for n, m in model.named_modules() if getattr(m.forward, "tailgate_fused_lora", None)]


def test_the_engine_fuses_every_lora_layer_of_the_bundle(engine):
    layers = _lora_layers(engine.model)
    n_lora = sum(1 for _n, m in engine.model.named_modules() if hasattr(m, "lora_A") and len(m.lora_A))
    assert n_lora and len(layers) == n_lora == engine._stepper.fused_layers


@pytest.mark.parametrize("shape", [(1, 37), (DECODE_WIDTH, 1), (3 * DECODE_WIDTH - 3, 1)],
                         ids=["prefill", "decode-one-block", "decode-three-blocks"])
def test_each_nf4_lora_layer_gives_pefts_numbers(engine, shape):
    blocks = engine._stepper._blocks
    gen = torch.Generator().manual_seed(shape[0])
    with torch.inference_mode():
        for name, layer in _lora_layers(engine.model):
            x = torch.randn(*shape, layer.in_features, generator=gen).to(torch.bfloat16)
            blocks.on = True
            fallback, calls = layer.forward.tailgate_fused_lora, []
            layer.forward.tailgate_fused_lora = lambda *a, **k: calls.append(1) or fallback(*a, **k)
            try:
                fused = layer(x)
                assert calls == [], f"{name} fell back to peft's forward"
                layer.forward.tailgate_fused_lora = fallback
                layer.forward, kept = layer.forward.tailgate_fused_lora, layer.forward
                try:
                    theirs = layer(x)
                finally:
                    layer.forward = kept
            finally:
                blocks.on = False
            assert fused.dtype == theirs.dtype and torch.equal(fused, theirs), name


def test_decode_passes_and_prefills_are_pefts_bit_for_bit(engine):
    """Whole passes: prompt logits and three decode steps of twenty rows, fused and not."""
    texts = ["Stable.", "Patient admitted with chest pain, discharged on aspirin.", "Hi",
             "Summarize: pneumonia treated with antibiotics."] * 5
    ids = [engine.tokenizer(t)["input_ids"] for t in texts]

    def run():
        with torch.inference_mode():
            seqs, firsts = zip(*(engine.start(i, all_positions=True) for i in ids))
            steps = [engine.step(list(seqs), [5 + k] * len(ids)) for k in range(3)]
        return firsts, steps

    fused_first, fused_steps = run()
    model = engine.model
    assert unfuse(model) > 0
    try:
        first, steps = run()
    finally:
        fuse(model, engine._stepper._blocks)
    assert all(torch.equal(a, b) for a, b in zip(fused_first, first))
    assert all(torch.equal(a, b) for a, b in zip(fused_steps, steps))


def _dense_lora(dropout: float = 0.0, seed: int = 0):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    net = torch.nn.Sequential()
    net.add_module("proj", torch.nn.Linear(576, 1536))
    net.add_module("act", torch.nn.SiLU())
    net.add_module("out", torch.nn.Linear(1536, 576))
    model = get_peft_model(net, LoraConfig(r=16, lora_alpha=32, target_modules=["proj", "out"],
                                           lora_dropout=dropout))
    for m in model.modules():  # a trained adapter: B is not zero
        if hasattr(m, "lora_B") and len(m.lora_B):
            torch.nn.init.normal_(m.lora_B["default"].weight, std=0.02)
    return model.eval()


def test_a_dense_float32_lora_layer_gives_pefts_numbers_in_blocks():
    model = _dense_lora()
    blocks = _RowBlocks(model)
    x = torch.randn(2 * DECODE_WIDTH + 5, 1, 576)
    with torch.inference_mode():
        blocks.on = True
        theirs = model(x)
        assert fuse(model, blocks) == 2
        fused = model(x)
        blocks.on = False
        prefill_fused = model(x.view(1, -1, 576))
        unfuse(model)
        prefill_theirs = model(x.view(1, -1, 576))
    assert torch.equal(fused, theirs) and torch.equal(prefill_fused, prefill_theirs)


def test_what_the_fused_forward_does_not_cover_runs_pefts_forward():
    """Training (dropout draws), autograd, a disabled adapter: peft's own forward runs; an eval
    pass without autograd does not reach it."""
    model = _dense_lora(dropout=0.5)
    layer = model.base_model.model.proj
    assert fuse(model) == 2
    peft_forward, calls = layer.forward.tailgate_fused_lora, []
    layer.forward.tailgate_fused_lora = lambda *a, **k: calls.append(1) or peft_forward(*a, **k)
    x = torch.randn(4, 576)
    with torch.inference_mode():
        layer(x)  # the first fused call checks itself against peft's forward
        assert len(calls) == 1
        calls.clear()
        fused = layer(x)
        assert calls == [] and torch.equal(fused, peft_forward(x))
    model.train()
    with torch.inference_mode():
        layer(x)
    model.eval()
    layer(x)  # autograd on
    with model.disable_adapter(), torch.inference_mode():
        layer(x)
    assert len(calls) == 3
    assert unfuse(model) == 2 and layer.forward is not None and not hasattr(layer.forward, "tailgate_fused_lora")


def test_a_layer_whose_fused_numbers_differ_from_pefts_keeps_pefts_forward(caplog):
    """As if a peft release computed the layer another way: the first call compares, finds a
    difference, answers with peft's numbers and leaves the layer on peft's forward."""
    model = _dense_lora()
    layer = model.base_model.model.proj
    fuse(model)
    peft_forward, calls = layer.forward.tailgate_fused_lora, []
    layer.forward.tailgate_fused_lora = lambda *a, **k: calls.append(1) or peft_forward(*a, **k) * 2
    x = torch.randn(4, 576)
    with torch.inference_mode():
        first, second = layer(x), layer(x)
        want = peft_forward(x) * 2
    assert torch.equal(first, want) and torch.equal(second, want) and len(calls) == 2
    assert "does not reproduce peft's numbers" in caplog.text


@pytest.mark.parametrize("avx512bf16", [True, False], ids=["avx512bf16-host", "avx2-host"])
def test_both_host_classes_take_the_fused_path_with_pefts_numbers(tiny_pipeline, monkeypatch, avx512bf16):
    """bitsandbytes would pack the 4-bit layers on an AVX512-BF16 host and not on an AVX2 one;
    the engine turns packing off on both, so on both every layer keeps its dequantized weight
    and runs fused, with peft's numbers (each host class simulated before the model is built)."""
    import bitsandbytes.nn.modules as bnb_modules

    from pipeline.engines.hf import load_model
    from pipeline.engines.rowwise import RowwiseRunner

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: avx512bf16)
    model = load_model(tiny_pipeline["base_q"], tiny_pipeline["bundle"] / "adapter")
    runner = RowwiseRunner(model, pad_id=0)
    with torch.inference_mode():
        runner.start([1, 2, 3])  # keeps the weights, and each layer checks itself
    layers = _lora_layers(model)
    assert layers and len(layers) == runner.fused_layers
    gen = torch.Generator().manual_seed(7)
    with torch.inference_mode():
        for name, layer in layers:
            x = torch.randn(2 * DECODE_WIDTH, 1, layer.in_features, generator=gen).to(torch.bfloat16)
            fallback, calls = layer.forward.tailgate_fused_lora, []
            layer.forward.tailgate_fused_lora = lambda *a, **k: calls.append(1) or fallback(*a, **k)
            runner._blocks.on = True
            try:
                fused = layer(x)
                theirs = fallback(x)
            finally:
                runner._blocks.on = False
                layer.forward.tailgate_fused_lora = fallback
            assert calls == [] and torch.equal(fused, theirs), name
