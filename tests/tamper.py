"""Ways a bundle gets tampered with or broken, shared by the verifier's and the server's tests.

Each tamper edits a bundle copy in place and returns (the file the refusal must name, a phrase
the refusal must contain). Several also rewrite the manifest so its hashes and digest match
the edit: the checks past the hash layer must hold against a tamperer who can do that too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from pipeline.bundle.manifest import MANIFEST_NAME, FileEntry, compute_bundle_digest
from pipeline.files import sha256_file


def flip_byte(path: Path, offset: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def resign(bundle: Path, **section_updates) -> None:
    """Rewrite the manifest so its file entries and digest match the (edited) files."""
    raw = json.loads((bundle / MANIFEST_NAME).read_text())
    for section in ("base", "tokenizer", "adapter"):
        for rel in raw[section]["files"]:
            raw[section]["files"][rel] = FileEntry(sha256=sha256_file(bundle / rel),
                                                   size=(bundle / rel).stat().st_size).model_dump()
    for key, value in section_updates.items():
        section, field = key.split("__")
        raw[section][field] = value
    raw["bundle_digest"] = compute_bundle_digest(raw)
    (bundle / MANIFEST_NAME).write_text(json.dumps(raw))


def _flip(rel: str) -> Callable[[Path], tuple[str, str]]:
    def tamper(b: Path) -> tuple[str, str]:
        flip_byte(b / rel, offset=(b / rel).stat().st_size // 2)
        return rel, "sha256 mismatch"
    return tamper


def swapped_chat_template(b: Path) -> tuple[str, str]:
    rel = "tokenizer/chat_template.jinja"
    (b / rel).write_text((b / rel).read_text().replace("<|im_start|>", "<|im_start|> "))
    resign(b)  # hashes agree with the new template; the pinned template hash does not
    return rel, "chat template differs"


def adapter_for_another_base(b: Path) -> tuple[str, str]:
    resign(b, adapter__base_digest="0" * 64)
    return "adapter/", "trained on another base"


def missing_file(b: Path) -> tuple[str, str]:
    (b / "adapter/adapter_config.json").unlink()
    return "adapter/adapter_config.json", "missing"


def extra_file(b: Path) -> tuple[str, str]:
    (b / "adapter/notes.txt").write_text("not part of the release")
    return "adapter/notes.txt", "extra file"


def symlink(b: Path) -> tuple[str, str]:
    target = b / "adapter/adapter_config.json"
    outside = b.parent / "outside.json"
    target.rename(outside)
    os.symlink(outside, target)
    return "adapter/adapter_config.json", "symlink"


def path_escape(b: Path) -> tuple[str, str]:
    raw = json.loads((b / MANIFEST_NAME).read_text())
    entry = raw["adapter"]["files"].pop("adapter/adapter_config.json")
    raw["adapter"]["files"]["../adapter_config.json"] = entry
    raw["bundle_digest"] = compute_bundle_digest(raw)
    (b / MANIFEST_NAME).write_text(json.dumps(raw))
    return "../adapter_config.json", "escapes the bundle"


def pickle_file(b: Path) -> tuple[str, str]:
    (b / "adapter/adapter_model.bin").write_bytes(b"\x80\x04K\x01.")
    return "adapter/adapter_model.bin", "not allowed"


def remote_code(b: Path) -> tuple[str, str]:
    rel = "base_q/config.json"
    cfg = json.loads((b / rel).read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (b / rel).write_text(json.dumps(cfg))
    resign(b)
    return rel, "auto_map"


def edited_system_prompt(b: Path) -> tuple[str, str]:
    """The pinned system prompt changes what every request without one is answered with: it is
    digested, so an edit that keeps the old digest is refused."""
    raw = json.loads((b / MANIFEST_NAME).read_text())
    raw["tokenizer"]["system_prompt"] = "You are a helpful AI assistant."
    (b / MANIFEST_NAME).write_text(json.dumps(raw))
    return MANIFEST_NAME, "bundle_digest does not match"


TAMPERS: dict[str, Callable[[Path], tuple[str, str]]] = {
    "flipped byte in the base": _flip("base_q/model.safetensors"),
    "flipped byte in the adapter": _flip("adapter/adapter_model.safetensors"),
    "flipped byte in the tokenizer": _flip("tokenizer/tokenizer.json"),
    "swapped chat template": swapped_chat_template,
    "adapter trained on another base": adapter_for_another_base,
    "missing file": missing_file,
    "extra file": extra_file,
    "symlink": symlink,
    "path escaping the bundle": path_escape,
    "pickle file": pickle_file,
    "remote code in a config": remote_code,
    "edited system prompt": edited_system_prompt,
}
