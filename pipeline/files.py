"""File helpers every stage shares: hashing, canonical JSON, atomic writes.

Stages write outputs atomically (temp then rename) so that an interrupted run never leaves a
half-written file that DVC or a later stage would take for a finished one. Every file write
goes through `atomic_open`, the one implementation (fsync before the rename, and of the
directory after it, so a power cut cannot leave an empty file under the final name either).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, Iterator

_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def list_files(root: str | Path) -> list[str]:
    """Relative POSIX paths of every entry under root that is not a directory, sorted."""
    root = Path(root)
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            out.append((Path(dirpath) / name).relative_to(root).as_posix())
    return sorted(out)


def hash_files(root: str | Path, rel_paths: list[str], workers: int | None = None) -> dict[str, str]:
    """sha256 of many files in parallel (hashlib releases the GIL, so threads scale)."""
    root = Path(root)
    workers = workers or min(8, (os.cpu_count() or 2))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        digests = pool.map(lambda p: sha256_file(root / p), rel_paths)
    return dict(zip(rel_paths, digests))


def canonical_json(obj: Any) -> str:
    """The one serialisation digests are taken over: sorted keys, no whitespace, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest_json(obj: Any) -> str:
    return sha256_bytes(canonical_json(obj).encode("utf-8"))


def _fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable. Some filesystems cannot fsync a directory (EINVAL); the
    rename is still atomic there, only not yet on disk, which is all they offer."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", *, permissions: int = 0o644) -> Iterator[IO]:
    """Write `path` all or nothing: yield a temp file beside it ("w" text, UTF-8 with \n line
    ends, or "wb"); when the block ends cleanly the file is flushed and fsynced, renamed over
    `path` and the directory fsynced, so a crash leaves the old file or the new one, never a
    torn one. If the block raises, the temp file is removed and `path` is untouched. The temp
    file is created owner-only and gets `permissions` just before the rename, so a secret
    written with 0o600 is never readable by others, even half-written."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes with mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with (os.fdopen(fd, "wb") if mode == "wb" else os.fdopen(fd, "w", encoding="utf-8", newline="\n")) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, permissions)  # mkstemp makes 0600; outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _fsync_tree(root: Path) -> None:
    """fsync every regular file under `root`, then every directory: whatever wrote them (torch,
    safetensors, a copy, a hard link) did not, and a rename is only as durable as what it names."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            file = Path(dirpath) / name
            if file.is_symlink():
                continue
            fd = os.open(file, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temp directory beside `path`; on success its files are fsynced and it replaces
    `path` in one rename (the parent fsynced after), so a crash leaves the old directory or the
    new one, complete. If the block raises, the temp directory is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        _fsync_tree(tmp)
        os.chmod(tmp, 0o755)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(path.parent)


def verify_files(root: str | Path, entries: dict[str, dict]) -> None:
    """Re-hash files against {name: {"sha256": ...}}; raise naming the first that differs."""
    root = Path(root)
    for name in sorted(entries):
        if not (root / name).is_file():
            raise RuntimeError(f"{root / name} is missing")
    actual = hash_files(root, sorted(entries))
    for name in sorted(entries):
        if actual[name] != entries[name]["sha256"]:
            raise RuntimeError(f"{root / name} changed: expected sha256 {entries[name]['sha256']}, got {actual[name]}")


def files_digest(files: dict) -> str:
    """Digest of a set of files by name and content hash ({name: {"sha256": ...}} or objects
    with a .sha256): the adapter's `base_digest` is this over the base_q files."""
    flat = {k: (v["sha256"] if isinstance(v, dict) else v.sha256) for k, v in files.items()}
    return digest_json(flat)


def git_commit() -> str | None:
    """HEAD of the repository the pipeline runs in (None outside git): provenance, not identity."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
