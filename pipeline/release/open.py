"""Opening a release is verifying it: the one path from a release directory to a bundle.

Order matters: the signature (when a key is given) is checked first, over every file; then the
release record and the evidence it pins; then the gate verdict and digests; and last the
bundle itself through `verify_bundle`, which hashes every weight against the manifest. Nothing
is built here; callers build engines from the VerifiedBundle only after this returns.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from pipeline.bundle.verify import VerifiedBundle, verify_bundle
from pipeline.files import hash_files
from pipeline.release.record import (
    BUNDLE_DIR, EVIDENCE_FILES, OPTIONAL_EVIDENCE, RECORD_NAME, SIGNATURE_NAME, TOP_LEVEL, ReleaseError, ReleaseRecord,
    is_release_dir,
)
from pipeline.release.sign import verify_signature

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

    bundle = verify_bundle(root / BUNDLE_DIR)  # BundleError names the file; it is a ValueError too
    if bundle.manifest.bundle_digest != digest:
        raise ReleaseError(f"the bundle in release {digest[:12]} has digest {bundle.manifest.bundle_digest[:12]}",
                           f"{BUNDLE_DIR}/manifest.json")
    return OpenedRelease(root=root, record=record, bundle=bundle, signature=signature)
