"""bundle stage: assemble the self-contained, verifiable bundle and its manifest.

Reads: params `bundle`; `artifacts/base/` (16-bit base lock and tokenizer), `artifacts/base_q/`
(pre-quantized base and quantize.json), `artifacts/adapter/` (adapter + training.json, whose
system prompt the manifest pins).
Writes: `artifacts/bundle/` = manifest.json + base_q/ + adapter/ + tokenizer/.

Files are hard-linked where the filesystem allows (no duplicated bytes), copied otherwise.
The bundle is verified with the same loader every consumer uses before the stage succeeds.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from datetime import datetime, timezone
from pathlib import Path

from pipeline.artifacts import BASE_LOCK as LOCK_NAME
from pipeline.artifacts import QUANTIZE_REPORT as QUANT_REPORT
from pipeline.artifacts import TRAINING_META
from pipeline.base import check_lock
from pipeline.bundle.manifest import (
    ALLOWED_SUFFIXES, MANIFEST_NAME, AdapterSection, BaseSection, BuiltSection, FileEntry, InferenceSection,
    SCHEMA_VERSION, Manifest, ProvenanceSection, QuantizationSection, TokenizerSection, compute_bundle_digest,
    files_digest,
)
from pipeline.bundle.verify import BundleError, verify_bundle
from pipeline.chat import stop_token_ids
from pipeline.files import (
    atomic_dir, atomic_write_text, git_commit, hash_files, read_json, sha256_bytes, sha256_file,
)
from pipeline.params import BundleParams

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                   "vocab.json", "merges.txt")
BASE_Q_SKIP = (QUANT_REPORT,)


def _place(src: Path, dst: Path, mode: str) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if mode == "hardlink":
        try:
            os.link(src, dst)
            return
        except OSError:
            pass  # another filesystem, or links not allowed: fall back to a copy
    shutil.copyfile(src, dst)


def _entries(root: Path, prefix: str) -> dict[str, FileEntry]:
    names = sorted(p.name for p in (root / prefix).iterdir() if p.is_file())
    return {f"{prefix}/{n}": FileEntry(sha256=h, size=(root / prefix / n).stat().st_size)
            for n, h in hash_files(root / prefix, names).items()}


def build_bundle(params: BundleParams, base_dir: str | Path, base_q_dir: str | Path, adapter_dir: str | Path,
                 out_dir: str | Path) -> Manifest:
    from transformers import AutoTokenizer

    base_dir, base_q_dir, adapter_dir = Path(base_dir), Path(base_q_dir), Path(adapter_dir)
    lock = check_lock(base_dir)
    quant = read_json(base_q_dir / QUANT_REPORT)
    training = read_json(adapter_dir / TRAINING_META)
    base_q_digest = files_digest(quant["files"])
    # An adapter learns on the base that ships (QLoRA) or on the 16-bit base that base was
    # quantized from (train.base_precision=reference); the manifest keeps which, and nothing else.
    if training["base_digest"] not in (base_q_digest, sha256_file(base_dir / LOCK_NAME)):
        raise BundleError("adapter/", "adapter was trained on another base", base_q_digest, training["base_digest"])

    tokenizer = AutoTokenizer.from_pretrained(base_dir, trust_remote_code=False)
    stops = stop_token_ids(tokenizer)
    with atomic_dir(out_dir) as tmp:
        for name in quant["files"]:
            _place(base_q_dir / name, tmp / "base_q" / name, params.link_mode)
        for p in sorted(adapter_dir.iterdir()):
            if p.is_file():
                _place(p, tmp / "adapter" / p.name, params.link_mode)
        for name in TOKENIZER_FILES:
            if (base_dir / name).exists():
                _place(base_dir / name, tmp / "tokenizer" / name, params.link_mode)
        for p in Path(tmp).rglob("*"):
            if p.is_file() and not p.name.endswith(ALLOWED_SUFFIXES):
                raise BundleError(str(p.relative_to(tmp)), "file type not allowed in a bundle")

        adapter_cfg = json.loads((tmp / "adapter" / "adapter_config.json").read_text())
        data = {
            "base": BaseSection(source=lock["source"], source_sha256=sha256_file(base_dir / LOCK_NAME),
                                architecture=lock["architecture"], num_parameters=lock["num_parameters"],
                                files=_entries(tmp, "base_q")),
            "quantization": QuantizationSection(
                method=quant["method"], compute_dtype=quant["params"]["compute_dtype"], bnb_config=quant["bnb_config"],
                bitsandbytes_version=quant["bitsandbytes_version"], bits_per_param=quant["measured"]["bits_per_param"]),
            "tokenizer": TokenizerSection(
                files=_entries(tmp, "tokenizer"),
                chat_template_sha256=sha256_bytes((tokenizer.chat_template or "").encode("utf-8")),
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, stop_token_ids=stops,
                # An adapter trained before training.json recorded it: none pinned, as it was served.
                system_prompt=training.get("system_prompt")),
            "adapter": AdapterSection(files=_entries(tmp, "adapter"), lora_config=adapter_cfg,
                                      base_digest=training["base_digest"]),
            "inference": InferenceSection(max_context_tokens=training["max_seq_len_tokens"],
                                          max_new_tokens=params.max_new_tokens, temperature=params.temperature,
                                          top_p=params.top_p),
            "provenance": ProvenanceSection(
                curated_data_digest=training["curated_data_digest"], params_digest=training["params_digest"],
                seed=training["seed"], versions=training["versions"], hardware=training["hardware"],
                optimizer=training["optimizer"]),
        }
        as_json = {"schema_version": SCHEMA_VERSION, **{k: v.model_dump(mode="json") for k, v in data.items()}}
        manifest = Manifest(
            bundle_digest=compute_bundle_digest(as_json), **data,
            built=BuiltSection(time_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               host=socket.gethostname(), git_commit=git_commit(),
                               source_paths={"base": str(base_dir), "base_q": str(base_q_dir),
                                             "adapter": str(adapter_dir)}))
        atomic_write_text(tmp / MANIFEST_NAME, manifest.model_dump_json(indent=2) + "\n")
        verify_bundle(tmp)  # the stage fails unless the loader every consumer uses accepts it
    return manifest
