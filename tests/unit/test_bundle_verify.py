"""Loading is verifying: every tampering is refused, naming the file."""

from __future__ import annotations

import json
import os

import pytest

from pipeline.bundle.manifest import MANIFEST_NAME, Manifest, compute_bundle_digest
from pipeline.bundle.verify import BundleError, verify_bundle
from tests.tamper import TAMPERS, flip_byte, resign


def test_pristine_bundle_verifies(bundle_copy):
    vb = verify_bundle(bundle_copy)
    assert isinstance(vb.manifest, Manifest)
    assert set(vb.manifest.all_files()) == {p.relative_to(bundle_copy).as_posix()
                                            for p in bundle_copy.rglob("*") if p.is_file()} - {MANIFEST_NAME}


@pytest.mark.parametrize("rel", ["adapter/adapter_model.safetensors", "base_q/model.safetensors",
                                 "tokenizer/tokenizer.json", "tokenizer/chat_template.jinja"])
def test_changed_file_is_refused_by_name(bundle_copy, rel):
    flip_byte(bundle_copy / rel, offset=len((bundle_copy / rel).read_bytes()) // 2)
    with pytest.raises(BundleError) as err:
        verify_bundle(bundle_copy)
    assert err.value.path == rel and "sha256" in str(err.value)
    assert err.value.expected != err.value.actual


def test_swapped_chat_template_is_refused(bundle_copy):
    template = bundle_copy / "tokenizer/chat_template.jinja"
    template.write_text(template.read_text().replace("<|im_start|>", "<|im_start|> "))
    with pytest.raises(BundleError, match="chat_template.jinja"):
        verify_bundle(bundle_copy)


def test_extra_file_is_refused(bundle_copy):
    (bundle_copy / "adapter/notes.txt").write_text("not part of the release")
    with pytest.raises(BundleError, match="notes.txt.*extra"):
        verify_bundle(bundle_copy)


def test_missing_file_is_refused(bundle_copy):
    (bundle_copy / "adapter/adapter_config.json").unlink()
    with pytest.raises(BundleError) as err:
        verify_bundle(bundle_copy)
    assert err.value.path == "adapter/adapter_config.json" and "missing" in str(err.value)


def test_pickle_file_is_refused(bundle_copy):
    (bundle_copy / "adapter/adapter_model.bin").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(BundleError, match="adapter_model.bin.*not allowed"):
        verify_bundle(bundle_copy)


def test_symlink_is_refused(bundle_copy):
    target = bundle_copy / "adapter/adapter_config.json"
    real = bundle_copy.parent / "outside.json"
    target.rename(real)
    os.symlink(real, target)
    with pytest.raises(BundleError, match="symlink"):
        verify_bundle(bundle_copy)


def test_edited_manifest_is_refused(bundle_copy):
    raw = json.loads((bundle_copy / MANIFEST_NAME).read_text())
    raw["inference"]["max_context_tokens"] += 1  # digest no longer matches the content
    (bundle_copy / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="bundle_digest"):
        verify_bundle(bundle_copy)


def test_system_prompt_is_pinned_and_digested(bundle_copy):
    manifest = verify_bundle(bundle_copy).manifest
    trained = json.loads((bundle_copy / "adapter/training.json").read_text())["system_prompt"]
    assert manifest.tokenizer.system_prompt == trained is not None
    named, phrase = TAMPERS["edited system prompt"](bundle_copy)
    with pytest.raises(BundleError) as err:
        verify_bundle(bundle_copy)
    assert err.value.path == named and phrase in str(err.value)


@pytest.mark.parametrize("edit", ["prompt", "null"])
def test_a_resigned_system_prompt_edit_is_another_bundle(bundle_copy, edit):
    """Pinned means digested: rewriting the prompt (or unpinning it) with a matching digest gives
    a bundle with another digest, which no evaluation, golden file or release describes."""
    before = verify_bundle(bundle_copy).manifest.bundle_digest
    resign(bundle_copy, tokenizer__system_prompt="Be brief." if edit == "prompt" else None)
    assert verify_bundle(bundle_copy).manifest.bundle_digest != before


def test_schema_v1_manifest_is_refused(bundle_copy):
    """v1 manifests pin no system prompt; serving one would guess: refused, rebuild it."""
    raw = json.loads((bundle_copy / MANIFEST_NAME).read_text())
    raw["schema_version"] = 1
    del raw["tokenizer"]["system_prompt"]
    raw["bundle_digest"] = compute_bundle_digest(raw)
    (bundle_copy / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="schema_version.*rebuild") as err:
        verify_bundle(bundle_copy)
    assert (err.value.expected, err.value.actual) == ("2", "1")


def test_adapter_for_another_base_is_refused_even_with_a_rewritten_manifest(bundle_copy):
    resign(bundle_copy, adapter__base_digest="0" * 64)
    with pytest.raises(BundleError, match="another base"):
        verify_bundle(bundle_copy)


def test_adapter_pinned_to_the_16bit_source_base_is_accepted_as_post_training_quantized(bundle_copy):
    """The one other base an adapter may name: the 16-bit base the shipped one was quantized from."""
    from pipeline.bundle.verify import adapter_trained_on

    raw = json.loads((bundle_copy / MANIFEST_NAME).read_text())
    resign(bundle_copy, adapter__base_digest=raw["base"]["source_sha256"])
    assert adapter_trained_on(verify_bundle(bundle_copy).manifest) == "reference"


def test_remote_code_config_is_refused_even_with_a_rewritten_manifest(bundle_copy):
    cfg_path = bundle_copy / "base_q/config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    cfg_path.write_text(json.dumps(cfg))
    resign(bundle_copy)
    with pytest.raises(BundleError, match="auto_map"):
        verify_bundle(bundle_copy)


def test_manifest_sections_forbid_unknown_keys(bundle_copy):
    raw = json.loads((bundle_copy / MANIFEST_NAME).read_text())
    raw["adapter"]["trust_remote_code"] = True
    raw["bundle_digest"] = compute_bundle_digest(raw)
    (bundle_copy / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="schema"):
        verify_bundle(bundle_copy)


def test_manifest_path_escaping_the_bundle_is_refused(bundle_copy):
    raw = json.loads((bundle_copy / MANIFEST_NAME).read_text())
    entry = raw["adapter"]["files"].pop("adapter/adapter_config.json")
    raw["adapter"]["files"]["../adapter_config.json"] = entry
    raw["bundle_digest"] = compute_bundle_digest(raw)
    (bundle_copy / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="escapes"):
        verify_bundle(bundle_copy)


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_corrupt_manifest_is_a_bundle_error(bundle_copy, content):
    (bundle_copy / MANIFEST_NAME).write_bytes(content)
    with pytest.raises(BundleError, match=MANIFEST_NAME):
        verify_bundle(bundle_copy)
