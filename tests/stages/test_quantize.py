"""quantize: the measured bits per quantized parameter are what the saved files hold, near 4.127."""

from __future__ import annotations

import json

from safetensors import safe_open

from pipeline.files import read_json

QLORA_NF4_DQ_BITS = 4 + 8 / 64 + 32 / (64 * 256)  # the QLoRA paper's 4.127 at blocksize 64


def test_measured_bits_per_param_match_the_saved_tensors_and_the_paper(tiny_pipeline):
    report = read_json(tiny_pipeline["base_q"] / "quantize.json")
    measured = report["measured"]
    assert report["bnb_config"]["bnb_4bit_quant_type"] == "nf4" and report["bnb_config"]["bnb_4bit_use_double_quant"]
    # Recount from the safetensors bytes, not from the loaded modules: packed codes, 8-bit
    # absmax, fp32 second-level absmax, plus one fp32 offset per layer (kept in the layer's
    # quant-state JSON blob).
    bits = params = layers = 0
    for f in tiny_pipeline["base_q"].glob("*.safetensors"):
        with safe_open(f, "pt") as st:
            for key in st.keys():
                if not key.endswith(".weight.quant_state.bitsandbytes__nf4"):
                    continue
                stem = key[: -len(".quant_state.bitsandbytes__nf4")]
                blob = json.loads(bytes(st.get_tensor(key).tolist()))
                shape = blob["shape"]
                layers += 1
                params += shape[0] * shape[1]
                for part in (stem, f"{stem}.absmax", f"{stem}.nested_absmax"):
                    t = st.get_tensor(part)
                    bits += t.numel() * t.element_size() * 8
                bits += 32  # the offset
    assert layers == measured["quantized_layers"] > 0 and params == measured["quantized_params"]
    assert bits / params == measured["bits_per_param"]
    # The tiny model's 64-wide layers pad the second level a little; still within 1%.
    assert abs(measured["bits_per_param"] / QLORA_NF4_DQ_BITS - 1) < 0.01


def test_the_manifest_records_the_measured_bits(tiny_pipeline):
    manifest = read_json(tiny_pipeline["bundle"] / "manifest.json")
    report = read_json(tiny_pipeline["base_q"] / "quantize.json")
    assert manifest["quantization"]["bits_per_param"] == report["measured"]["bits_per_param"]
