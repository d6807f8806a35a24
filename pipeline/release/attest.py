"""Attesting a release on another platform: replay every evaluated item there, sign the result.

A release's golden outputs hold on the platform class that evaluated it (pipeline/platform.py).
A team that serves on another machine class ships only what was replayed there: `attest`
serves the release on this machine (`python -m serving`, every start-up check included),
replays every evaluated item through the official client at concurrency (`python -m
serving.replay`) and, when every answer is token for token the evaluated one, writes a signed
attestation of it.

The attestation is a standard object: an in-toto Statement v1 whose subjects are the release
record (which pins every file of the release by sha256) and the bundle digest, with the in-toto
test-result predicate (result, the platform as its configuration, the items that passed), in a
DSSE envelope signed with the release key, the same kind of envelope model-signing writes. It
lives beside the release, not in it (the release's own signature covers a closed set of files):
a file anywhere (`attestations/` by default) and, with a registry, under
`<remote>/tailgate/attestations/<bundle_digest>/<platform_id>.intoto.json`.
"""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pipeline.files import atomic_write_text, read_json, sha256_file
from pipeline.platform import Platform
from pipeline.release.record import RECORD_NAME, ReleaseError

log = logging.getLogger(__name__)

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://in-toto.io/attestation/test-result/v0.1"
SUFFIX = ".intoto.json"
DEFAULT_DIR = "attestations"


@dataclass(frozen=True)
class Attestation:
    """A verified attestation: this release replayed identically on `platform`."""

    platform: Platform
    items: int
    attested_at: str
    source: str  # the file or registry path it was read from

    def summary(self) -> dict:
        return {"platform_id": self.platform.platform_id, "platform": self.platform.describe(),
                "items": self.items, "attested_at": self.attested_at, "source": self.source}


def file_name(bundle_digest: str, platform_id: str) -> str:
    return f"{bundle_digest[:16]}-{platform_id}{SUFFIX}"


def statement(record_sha256: str, bundle_digest: str, replay: dict, attested_at: str) -> dict:
    """The in-toto Statement v1 (validated by the in-toto-attestation library) as a dict."""
    from google.protobuf import json_format
    from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
    from in_toto_attestation.v1.statement import Statement

    platform = replay["platform"]
    passed = [i["id"] for i in replay["per_item"] if i["identical"]]
    failed = [i["id"] for i in replay["per_item"] if not i["identical"]]
    subjects = [ResourceDescriptor(name=RECORD_NAME, digest={"sha256": record_sha256}).pb,
                ResourceDescriptor(name="bundle", digest={"sha256": bundle_digest}).pb]
    config = ResourceDescriptor(name=f"platform/{platform['platform_id']}", annotations={
        "platform": platform, "concurrency": replay["concurrency"], "measured_at": replay["measured_at"],
        "attested_at": attested_at, "load_avg_before": replay.get("load_avg_before"),
        "wall_s": replay.get("wall_s")}).pb
    stmt = Statement(subjects, PREDICATE_TYPE, {
        "result": "PASSED" if not failed else "FAILED", "configuration": [json_format.MessageToDict(config)],
        "passedTests": passed, "failedTests": failed})
    stmt.validate()
    return json_format.MessageToDict(stmt.pb)


def _key(public_key: str | Path, keyid: str):
    from cryptography.hazmat.primitives import serialization
    from securesystemslib.signer import SSlibKey

    pub = serialization.load_pem_public_key(Path(public_key).read_bytes())
    return SSlibKey.from_crypto(pub, keyid=keyid)


def sign(stmt: dict, private_key: str | Path, public_key: str | Path, password: str | None = None) -> dict:
    """A DSSE envelope over the statement, signed with the release key (securesystemslib)."""
    from cryptography.hazmat.primitives import serialization
    from securesystemslib.dsse import Envelope
    from securesystemslib.signer import CryptoSigner

    from pipeline.release.sign import check_key_pair, key_fingerprint

    check_key_pair(private_key, public_key, password)
    priv = serialization.load_pem_private_key(Path(private_key).read_bytes(), password.encode() if password else None)
    signer = CryptoSigner(priv, _key(public_key, key_fingerprint(public_key)))
    envelope = Envelope(payload=json.dumps(stmt, sort_keys=True).encode(), payload_type=PAYLOAD_TYPE, signatures={})
    envelope.sign(signer)
    return envelope.to_dict()


