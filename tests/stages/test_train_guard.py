"""Training never backpropagates through a packed 4-bit layer, on any host.

bitsandbytes packs a Linear4bit for its CPU inference kernel (no backward) at the first eval-mode
forward that needs no gradient, on CPUs with AVX512-BF16. Whether it may is a per-layer flag set
from the CPU probe when the layer is built; these tests set that flag as such a CPU would (the
conversion itself is plain torch and runs anywhere), so the AVX2 hosts CI often runs on check
the same path as the Xeons where the gradients were lost.
"""

from __future__ import annotations

import pytest
import torch

from pipeline.params import load_section
from pipeline.train.data import collate, load_training_data
from pipeline.train.guard import PackedWeightError, check_differentiable, four_bit_layers, is_packed
from pipeline.train.loop import loss_on_labels, validation_loss
from pipeline.train.setup import load_trainable


def _as_on_an_avx512bf16_cpu(model) -> None:
    """What Linear4bit.__init__ sets on a CPU whose probe reports AVX512-BF16."""
    for _name, module in four_bit_layers(model):
        module.support_avx512bf16_for_cpu = True


def _grads(model, batch) -> dict[str, torch.Tensor]:
    """Gradients of every LoRA weight, and of the input of the last 4-bit layer (the one whose
    input gradient flows back through its frozen weights into every LoRA layer below)."""
    name, last = four_bit_layers(model)[-1]
    seen = {}

    def keep_input(_module, args):
        args[0].retain_grad()
        seen["input"] = args[0]

    handle = last.register_forward_pre_hook(keep_input)
    try:
        model.zero_grad(set_to_none=True)
        loss, _ = loss_on_labels(model, batch)
        loss.backward()
    finally:
        handle.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    grads[f"input of {name}"] = seen["input"].grad.clone() if seen["input"].grad is not None else None
    return grads


@pytest.fixture
def trainable(tiny_pipeline):
    params = load_section("train", tiny_pipeline["params"])
    torch.manual_seed(0)
    model = load_trainable(tiny_pipeline["base_q"], params)
    model.train()
    data = load_training_data(tiny_pipeline["base"], tiny_pipeline["data"])
    return model, data


def test_a_validation_pass_leaves_every_gradient_bitwise_the_same(trainable):
    model, data = trainable
    layers = four_bit_layers(model)
    assert layers, "the tiny base must have 4-bit layers for this test to mean anything"
    # load_trainable turned packing off; put the flag back as an AVX512-BF16 CPU sets it and
    # turn it off again through the guard, so the test holds whatever this host is
    _as_on_an_avx512bf16_cpu(model)
    from pipeline.train.guard import keep_differentiable

    assert keep_differentiable(model) == len(layers)
    batch = collate(data.train[:2], data.pad_id)
    before = _grads(model, batch)
    assert before[next(k for k in before if k.startswith("input of"))] is not None
    assert validation_loss(model, data.val or data.train[:2], 2, data.pad_id) is not None
    assert not any(is_packed(m) for _n, m in layers)
    after = _grads(model, batch)
    assert before.keys() == after.keys()
    for name in before:
        assert after[name] is not None, f"{name} lost its gradient after validation"
        assert torch.equal(before[name], after[name]), f"{name} changed after validation"


def test_without_the_guard_validation_packs_and_the_next_backward_is_refused(trainable):
    """What happened before the fix, on a simulated AVX512-BF16 CPU: validation packs every
    4-bit layer; the loop's check then refuses to go on instead of training on."""
    model, data = trainable
    _as_on_an_avx512bf16_cpu(model)
    with pytest.raises(PackedWeightError, match=r"go on training after validation: 4-bit layer \S+"):
        validation_loss(model, data.val or data.train[:2], 2, data.pad_id)
    assert all(is_packed(m) for _n, m in four_bit_layers(model))


def test_the_guard_names_a_layer_packed_by_bitsandbytes_own_conversion(trainable):
    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    model, _data = trainable
    check_differentiable(model, "take a step")  # nothing packed after load_trainable
    name, layer = four_bit_layers(model)[-1]
    layer.weight.data, layer.weight.quant_state = _convert_weight_packed_for_cpu(layer.weight.data,
                                                                                 layer.weight.quant_state)
    with pytest.raises(PackedWeightError) as err:
        check_differentiable(model, "take optimizer step 3")
    assert name in str(err.value) and "take optimizer step 3" in str(err.value)


def test_a_run_refuses_its_first_optimizer_step_when_a_layer_is_packed(tiny_pipeline, tmp_path, monkeypatch):
    """A bitsandbytes that packs anyway (simulated: the loaded model comes back with one layer
    packed) stops the run before any step is taken and before any adapter is written."""
    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    from pipeline.train import run as run_module

    real = run_module.load_trainable

    def load_then_pack(*args, **kwargs):
        model = real(*args, **kwargs)
        _name, layer = four_bit_layers(model)[0]
        layer.weight.data, layer.weight.quant_state = _convert_weight_packed_for_cpu(layer.weight.data,
                                                                                     layer.weight.quant_state)
        return model

    monkeypatch.setattr(run_module, "load_trainable", load_then_pack)
    params = load_section("train", tiny_pipeline["params"])
    with pytest.raises(PackedWeightError, match="optimizer step 1"):
        run_module.train(params, tiny_pipeline["base_q"], tiny_pipeline["base"], tiny_pipeline["data"],
                         tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()


def test_a_resumed_run_is_checked_before_its_first_step(tiny_pipeline, tmp_path):
    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    from pipeline.train.checkpoint import Checkpoints
    from pipeline.train.loop import RunState, resume
    from pipeline.train.distributed import Ranks

    params = load_section("train", tiny_pipeline["params"])
    model = load_trainable(tiny_pipeline["base_q"], params)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ckpts = Checkpoints(tmp_path / "ckpt", "key", keep=1)
    ckpts.save(2, model, optimizer, RunState(step=2).state())
    _name, layer = four_bit_layers(model)[0]
    layer.weight.data, layer.weight.quant_state = _convert_weight_packed_for_cpu(layer.weight.data,
                                                                                 layer.weight.quant_state)
    with pytest.raises(PackedWeightError, match="resume from"):
        resume(ckpts, Ranks(), model, optimizer, params.max_steps)


def test_writing_the_adapter_asks_no_hub(trainable, tmp_path, monkeypatch):
    """peft's default save asks the Hub whether the vocabulary changed ("Unable to fetch remote
    file" offline): the adapter is written without that question, and with the same bytes."""
    import peft.utils.save_and_load as save_and_load

    from pipeline.train.report import write_adapter

    def no_network(*_args, **_kwargs):
        raise AssertionError("the adapter save asked the Hub")

    monkeypatch.setattr(save_and_load, "check_file_exists_on_hf_hub", no_network)
    model, _data = trainable
    write_adapter(tmp_path / "adapter", model, None, {"test": True})
    assert (tmp_path / "adapter/adapter_model.safetensors").is_file()
