"""The GGUF export carries the bundle: its merged weights, chat template, stop tokens, tokenizer.

Read back two ways that share nothing with the writer: gguf's own reader (the metadata) and
transformers' GGUF loader (weights and tokenizer rebuilt from the file alone, so the rotary
permutation, the tensor names and the tokenizer fields are checked by an independent reader).
Evaluation through llama.cpp itself is not here: it needs llama-cpp-python built.

Stated tolerances on the tiny model (float32 reference = the merged export before any cast):
an f32 GGUF's logits within 1e-4 (measured: 0), a q8_0 one's within 2e-2 (measured: 5.6e-3) and
not equal (it was quantized). The f32 case is what proves the layout: with the query
projection left unpermuted it fails, while the random tiny model's near-uniform attention moves
its logits too little for the q8_0 tolerance to tell.
"""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.export import EXPORT_RECORD, ExportError, check_gguf, export_gguf, load_merged
from pipeline.export.gguf_export import read_fields

PROMPT = [{"role": "user", "content": "Discharge note: admitted with pneumonia, allergy to penicillin (rash)."}]


@pytest.fixture(scope="module")
def merged(tiny_pipeline):
    return load_merged(tiny_pipeline["bundle"])


@pytest.fixture(scope="module")
def exports(tiny_pipeline, tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    return {t: (root / t, export_gguf(tiny_pipeline["bundle"], root / t, t)) for t in ("f32", "q8_0")}


def _from_gguf(folder, record):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=record["file"], dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder, gguf_file=record["file"])


@pytest.mark.parametrize("gguf_type, tolerance", [("f32", 1e-4), ("q8_0", 2e-2)])
def test_the_gguf_reproduces_the_merged_model(exports, merged, gguf_type, tolerance):
    bundle, reference = merged
    reference = reference.float()  # the unquantized tensors (embeddings, norms) come in the compute dtype
    folder, record = exports[gguf_type]
    model, tok = _from_gguf(folder, record)
    from transformers import AutoTokenizer

    own = AutoTokenizer.from_pretrained(bundle.root / "tokenizer")
    # the tokenizer rebuilt from the file renders and encodes the chat prompt as the bundle does
    ids = own.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    assert tok.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False) == ids
    assert tok(ids, add_special_tokens=False)["input_ids"] == own(ids, add_special_tokens=False)["input_ids"]
    x = torch.tensor([own(ids, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        want, got = reference(input_ids=x).logits[0], model(input_ids=x).logits[0]
    diff = float((want - got).abs().max())
    print(f"\n{gguf_type}: max |delta logit| vs the merged float32 model = {diff:.2e}")
    assert diff <= tolerance
    if gguf_type == "q8_0":
        assert diff > 0 and record["tensors_by_type"].get("Q8_0", 0) >= 14 and not record["f16_fallbacks"]


def test_the_file_names_the_bundle_its_stop_and_system_prompt(exports, merged):
    bundle, _ = merged
    folder, record = exports["q8_0"]
    m = bundle.manifest
    fields = read_fields(folder / record["file"])
    assert fields["general.architecture"] == "llama" and fields["tailgate.bundle_digest"] == m.bundle_digest
    assert fields["tokenizer.ggml.eos_token_id"] == m.tokenizer.stop_token_ids[0]
    assert check_gguf(folder / record["file"], bundle) == []
    saved = json.loads((folder / EXPORT_RECORD).read_text())
    assert saved["files"][record["file"]] and saved["bundle_digest"] == m.bundle_digest
    modelfile = (folder / "Modelfile").read_text()
    assert f"FROM ./{record['file']}" in modelfile and "PARAMETER temperature 0" in modelfile
    assert "PARAMETER stop" in modelfile
    if m.tokenizer.system_prompt is not None:
        assert f'SYSTEM """{m.tokenizer.system_prompt}"""' in modelfile


def test_a_gguf_without_its_chat_template_is_refused_and_nothing_is_left(tiny_pipeline, tmp_path, monkeypatch):
    import gguf

    monkeypatch.setattr(gguf.GGUFWriter, "add_chat_template", lambda self, value: None)
    with pytest.raises(ExportError, match="chat_template"):
        export_gguf(tiny_pipeline["bundle"], tmp_path / "broken", "f16")
    assert not (tmp_path / "broken").exists() and not list(tmp_path.glob(".broken*"))


def test_a_gguf_whose_stop_token_was_lost_is_named(exports, merged, tmp_path):
    """check_gguf on a file whose end of generation is the base's, not the bundle's end of turn."""
    import gguf

    bundle, _ = merged
    folder, record = exports["f32"]
    reader = gguf.GGUFReader(folder / record["file"])
    writer = gguf.GGUFWriter(tmp_path / "lost.gguf", "llama")
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = field.contents()
        if key == "tokenizer.ggml.eos_token_id":
            value = max(set(range(8)) - set(bundle.manifest.tokenizer.stop_token_ids))
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, kind, sub_type=sub)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    assert any("ends generation" in p for p in check_gguf(tmp_path / "lost.gguf", bundle))
