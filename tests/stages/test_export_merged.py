"""The merged export is the shipped model: dequant(NF4) + the adapter, not the 16-bit base + the
adapter, with the bundle's tokenizer, end-of-turn tokens and system prompt.

Stated tolerance: against the shipped bundle run on bitsandbytes' dequantize path (the weights
the export merges), a float32 export's logits differ by at most 1e-2 on the tiny model, whose
compute dtype is bfloat16: the shipped forward multiplies in bfloat16, the export in float32
(measured here: 4.6e-3). The usual recipe (the adapter merged into the original 16-bit weights)
must be at least ten times further away (measured: 8.0e-2): that is what an export nobody
tested against the shipped model gets wrong. Greedy tokens must all agree."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.export import EXPORT_RECORD, export_merged
from pipeline.files import sha256_file

PROMPTS = ["Discharge note: patient admitted with pneumonia, treated with antibiotics.",
           "Summarise: stopped warfarin, allergy to penicillin (rash).", "Hello"]


def _logits(model, tokenizer, text: str) -> torch.Tensor:
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits[0].float()


def _greedy(model, tokenizer, text: str, n: int = 12) -> list[int]:
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=ids, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


@pytest.fixture(scope="module")
def shipped(tiny_pipeline):
    from transformers import AutoTokenizer

    from pipeline.engines.hf import load_model
    from pipeline.train.guard import keep_differentiable

    bundle = tiny_pipeline["bundle"]
    model = load_model(bundle / "base_q", bundle / "adapter")
    keep_differentiable(model)  # the dequantize path on every host: the arithmetic the export merges
    model.eval()
    return model, AutoTokenizer.from_pretrained(bundle / "tokenizer")


def test_the_merged_export_reproduces_the_shipped_logits(tiny_pipeline, shipped, tmp_path):
    from transformers import AutoModelForCausalLM

    from pipeline.engines.hf import load_model

    model, tok = shipped
    record = export_merged(tiny_pipeline["bundle"], tmp_path / "merged", dtype="float32")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    naive = load_model(tiny_pipeline["base"], tiny_pipeline["bundle"] / "adapter", torch.float32).merge_and_unload()
    ours = max((_logits(merged, tok, p) - _logits(model, tok, p)).abs().max().item() for p in PROMPTS)
    usual = max((_logits(naive, tok, p) - _logits(model, tok, p)).abs().max().item() for p in PROMPTS)
    print(f"\nmax |logit - shipped|: merged export {ours:.2e}, adapter merged into the 16-bit base {usual:.2e}")
    assert ours <= 1e-2
    assert usual >= 10 * ours
    same = sum(a == b for p in PROMPTS for a, b in zip(_greedy(merged, tok, p), _greedy(model, tok, p)))
    print(f"greedy tokens equal to the shipped model's: {same}/{12 * len(PROMPTS)}")
    assert same == 12 * len(PROMPTS)
    assert record["dtype"] == "float32" and record["kind"] == "merged"


def test_the_export_carries_what_the_bundle_pins(tiny_pipeline, tmp_path):
    from pipeline.bundle.verify import verify_bundle

    bundle = verify_bundle(tiny_pipeline["bundle"])
    out = tmp_path / "merged16"
    record = export_merged(bundle.root, out)  # the bundle's compute dtype, bfloat16 on the tiny bundle
    for f in (bundle.root / "tokenizer").iterdir():  # the chat template byte for byte
        assert (out / f.name).read_bytes() == f.read_bytes(), f.name
    gen = json.loads((out / "generation_config.json").read_text())
    eos = gen["eos_token_id"] if isinstance(gen["eos_token_id"], list) else [gen["eos_token_id"]]
    assert eos == list(bundle.manifest.tokenizer.stop_token_ids)
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    written = json.loads((out / EXPORT_RECORD).read_text())
    assert written == record and written["bundle_digest"] == bundle.manifest.bundle_digest
    assert written["system_prompt"] == bundle.manifest.tokenizer.system_prompt
    assert all(sha256_file(out / name) == digest for name, digest in written["files"].items())
    with pytest.raises(FileExistsError):
        export_merged(bundle.root, out)


def test_the_command_exports_and_refuses_a_tampered_bundle(tiny_pipeline, bundle_copy, tmp_path, capsys):
    from pipeline.export.__main__ import main

    assert main(["merged", "--bundle", str(tiny_pipeline["bundle"]), "--out", str(tmp_path / "ok")]) == 0
    assert (tmp_path / "ok/model.safetensors").is_file()
    assert main(["merged", "--bundle", str(tiny_pipeline["bundle"]), "--out", str(tmp_path / "ok")]) == 1
    assert "not empty" in capsys.readouterr().err
    (bundle_copy / "tokenizer/chat_template.jinja").write_text("{{ messages }}")
    assert main(["merged", "--bundle", str(bundle_copy), "--out", str(tmp_path / "bad")]) == 1
    assert "tokenizer/chat_template.jinja" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_a_layer_already_packed_for_the_bf16_cpu_kernel_is_refused(tiny_pipeline, tmp_path, monkeypatch):
    """On AVX512-BF16 hosts bitsandbytes repacks a 4-bit layer at its first eval forward, and
    dequantizing a repacked weight does not give the loaded tensor. Simulated here, so the
    refusal is tested on every host class (an AVX2 host never packs)."""
    import pipeline.export.merged as merged
    from pipeline.export import ExportError

    monkeypatch.setattr(merged, "is_packed", lambda layer: True)
    with pytest.raises(ExportError, match="packed CPU layout"):
        export_merged(tiny_pipeline["bundle"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
