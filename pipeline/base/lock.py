"""The base's lock: the sha256 and size of every file the base stage wrote.

Kept apart from fetch.py and free of torch, because every later stage (quantize, train, bundle,
evaluate) re-hashes the base through check_lock and must not pay for a torch import to do it.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.artifacts import BASE_LOCK as LOCK_NAME
from pipeline.files import read_json, verify_files


def check_lock(base_dir: str | Path) -> dict:
    """Re-hash the base against its lock; raise naming the first changed file. Returns the lock."""
    lock = read_json(Path(base_dir) / LOCK_NAME)
    verify_files(base_dir, lock["files"])
    return lock