def verify(envelope_json: bytes, source: str, public_key: str | Path, record_sha256: str,
           bundle_digest: str) -> Attestation:
    """Check the envelope's signature against the release key and its subjects against this
    release; raise ReleaseError naming the source otherwise."""
    from securesystemslib.dsse import Envelope
    from securesystemslib.exceptions import VerificationError

    from pipeline.release.sign import key_fingerprint

    try:
        envelope = Envelope.from_dict(json.loads(envelope_json))
    except (ValueError, KeyError, TypeError) as exc:
        raise ReleaseError(f"attestation {source} is not a DSSE envelope: {exc}", source) from None
    if envelope.payload_type != PAYLOAD_TYPE:
        raise ReleaseError(f"attestation {source} carries {envelope.payload_type!r}, not an in-toto statement", source)
    try:
        envelope.verify([_key(public_key, key_fingerprint(public_key))], 1)
    except VerificationError as exc:
        raise ReleaseError(f"attestation {source} is not signed by the release key {public_key}: {exc}", source) from None
    stmt = json.loads(envelope.payload)
    subjects = {s.get("name"): (s.get("digest") or {}).get("sha256") for s in stmt.get("subject", [])}
    if stmt.get("_type") != STATEMENT_TYPE or stmt.get("predicateType") != PREDICATE_TYPE:
        raise ReleaseError(f"attestation {source} is not an in-toto test-result statement", source)
    if subjects.get(RECORD_NAME) != record_sha256 or subjects.get("bundle") != bundle_digest:
        raise ReleaseError(f"attestation {source} is for another release (bundle {str(subjects.get('bundle'))[:16]})",
                           source)
    predicate = stmt["predicate"]
    if predicate.get("result") != "PASSED" or predicate.get("failedTests"):
        raise ReleaseError(f"attestation {source} records a replay that differed", source)
    notes = predicate["configuration"][0]["annotations"]
    return Attestation(Platform.from_record(notes["platform"]), len(predicate.get("passedTests") or []),
                       notes.get("attested_at", "?"), source)


def collect(sources: dict[str, bytes], public_key: str | Path | None, release_root: Path) -> tuple[list, list[str]]:
    """Verified attestations for the release at release_root among `sources` (name -> bytes);
    and the problems of those that did not verify (reported, never trusted)."""
    record = read_json(release_root / RECORD_NAME)
    record_sha, digest = sha256_file(release_root / RECORD_NAME), record["bundle_digest"]
    good, problems = [], []
    for name, blob in sorted(sources.items()):
        if public_key is None:
            problems.append(f"{name}: no public key to check it with")
            continue
        try:
            good.append(verify(blob, name, public_key, record_sha, digest))
        except ReleaseError as exc:
            problems.append(str(exc))
    return good, problems


def local_sources(paths: list[str | Path], bundle_digest: str) -> dict[str, bytes]:
    """Attestation files among `paths` (files, or directories holding <digest16>-*.intoto.json)."""
    out = {}
    for p in map(Path, paths):
        files = sorted(p.glob(f"{bundle_digest[:16]}-*{SUFFIX}")) if p.is_dir() else [p] if p.is_file() else []
        out.update({str(f): f.read_bytes() for f in files})
    return out


def attest(release_root: str | Path, *, private_key: str | Path, public_key: str | Path, password: str | None = None,
           concurrency: int = 8, out: str | Path | None = None) -> tuple[Path, dict]:
    """Replay every evaluated item against the release served here; on identity, write the
    signed attestation (to `out`, default attestations/<digest16>-<platform_id>.intoto.json).
    Raises ReleaseError naming both platforms when any answer differs."""
    from pipeline.release.open import open_release

    root = Path(release_root)
    opened = open_release(root, public_key=public_key, require_signature=True)
    digest = opened.record.bundle_digest
    with tempfile.TemporaryDirectory(prefix="tailgate-attest-") as tmp:
        result_path = Path(tmp) / "replay.json"
        cmd = [sys.executable, "-m", "serving.replay", "--serve", str(root), "--concurrency", str(concurrency),
               "--out", str(result_path), "--public-key", str(public_key), "--allow-parity-mismatch"]
        log.info("attest: serving release %s here and replaying every evaluated item", digest[:12])
        done = subprocess.run(cmd, capture_output=True, text=True)
        if not result_path.is_file():
            raise ReleaseError(f"the replay could not run (exit {done.returncode}): {done.stderr.strip()[-1500:]}")
        result = json.loads(result_path.read_text(encoding="utf-8"))
    here = result.get("platform")
    if not here:
        raise ReleaseError("the server did not report its platform; nothing to attest")
    if result["different"]:
        evaluated = (result.get("golden_platform") or {}).get("description", "not recorded")
        raise ReleaseError(f"{result['different']} of {result['items']} answers differ on this platform, so the "
                           f"release is not attested here.\n  evaluated on: {evaluated}\n  served on:    "
                           f"{here['description']}\n{done.stdout.strip()}")
    attested_at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    stmt = statement(sha256_file(root / RECORD_NAME), digest, result, attested_at)
    envelope = sign(stmt, private_key, public_key, password)
    path = Path(out) if out else Path(DEFAULT_DIR) / file_name(digest, here["platform_id"])
    atomic_write_text(path, json.dumps(envelope, indent=2, sort_keys=True) + "\n")
    log.info("attested release %s on %s: %s", digest[:12], here["description"], path)
    return path, result


def payload(envelope_path: str | Path) -> dict:
    """The statement inside an attestation file, unverified (for display)."""
    return json.loads(base64.b64decode(json.loads(Path(envelope_path).read_text())["payload"]))
