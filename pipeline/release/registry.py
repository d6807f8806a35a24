"""The release registry: release directories in a DVC remote, found by bundle digest.

DVC stores objects by content (md5), not by name, so the registry keeps one small index entry
per release beside DVC's objects: `<remote>/tailgate/releases/<bundle_digest>.json`, a
ReleasePointer holding the DVC hash of the release directory. Pushing and pulling go through
DVC itself (any remote DVC supports: a local directory by default, S3 and others by config),
from a throwaway no-SCM DVC repository in a temporary directory. That keeps the release
independent of the pipeline repository's lock (the release stage runs inside `dvc repro`) and
lets a fresh directory with nothing but the remote URL pull a release.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import yaml

from pipeline.files import atomic_dir, sha256_file
from pipeline.release.record import RECORD_NAME, DvcObject, ReleaseError, ReleasePointer, ReleaseRecord, check_digest

log = logging.getLogger(__name__)

INDEX_PREFIX = ("tailgate", "releases")
ATTESTATION_PREFIX = ("tailgate", "attestations")  # <prefix>/<bundle_digest>/<name>.intoto.json
_REMOTE = "registry"  # the remote's name inside the throwaway repositories


def remote_config(name: str, repo_root: str | Path = ".") -> dict[str, Any]:
    """The named remote's settings from the pipeline repository's DVC config (repo and local
    files merged, relative local paths resolved), so credentials stay in DVC's own config."""
    from dvc.config import Config

    dvc_dir = Path(repo_root).absolute() / ".dvc"
    if not dvc_dir.is_dir():
        raise ReleaseError(f"{Path(repo_root).absolute()} is not a DVC repository; name the remote by URL instead")
    remotes = Config(dvc_dir=str(dvc_dir), validate=True).get("remote", {})
    if name not in remotes:
        raise ReleaseError(f"DVC remote {name!r} is not configured (known: {', '.join(sorted(remotes)) or 'none'}); "
                           f"add it with `dvc remote add {name} <url>`")
    return dict(remotes[name])


@contextlib.contextmanager
def _quiet_init() -> Iterator[None]:
    """`Repo.init` prints and logs a banner meant for a person at a terminal."""
    logger = logging.getLogger("dvc")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        shutil.copy2(src, dst)


