"""Opening a release is verifying it: the one path from a release directory to a bundle.

Order matters: the signature (when a key is given) is checked first, over every file; then the
release record and the evidence it pins; then the gate verdict and digests; and last the
bundle itself through `verify_bundle`, which hashes every weight against the manifest. Nothing
is built here; callers build engines from the VerifiedBundle only after this returns.

`open_from_registry` opens a release by bundle digest through a local cache (serving's
--release): a copy lands in the cache only after it verified, and is verified again whenever
it is opened; a cached copy that fails is moved aside and pulled again, once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from pipeline.bundle.verify import VerifiedBundle, verify_bundle
from pipeline.files import hash_files
from pipeline.release.record import (
    BUNDLE_DIR, EVIDENCE_FILES, OPTIONAL_EVIDENCE, RECORD_NAME, SIGNATURE_NAME, TOP_LEVEL, ReleaseError, ReleaseRecord,
    check_digest, is_release_dir,
)
from pipeline.release import configurations
from pipeline.release.sign import verify_signature

if TYPE_CHECKING:
    from pipeline.release.registry import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpenedRelease:
    root: Path
    record: ReleaseRecord
    bundle: VerifiedBundle
    signature: str  # "verified", "unchecked" (signed, no key given) or "unsigned"

    @property
    def golden_path(self) -> Path:
        return self.root / EVIDENCE_FILES["golden"]

    @property
    def replay_path(self) -> Path | None:
        """The release-time replay under load, when the release carries one (pinned, verified)."""
        name = OPTIONAL_EVIDENCE["replay"]
        return self.root / name if name in self.record.evidence else None

    def export(self, name: str) -> tuple[Path, Path, Path | None]:
        """(export folder, its golden answers, its release-time replay) of an export the release
        carries; ReleaseError naming the ones it does carry otherwise."""
        if name not in self.record.exports:
            carried = ", ".join(sorted(self.record.exports)) or "none"
            raise ReleaseError(f"release {self.record.bundle_digest[:12]} carries no export {name!r} (it carries: "
                               f"{carried})", configurations.EXPORTS_DIR)
        dest = self.root / configurations.EXPORTS_DIR / name
        replay = dest / configurations.REPLAY
        return (dest / configurations.MODEL_DIR, dest / "golden.json",
                replay if configurations.REPLAY in self.record.exports[name].evidence else None)

    def describe(self) -> dict:
        return {"bundle_digest": self.record.bundle_digest, "released_at": self.record.released_at,
                "git_commit": self.record.git_commit, "signing": self.record.signing.method,
                "key_fingerprint": self.record.signing.key_fingerprint, "signature": self.signature}


def _read_json(root: Path, name: str) -> dict:
    try:
        data = json.loads((root / name).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReleaseError(f"release file {name!r} is unreadable: {exc}", name) from None
    if not isinstance(data, dict):
        raise ReleaseError(f"release file {name!r} is not a JSON object", name)
    return data


def open_release(root: str | Path, *, public_key: str | Path | None = None, require_signature: bool = False,
                 sigstore_identity: str | None = None, sigstore_issuer: str | None = None) -> OpenedRelease:
    root = Path(root).absolute()
    if not is_release_dir(root):
        raise ReleaseError(f"{root} is not a release directory (needs {RECORD_NAME} and {BUNDLE_DIR}/)")
    for entry in sorted(p.name for p in root.iterdir()):
        if entry not in TOP_LEVEL:
            raise ReleaseError(f"release file {entry!r} does not belong in a release", entry)
        if (root / entry).is_symlink():
            raise ReleaseError(f"release file {entry!r} is a symlink; releases hold real files only", entry)

    signed = (root / SIGNATURE_NAME).is_file()
    can_check = public_key is not None or (sigstore_identity and sigstore_issuer)
    if require_signature and not signed:
        raise ReleaseError(f"release {root} is not signed and a signature is required", SIGNATURE_NAME)
    if require_signature and not can_check:
        raise ReleaseError("a signature is required but no public key (or Sigstore identity) was given to check it")
    if signed and can_check:
        verify_signature(root, public_key=public_key, sigstore_identity=sigstore_identity,
                         sigstore_issuer=sigstore_issuer)
        signature = "verified"
    else:
        signature = "unchecked" if signed else "unsigned"
        log.warning("release %s: signature %s (pass a public key to check it)", root.name, signature)

    try:
        record = ReleaseRecord.model_validate_json((root / RECORD_NAME).read_bytes())
    except ValueError as exc:
        raise ReleaseError(f"release file {RECORD_NAME!r} is not a release record: {exc}", RECORD_NAME) from None
    required, optional = set(EVIDENCE_FILES.values()), set(OPTIONAL_EVIDENCE.values())
    expected = set(record.evidence)
    if not required <= expected or expected - required - optional:
        raise ReleaseError(f"release record pins {sorted(record.evidence)}, expected {sorted(required)} "
                           f"(and optionally {sorted(optional)})", RECORD_NAME)
    for name in sorted(optional - expected):  # evidence added after the release was made
        if (root / name).exists():
            raise ReleaseError(f"release file {name!r} is not pinned by the release record", name)
    for name in sorted(expected):
        if not (root / name).is_file():
            raise ReleaseError(f"release file {name!r} is missing", name)
    actual = hash_files(root, sorted(expected))
    for name in sorted(expected):
        if actual[name] != record.evidence[name].sha256:
            raise ReleaseError(f"release file {name!r} changed: expected sha256 {record.evidence[name].sha256}, "
                               f"actual {actual[name]}", name)

    digest = record.bundle_digest
    gate = _read_json(root, EVIDENCE_FILES["gate"])
    if not (record.gate_passed and gate.get("passed") is True and not gate.get("failed")):
        raise ReleaseError(f"release {digest[:12]} carries a gate decision that did not pass", EVIDENCE_FILES["gate"])
    for name in [EVIDENCE_FILES[k] for k in ("gate", "eval", "golden")] + sorted(expected & optional):
        got = _read_json(root, name).get("bundle_digest")
        if got != digest:
            raise ReleaseError(f"release file {name!r} is for bundle {str(got)[:12]}, the release is {digest[:12]}",
                               name)

    configurations.verify(root, record, (lambda d: verify_signature(
        d, public_key=public_key, sigstore_identity=sigstore_identity, sigstore_issuer=sigstore_issuer))
        if signed and can_check else None)
    bundle = verify_bundle(root / BUNDLE_DIR)  # BundleError names the file; it is a ValueError too
    if bundle.manifest.bundle_digest != digest:
        raise ReleaseError(f"the bundle in release {digest[:12]} has digest {bundle.manifest.bundle_digest[:12]}",
                           f"{BUNDLE_DIR}/manifest.json")
    return OpenedRelease(root=root, record=record, bundle=bundle, signature=signature)


# -- a release by digest, through a local cache ----------------------------------------------------
# A cached copy is trusted for nothing: it is verified every time it is opened, like any
# release directory. One that fails is moved aside (kept for inspection, never deleted) and
# pulled once more, so a bad pull or a disk fault cannot poison every later start.

def _open_as(root: Path, digest: str, **checks) -> OpenedRelease:
    opened = open_release(root, **checks)
    if opened.record.bundle_digest != digest:  # the directory name is not trusted either
        raise ReleaseError(f"release {root} holds bundle {opened.record.bundle_digest}, not {digest}")
    return opened


def _moved(opened: OpenedRelease, root: Path) -> OpenedRelease:
    return replace(opened, root=root, bundle=replace(opened.bundle, root=root / BUNDLE_DIR))


def _move_aside(root: Path) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    aside = root.with_name(f"{root.name}.failed-{stamp}-{uuid.uuid4().hex[:6]}")
    os.rename(root, aside)
    return aside


def _check_settings(public_key, require_signature: bool, sigstore_identity, sigstore_issuer) -> None:
    """Faults of the command line, not of any copy: refused before a cached copy is blamed for them."""
    if public_key is not None and not Path(public_key).is_file():
        raise ReleaseError(f"public key {public_key} not found", str(public_key))
    if require_signature and public_key is None and not (sigstore_identity and sigstore_issuer):
        raise ReleaseError("a signature is required but no public key (or Sigstore identity) was given to check it")


def open_from_registry(registry: "Registry | Callable[[], Registry]", digest: str, cache_dir: str | Path, *,
                       public_key: str | Path | None = None, require_signature: bool = False,
                       sigstore_identity: str | None = None, sigstore_issuer: str | None = None) -> OpenedRelease:
    """The release of `digest`, from `cache_dir/<digest>` when the copy there verifies, else
    pulled from `registry` (an instance, or a function making one, called only when a pull is
    needed) into a temporary directory beside the cache, verified there exactly as it will be
    served, and only then renamed into place. Raises ReleaseError saying which copy failed."""
    from pipeline.release.registry import Registry

    digest = check_digest(digest)
    checks = dict(public_key=public_key, require_signature=require_signature, sigstore_identity=sigstore_identity,
                  sigstore_issuer=sigstore_issuer)
    _check_settings(**checks)
    cache_dir = Path(cache_dir).expanduser().absolute()
    root = cache_dir / digest
    cached_fault = ""
    if root.exists() or root.is_symlink():
        try:
            return _open_as(root, digest, **checks)
        except (ValueError, OSError) as exc:  # ReleaseError, BundleError, or a file that cannot be read
            aside = _move_aside(root)
            cached_fault = (f"the cached copy failed verification: {exc}; it was moved aside to {aside} (kept for "
                            "inspection; delete it when done) and the release pulled again")
            log.warning("release %s: %s", digest[:12], cached_fault)
    reg = registry if isinstance(registry, Registry) else registry()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".pulling-{digest[:12]}-{uuid.uuid4().hex[:8]}"
    then = f"{cached_fault}; then " if cached_fault else ""
    try:
        try:
            reg.pull(digest, tmp)
        except ReleaseError as exc:
            raise ReleaseError(f"{then}{exc}" if then else str(exc), exc.path) from None
        try:
            opened = _open_as(tmp, digest, **checks)
        except (ValueError, OSError) as exc:
            raise ReleaseError(f"{then}the copy pulled from {reg.url} failed verification: {exc}; nothing was "
                               "cached. The remote's copy is at fault: push the release again from the repository "
                               "that made it, or serve from another remote", getattr(exc, "path", None)) from None
        try:
            os.rename(tmp, root)
        except OSError:
            if not root.is_dir():  # not a concurrent start that got there first: a real failure
                raise
            log.info("release %s: another process cached it first; opening that copy", digest[:12])
            return _open_as(root, digest, **checks)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("release %s pulled from %s, verified and cached in %s", digest[:12], reg.url, root)
    return _moved(opened, root)
