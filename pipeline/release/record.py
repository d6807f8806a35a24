"""What a release is on disk: its file layout, the signed record inside it, and the pointer the
registry keeps beside it.

A release directory holds the bundle exactly as evaluated plus the evidence for it:

    bundle/        the verified bundle (manifest.json, base_q/, adapter/, tokenizer/)
    README.md      the model card (Hugging Face metadata + results), generated from the evidence
    eval.json      the evaluation report for this bundle digest
    gate.json      the gate decision for it (must have passed)
    golden.json    golden outputs the serving parity probe replays
    replay.json    every golden item served by `python -m serving` at release time, several at
                   a time, compared token for token with the evaluation (absent in releases
                   made with release.replay.enabled false, or before it existed)
    exports/<name>/  each export that passed its own gate (merged, gguf_q8_0, ...; absent when
                   none was asked for): model/ (the export folder as written, its record pinning
                   every file) and its own eval.json, gate.json, golden.json and replay.json
    release.json   the ReleaseRecord: bundle digest + sha256 of every evidence file, and of each
                   export's record and evidence
    release.sig    the model-signing signature over every file above (absent when unsigned)

The card and the evidence live beside the bundle, not inside it: they are computed from the
bundle's digest, so they cannot be part of what that digest covers. The signature closes the
loop: it covers the bundle files and the evidence together.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline.bundle.manifest import FileEntry

SCHEMA_VERSION = 1
BUNDLE_DIR = "bundle"
RECORD_NAME = "release.json"
SIGNATURE_NAME = "release.sig"
CARD_NAME = "README.md"
# evidence kind -> file name at the release root
EVIDENCE_FILES = {"eval": "eval.json", "gate": "gate.json", "golden": "golden.json", "card": CARD_NAME}
# evidence a release carries when it was produced: pinned by the record like the rest when present
OPTIONAL_EVIDENCE = {"replay": "replay.json"}
EXPORTS_DIR = "exports"
TOP_LEVEL = frozenset({BUNDLE_DIR, RECORD_NAME, SIGNATURE_NAME, EXPORTS_DIR, *EVIDENCE_FILES.values(),
                       *OPTIONAL_EVIDENCE.values()})

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class ReleaseError(ValueError):
    """A release was refused: not releasable, not verifiable, not found, or not signed.

    `path` names the offending file where there is one. A ValueError, so stage entry points
    report it as a one-line error and exit code 1."""

    def __init__(self, message: str, path: str | None = None):
        self.path = path
        super().__init__(message)


class _R(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SigningInfo(_R):
    method: Literal["key", "sigstore", "none"]
    key_fingerprint: str | None = Field(None, description="sha256 of the public key (DER), for method=key.")


class ExportEntry(_R):
    """One export a release carries (exports/<name>/): a configuration with its own evidence."""

    kind: str = Field(description="merged or gguf.")
    digest: str = Field(description="sha256 of the export's record, which pins the sha256 of each of its files.")
    evidence: dict[str, FileEntry] = Field(description="Its own eval.json, gate.json, golden.json and replay.json "
                                           "(names inside exports/<name>/) -> sha256 and size.")
    gate_passed: bool


class ReleaseRecord(_R):
    """release.json: signed with the rest, so nothing in it can be edited unnoticed."""

    schema_version: int = SCHEMA_VERSION
    bundle_digest: str
    evidence: dict[str, FileEntry] = Field(description="Evidence file name -> sha256 and size.")
    gate_passed: bool
    released_at: str = Field(description="UTC time of the release, ISO 8601.")
    git_commit: str | None = Field(description="Commit of the pipeline repository that released it.")
    signing: SigningInfo
    platform: dict | None = Field(None, description="The platform the evaluation (and so the golden outputs) ran "
                                  "on (pipeline/platform.py); null in releases made before it was recorded.")
    exports: dict[str, ExportEntry] = Field(default_factory=dict, description="The exports released beside the "
                                            "bundle, by name; each passed its own gate and replay.")


class DvcObject(_R):
    """Where the release directory sits in the DVC remote (the content of a .dvc file's out)."""

    md5: str
    size: int
    nfiles: int


class ReleasePointer(_R):
    """The registry's index entry `<remote>/tailgate/releases/<bundle_digest>.json`.

    Unsigned on purpose: it only locates the release. Whatever it points to is checked against
    the signature and against the digest that was asked for."""

    schema_version: int = SCHEMA_VERSION
    bundle_digest: str
    dvc: DvcObject
    record_sha256: str
    released_at: str


def check_digest(digest: str) -> str:
    """A bundle digest as typed by a person: full 64 hex digits, nothing else (it names a path
    in the remote, so anything else is refused before it is used)."""
    digest = digest.strip().lower()
    if not _DIGEST.match(digest):
        raise ReleaseError(f"{digest!r} is not a bundle digest (64 lowercase hex digits; see /v1/models or "
                           "reports/release.json)")
    return digest


def is_release_dir(path: str | Path) -> bool:
    return (Path(path) / RECORD_NAME).is_file() and (Path(path) / BUNDLE_DIR).is_dir()