class Registry:
    """Releases in one DVC remote. `remote` is a DVC remote config dict ({"url": ..., ...})."""

    def __init__(self, remote: dict[str, Any]):
        if not remote.get("url"):
            raise ReleaseError("a release remote needs a url")
        self.remote = dict(remote)
        url = str(self.remote["url"])
        if "://" not in url:  # a local directory: absolute, so the throwaway repos find it
            self.remote["url"] = str(Path(url).expanduser().absolute())

    @classmethod
    def from_name_or_url(cls, remote: str, repo_root: str | Path = ".") -> "Registry":
        """A remote named in the repository's DVC config, else a URL or path."""
        if "://" not in remote and "/" not in remote and (Path(repo_root) / ".dvc").is_dir():
            return cls(remote_config(remote, repo_root))
        return cls({"url": remote})

    @property
    def url(self) -> str:
        return str(self.remote["url"])

    @contextlib.contextmanager
    def _repo(self) -> Iterator[Any]:
        """A throwaway no-SCM DVC repository wired to the remote."""
        from dvc.repo import Repo

        tmp = tempfile.mkdtemp(prefix="tailgate-registry-")
        try:
            with _quiet_init(), Repo.init(tmp, no_scm=True) as repo, repo.config.edit() as conf:
                conf["core"]["analytics"] = False
                conf["remote"][_REMOTE] = self.remote
                # Links, not copies, where the filesystem allows: a release is gigabytes.
                conf["cache"]["type"] = "hardlink,copy"
            with Repo(tmp) as repo:
                yield repo
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _index_path(self, repo: Any, digest: str) -> tuple[Any, str]:
        remote = repo.cloud.get_remote(_REMOTE)
        return remote.fs, remote.fs.join(remote.path, *INDEX_PREFIX, f"{digest}.json")

    def push(self, release_dir: str | Path, record: ReleaseRecord) -> ReleasePointer:
        """Upload a release directory and index it under its bundle digest."""
        release_dir = Path(release_dir)
        digest = check_digest(record.bundle_digest)
        with self._repo() as repo:
            work = Path(repo.root_dir) / digest
            shutil.copytree(release_dir, work, copy_function=_link_or_copy)
            stage = repo.add(str(work))[0]
            out = stage.outs[0]
            obj = DvcObject(md5=out.hash_info.value, size=out.meta.size, nfiles=out.meta.nfiles)
            repo.push(remote=_REMOTE)
            pointer = ReleasePointer(bundle_digest=digest, dvc=obj,
                                     record_sha256=sha256_file(release_dir / RECORD_NAME),
                                     released_at=record.released_at)
            fs, path = self._index_path(repo, digest)
            fs.makedirs(fs.parent(path), exist_ok=True)
            if fs.exists(path):
                log.warning("bundle %s was released before; the index now points at this release", digest[:12])
            fs.pipe_file(path, (pointer.model_dump_json(indent=2) + "\n").encode())
        log.info("pushed release %s to %s (%d files, %.1f MB)", digest[:12], self.url, obj.nfiles, obj.size / 1e6)
        return pointer

    def _read_pointer(self, repo: Any, digest: str) -> ReleasePointer | None:
        fs, path = self._index_path(repo, digest)
        if not fs.exists(path):
            return None
        try:
            return ReleasePointer.model_validate_json(fs.cat_file(path))
        except ValueError as exc:
            raise ReleaseError(f"registry index entry {path} is unreadable: {exc}", path) from None

    def pointer(self, digest: str) -> ReleasePointer | None:
        digest = check_digest(digest)
        with self._repo() as repo:
            return self._read_pointer(repo, digest)

    def list(self) -> list[ReleasePointer]:
        with self._repo() as repo:
            fs, path = self._index_path(repo, "0" * 64)
            index = fs.parent(path)
            if not fs.exists(index):
                return []
            names = sorted(p for p in fs.ls(index, detail=False) if p.endswith(".json"))
            return [ReleasePointer.model_validate_json(fs.cat_file(p)) for p in names]

    def _attestation_dir(self, repo: Any, digest: str) -> tuple[Any, str]:
        remote = repo.cloud.get_remote(_REMOTE)
        return remote.fs, remote.fs.join(remote.path, *ATTESTATION_PREFIX, digest)

    def push_attestation(self, digest: str, path: str | Path) -> str:
        """Put an attestation file (pipeline/release/attest.py) beside the release of `digest`."""
        digest = check_digest(digest)
        with self._repo() as repo:
            if self._read_pointer(repo, digest) is None:
                raise ReleaseError(f"bundle {digest} has no release in {self.url} to attest")
            fs, folder = self._attestation_dir(repo, digest)
            fs.makedirs(folder, exist_ok=True)
            target = fs.join(folder, Path(path).name)
            fs.pipe_file(target, Path(path).read_bytes())
        return target

    def attestations(self, digest: str) -> dict[str, bytes]:
        """The attestation files kept beside the release of `digest` (name -> bytes), unverified."""
        digest = check_digest(digest)
        with self._repo() as repo:
            fs, folder = self._attestation_dir(repo, digest)
            if not fs.exists(folder):
                return {}
            return {p: fs.cat_file(p) for p in sorted(fs.ls(folder, detail=False)) if p.endswith(".intoto.json")}

    def pull(self, digest: str, dest: str | Path) -> Path:
        """Fetch the release of `digest` into `dest` (which must not exist yet). Pulling checks
        nothing but DVC's own hashes; the caller opens the result with `open_release`."""
        from dvc.repo import Repo

        digest, dest = check_digest(digest), Path(dest)
        if dest.exists():
            raise ReleaseError(f"{dest} already exists; open it instead of pulling again", str(dest))
        with self._repo() as repo:
            pointer = self._read_pointer(repo, digest)
            if pointer is None:
                raise ReleaseError(f"bundle {digest} has no release in {self.url}: it was never released there (only "
                                   "a bundle that passed the gate is), so it is not served from it")
            root = Path(repo.root_dir)
            out = {"md5": pointer.dvc.md5, "size": pointer.dvc.size, "nfiles": pointer.dvc.nfiles,
                   "hash": "md5", "path": digest}
            (root / f"{digest}.dvc").write_text(yaml.safe_dump({"outs": [out]}, sort_keys=False))
            try:
                with Repo(root) as fresh:  # reopened: DVC indexes the .dvc files it finds when it opens
                    fresh.pull(remote=_REMOTE)
            except Exception as exc:  # DVC raises its own error types per remote kind
                raise ReleaseError(f"could not pull release {digest[:12]} from {self.url}: {exc}") from None
            with atomic_dir(dest) as tmp:  # dest appears whole or not at all
                for child in (root / digest).iterdir():
                    shutil.move(str(child), tmp / child.name)
        log.info("pulled release %s from %s into %s", digest[:12], self.url, dest)
        return dest

