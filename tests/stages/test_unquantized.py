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
