"""quantization: none (16-bit LoRA) runs the same chain: a comparable bundle and report."""

from __future__ import annotations

import pytest

from pipeline.params import load_section
from tests.conftest import REPO


@pytest.mark.slow
def test_16bit_lora_bundle_is_its_own_reference(tiny_pipeline, tmp_path):
    from pipeline.bundle.build import build_bundle
    from pipeline.bundle.diff import diff_manifests
    from pipeline.bundle.verify import verify_bundle
    from pipeline.evaluate import evaluate
    from pipeline.params import QuantizeParams
    from pipeline.quantize import quantize_base
    from pipeline.train import train

    p = tiny_pipeline["params"]
    report = quantize_base(QuantizeParams(method="none"), tiny_pipeline["base"], tmp_path / "base_q")
    assert report["measured"]["bits_per_param"] is None and report["bnb_config"] is None
    train(load_section("train", p), tmp_path / "base_q", tiny_pipeline["base"], tiny_pipeline["data"],
          tmp_path / "adapter")
    build_bundle(load_section("bundle", p), tiny_pipeline["base"], tmp_path / "base_q", tmp_path / "adapter",
                 tmp_path / "bundle")
    sixteen = verify_bundle(tmp_path / "bundle").manifest
    assert sixteen.quantization.method == "none" and sixteen.quantization.bnb_config is None
    # the comparison names the configuration difference, not just "different weights"
    changed = {path for path, _, _ in diff_manifests(verify_bundle(tiny_pipeline["bundle"]).manifest.model_dump(mode="json"),
                                                     sixteen.model_dump(mode="json"))}
    assert "quantization.method" in changed
    params = load_section("evaluate", p).model_copy(update={"suite": str(REPO / "eval_suites/discharge")})
    ev, rows, _ = evaluate(params, tmp_path / "bundle", tiny_pipeline["base"])
    d = ev["damage"]
    assert d["reference"].startswith("the shipped model itself")
    assert d["flip_rate"] == 0.0 and d["delta_nll_per_token"]["max"] == 0.0 and d["identical_outputs"] == 1.0
    assert ev["bundle"]["quantization"] == "none"


@pytest.mark.slow
def test_adapter_trained_on_the_16bit_base_ships_on_nf4_and_says_so(tiny_pipeline, tmp_path):
    """train.base_precision=reference: post-training quantization of a LoRA. The bundle pins the
    16-bit base as the adapter's, verification accepts exactly that base, and evaluation's
    reference pass is the precision the adapter was trained in."""
    from pipeline.bundle.build import build_bundle
    from pipeline.bundle.verify import adapter_trained_on, verify_bundle
    from pipeline.evaluate import evaluate
    from safetensors.torch import load_file

    from pipeline.train import train

    p = tiny_pipeline["params"]
    params = load_section("train", p).model_copy(update={"base_precision": "reference"})
    report = train(params, tiny_pipeline["base_q"], tiny_pipeline["base"], tiny_pipeline["data"], tmp_path / "adapter")
    assert report["base_precision"] == "reference"
    mine = load_file(tmp_path / "adapter/adapter_model.safetensors")
    qlora = load_file(tiny_pipeline["adapter"] / "adapter_model.safetensors")
    assert mine.keys() == qlora.keys()
    assert any(not (mine[k] == qlora[k]).all() for k in mine)  # other base, other gradients

    build_bundle(load_section("bundle", p), tiny_pipeline["base"], tiny_pipeline["base_q"], tmp_path / "adapter",
                 tmp_path / "bundle")
    m = verify_bundle(tmp_path / "bundle").manifest
    assert m.adapter.base_digest == m.base.source_sha256 and adapter_trained_on(m) == "reference"
    assert m.quantization.method == "nf4"
    shipped = verify_bundle(tiny_pipeline["bundle"]).manifest
    assert adapter_trained_on(shipped) == "shipped" and shipped.bundle_digest != m.bundle_digest

    ev_params = load_section("evaluate", p).model_copy(update={"suite": str(REPO / "eval_suites/discharge")})
    ev, _, _ = evaluate(ev_params, tmp_path / "bundle", tiny_pipeline["base"])
    assert ev["bundle"]["adapter_trained_on"] == "reference"
    assert f"base (lock {m.base.source_sha256[:12]})" in ev["damage"]["reference"]  # a real second pass


def test_reference_training_refuses_a_16bit_base_that_base_q_was_not_quantized_from(tiny_pipeline, tmp_path):
    import shutil

    from pipeline.files import atomic_write_json, read_json
    from pipeline.train import train

    base_q = tmp_path / "base_q"
    shutil.copytree(tiny_pipeline["base_q"], base_q)
    quant = read_json(base_q / "quantize.json")
    atomic_write_json(base_q / "quantize.json", {**quant, "base_lock_sha256": "0" * 64})
    params = load_section("train", tiny_pipeline["params"]).model_copy(update={"base_precision": "reference"})
    with pytest.raises(ValueError, match="not the base"):
        train(params, base_q, tiny_pipeline["base"], tiny_pipeline["data"], tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()
