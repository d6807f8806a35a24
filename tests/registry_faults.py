"""Faults injected into a release registry by hand, as a user would: a flipped byte or a deleted
object in the remote, and a remote that stops accepting writes partway through a push.

The registry is a local DVC remote; its objects sit at files/md5/<2 hex>/<30 hex>, and a
release directory's listing (relpath -> md5) is the `.dir` object its index entry names.
"""

from __future__ import annotations

import contextlib
import errno
import json
from pathlib import Path
from typing import Iterator

from tests.tamper import flip_byte


def _object(registry: Path, md5: str) -> Path:
    return Path(registry) / "files" / "md5" / md5[:2] / md5[2:]


def blob(registry: str | Path, digest: str, relpath: str) -> Path:
    """Where the remote keeps the release file `relpath` of the release of `digest`."""
    pointer = json.loads((Path(registry) / "tailgate" / "releases" / f"{digest}.json").read_text())
    listing = json.loads(_object(Path(registry), pointer["dvc"]["md5"]).read_text())
    [md5] = [e["md5"] for e in listing if e["relpath"] == relpath]
    return _object(Path(registry), md5)


def objects(registry: str | Path) -> set[str]:
    """Every object the remote holds (md5 names, .dir listings included)."""
    root = Path(registry) / "files" / "md5"
    return {p.parent.name + p.name for p in root.glob("*/*")} if root.is_dir() else set()


def corrupt_blob(registry: str | Path, digest: str, relpath: str) -> Path:
    path = blob(registry, digest, relpath)
    path.chmod(0o644)  # DVC stores objects read-only
    flip_byte(path)
    return path


@contextlib.contextmanager
def unwritable_after(n_files: int) -> Iterator[list[str]]:
    """The local remote accepts `n_files` uploads, then refuses every write as a full or
    read-only disk would (EACCES). Yields the paths that were written."""
    from dvc_objects.fs.local import LocalFileSystem

    real = LocalFileSystem.put_file
    written: list[str] = []

    def put_file(self, lpath, rpath, *args, **kwargs):
        if len(written) >= n_files:
            raise PermissionError(errno.EACCES, "remote became unwritable (injected)", str(rpath))
        real(self, lpath, rpath, *args, **kwargs)
        written.append(str(rpath))

    LocalFileSystem.put_file = put_file
    try:
        yield written
    finally:
        LocalFileSystem.put_file = real
