"""The release registry: release directories in a DVC remote, found by bundle digest.

DVC stores objects by content (md5), not by name, so the registry keeps one small index entry
per release beside DVC's objects: `<remote>/tailgate/releases/<bundle_digest>.json`, a
ReleasePointer holding the DVC hash of the release directory. Pushing and pulling go through
DVC itself (any remote DVC supports: a local directory by default, S3 and others by config),
from a throwaway no-SCM DVC repository in a temporary directory. That keeps the release
independent of the pipeline repository's lock (the release stage runs inside `dvc repro`) and
lets a fresh directory with nothing but the remote URL pull a release.

A push is all or nothing: the index entry is written last, atomically, and only once every
object is in the remote. A pull checks every file against the md5 DVC listed for it (DVC does
not, on download), and tells the faults apart: no registry, no such release, an object missing,
an object corrupted, each with its own message saying what to do.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator

import yaml

from pipeline.files import atomic_dir, sha256_file
from pipeline.release.record import RECORD_NAME, DvcObject, ReleaseError, ReleasePointer, ReleaseRecord, check_digest

log = logging.getLogger(__name__)

INDEX_PREFIX = ("tailgate", "releases")
ATTESTATION_PREFIX = ("tailgate", "attestations")  # <prefix>/<bundle_digest>/<name>.intoto.json
_REMOTE = "registry"  # the remote's name inside the throwaway repositories
_FIX_REMOTE = ("push the release again from the repository that made it (`dvc repro --force --single-item release`; "
               "only what the remote lacks is uploaded), or serve from another remote that holds it")


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


def _md5_file(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _name_files(entries: list[dict]) -> str:
    shown = ", ".join(repr(e["relpath"]) for e in entries[:5])
    more = f" and {len(entries) - 5} more" if len(entries) > 5 else ""
    return f"{len(entries)} file{'s' if len(entries) != 1 else ''} ({shown}{more})"


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
        """Upload a release directory and index it under its bundle digest, all or nothing: the
        index entry is written last (and atomically), only once every object is in the remote, so
        a push that stops midway leaves no release visible by its digest; pushing again uploads
        only what is missing and completes it."""
        release_dir = Path(release_dir)
        digest = check_digest(record.bundle_digest)
        with self._repo() as repo:
            work = Path(repo.root_dir) / digest
            shutil.copytree(release_dir, work, copy_function=_link_or_copy)
            stage = repo.add(str(work))[0]
            out = stage.outs[0]
            obj = DvcObject(md5=out.hash_info.value, size=out.meta.size, nfiles=out.meta.nfiles)
            try:
                repo.push(remote=_REMOTE)
            except Exception as exc:  # DVC raises its own error types per remote kind
                raise ReleaseError(f"push of release {digest[:12]} to {self.url} did not finish: {exc}. No release "
                                   "is visible under its digest (the index entry is written last); push again to "
                                   "complete it (only the missing files are uploaded)") from None
            pointer = ReleasePointer(bundle_digest=digest, dvc=obj,
                                     record_sha256=sha256_file(release_dir / RECORD_NAME),
                                     released_at=record.released_at)
            # DVC reports a push as done from its own bookkeeping; the index must not point at
            # objects the remote does not hold, so look before writing it.
            missing = self._missing_blobs(repo, self._listing(repo, pointer))
            if missing:
                raise ReleaseError(f"push of release {digest[:12]} to {self.url} did not finish: "
                                   f"{_name_files(missing)} not in the remote after the upload; push again")
            fs, path = self._index_path(repo, digest)
            fs.makedirs(fs.parent(path), exist_ok=True)
            if fs.exists(path):
                log.warning("bundle %s was released before; the index now points at this release", digest[:12])
            # Temp name then move: a reader sees the old entry or the new one, never a torn one,
            # and list() skips the temp name (it does not end in .json).
            tmp = fs.join(fs.parent(path), f".{digest}.{uuid.uuid4().hex}.tmp")
            fs.pipe_file(tmp, (pointer.model_dump_json(indent=2) + "\n").encode())
            fs.mv(tmp, path)
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
            return self._list(repo)

    def _list(self, repo: Any) -> list[ReleasePointer]:
        fs, path = self._index_path(repo, "0" * 64)
        index = fs.parent(path)
        if not fs.exists(index):
            return []
        names = sorted(p for p in fs.ls(index, detail=False) if p.endswith(".json"))
        out = []
        for name in names:
            try:
                out.append(ReleasePointer.model_validate_json(fs.cat_file(name)))
            except ValueError as exc:  # ReleaseError is a ValueError too: callers that caught one still do
                raise ReleaseError(f"registry index entry {name} is unreadable: {exc}", name) from None
        return out

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

    # -- telling one fault from another: each gets its own message --------------------------

    def _check_registry(self, repo: Any) -> None:
        """Refuse a registry that is not there or cannot be read, before anything is looked up in it."""
        remote = repo.cloud.get_remote(_REMOTE)
        fs, root = remote.fs, remote.path
        try:
            if not fs.exists(root):
                raise ReleaseError(f"release registry {self.url} does not exist: check --remote (or the DVC remote's "
                                   "url); a registry is created by the first release pushed to it")
            if not fs.isdir(root):
                raise ReleaseError(f"release registry {self.url} is not a directory, so it holds no releases: check "
                                   "--remote (or the DVC remote's url)")
            fs.ls(root, detail=False)
        except ReleaseError:
            raise
        except Exception as exc:  # permissions, credentials, network: whatever the remote kind raises
            raise ReleaseError(f"release registry {self.url} cannot be read: {type(exc).__name__}: {exc}") from None

    def _not_released(self, repo: Any, digest: str) -> ReleaseError:
        self._check_registry(repo)
        others = self._list(repo)
        if not others:
            return ReleaseError(f"release registry {self.url} holds no releases at all (no {'/'.join(INDEX_PREFIX)}/ "
                                f"index entries), so bundle {digest} is not in it: check that --remote names the "
                                "registry the release stage pushed to")
        newest = max(others, key=lambda p: p.released_at)
        return ReleaseError(f"bundle {digest} has no release in {self.url}, which holds {len(others)} other "
                            f"release{'s' if len(others) != 1 else ''} (newest: {newest.bundle_digest[:12]}, released "
                            f"{newest.released_at}): this bundle was never released there (only a bundle that passed "
                            "the gate is), or its push did not finish (the index entry is written last); check the "
                            "digest, or push it again")

    def _listing(self, repo: Any, pointer: ReleasePointer) -> list[dict]:
        """The release directory's file list as DVC stored it ({relpath, md5} per file), checked
        against its own md5 (its name), so a damaged listing is not trusted for anything else."""
        odb = repo.cloud.get_remote_odb(_REMOTE)
        path = odb.oid_to_path(pointer.dvc.md5)
        digest = pointer.bundle_digest[:12]
        if not odb.fs.exists(path):
            raise ReleaseError(f"release {digest} in {self.url} is incomplete: the listing of its files is missing "
                               f"from the remote ({path}); {_FIX_REMOTE}", path)
        raw = odb.fs.cat_file(path)
        if hashlib.md5(raw, usedforsecurity=False).hexdigest() != pointer.dvc.md5.removesuffix(".dir"):
            raise ReleaseError(f"release {digest} in {self.url} is corrupted: the listing of its files ({path}) does "
                               f"not match its md5; delete that object from the remote, then {_FIX_REMOTE}", path)
        try:
            entries = json.loads(raw)
            return [{"relpath": str(e["relpath"]), "md5": str(e["md5"])} for e in entries]
        except (ValueError, TypeError, KeyError) as exc:
            raise ReleaseError(f"release {digest} in {self.url}: the listing of its files ({path}) is unreadable: "
                               f"{exc}", path) from None

    def _missing_blobs(self, repo: Any, listing: list[dict]) -> list[dict]:
        odb = repo.cloud.get_remote_odb(_REMOTE)
        return [e for e in listing if not odb.fs.exists(odb.oid_to_path(e["md5"]))]

    def _check_pulled(self, repo: Any, pointer: ReleasePointer, listing: list[dict], root: Path) -> None:
        """What DVC brought back is what was pushed: every listed file, by md5 (DVC does not
        check that on download), and the release record the index entry names."""
        odb = repo.cloud.get_remote_odb(_REMOTE)
        digest = pointer.bundle_digest[:12]
        bad = [e for e in listing if not (root / e["relpath"]).is_file() or _md5_file(root / e["relpath"]) != e["md5"]]
        if bad:
            blobs = "; ".join(f"{e['relpath']!r} is stored as {odb.oid_to_path(e['md5'])}" for e in bad[:5])
            raise ReleaseError(f"the remote's copy of release {digest} in {self.url} is corrupted: {_name_files(bad)} "
                               f"differ from the md5 the release lists ({blobs}); nothing was cached. Delete "
                               f"{'that object' if len(bad) == 1 else 'those objects'} from the remote, then "
                               f"{_FIX_REMOTE}", bad[0]["relpath"])
        if sha256_file(root / RECORD_NAME) != pointer.record_sha256:
            raise ReleaseError(f"the index entry of release {digest} in {self.url} names another release record "
                               f"than the one stored ({RECORD_NAME}); {_FIX_REMOTE}", RECORD_NAME)

    def pull(self, digest: str, dest: str | Path) -> Path:
        """Fetch the release of `digest` into `dest` (which must not exist yet). Every file is
        checked against the md5 DVC listed for it when it was pushed, and the release record
        against the index entry; `dest` appears whole and checked, or not at all. Signature,
        evidence and bundle are the caller's to check, with `open_release`."""
        from dvc.repo import Repo

        digest, dest = check_digest(digest), Path(dest)
        if dest.exists():
            raise ReleaseError(f"{dest} already exists; open it instead of pulling again", str(dest))
        with self._repo() as repo:
            try:
                pointer = self._read_pointer(repo, digest)
            except ReleaseError:
                raise
            except Exception:  # the index could not be looked at: say why the registry is at fault
                self._check_registry(repo)
                raise
            if pointer is None:
                raise self._not_released(repo, digest)
            listing = self._listing(repo, pointer)
            missing = self._missing_blobs(repo, listing)
            if missing:
                raise ReleaseError(f"release {digest[:12]} in {self.url} is incomplete: {_name_files(missing)} "
                                   f"missing from the remote; nothing was pulled. {_FIX_REMOTE[0].upper()}"
                                   f"{_FIX_REMOTE[1:]}", missing[0]["relpath"])
            root = Path(repo.root_dir)
            out = {"md5": pointer.dvc.md5, "size": pointer.dvc.size, "nfiles": pointer.dvc.nfiles,
                   "hash": "md5", "path": digest}
            (root / f"{digest}.dvc").write_text(yaml.safe_dump({"outs": [out]}, sort_keys=False))
            try:
                with Repo(root) as fresh:  # reopened: DVC indexes the .dvc files it finds when it opens
                    fresh.pull(remote=_REMOTE)
            except Exception as exc:  # DVC raises its own error types per remote kind
                raise ReleaseError(f"could not pull release {digest[:12]} from {self.url}: {exc}") from None
            self._check_pulled(repo, pointer, listing, root / digest)
            with atomic_dir(dest) as tmp:  # dest appears whole or not at all
                for child in (root / digest).iterdir():
                    shutil.move(str(child), tmp / child.name)
        log.info("pulled release %s from %s into %s", digest[:12], self.url, dest)
        return dest
