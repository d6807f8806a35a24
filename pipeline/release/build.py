"""The release stage's work: turn a bundle that passed the gate into a signed release in the
registry. Fails closed: anything short of a passing gate for this exact bundle is refused.

Reads the bundle, its eval report, gate decision and golden outputs; serves the bundle and
replays every golden item against it under load (release.replay); does the same for each export
that passed its own gate (configurations.py); writes the release directory (see record.py for its
layout), pushes it to the DVC remote, and returns the record and the registry pointer.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from pipeline.bundle.manifest import FileEntry
from pipeline.bundle.verify import verify_bundle
from pipeline.files import atomic_dir, atomic_write_json, atomic_write_text, git_commit, read_json, sha256_file
from pipeline.params import ReleaseParams, ReleaseReplayParams
from pipeline.release import configurations
from pipeline.release.card import render_card
from pipeline.release.open import open_release
from pipeline.release.record import (
    BUNDLE_DIR, EVIDENCE_FILES, OPTIONAL_EVIDENCE, RECORD_NAME, ReleaseError, ReleasePointer, ReleaseRecord,
    SigningInfo,
)
from pipeline.release.registry import Registry
from pipeline.release.sign import generate_key, key_fingerprint, sign_release

log = logging.getLogger(__name__)


def check_releasable(digest: str, eval_report: dict, gate: dict, golden: dict) -> None:
    """Only a passing gate for this exact bundle releases; a missing verdict is a refusal."""
    if gate.get("passed") is not True or gate.get("failed"):
        failed = ", ".join(gate.get("failed") or []) or "no verdict"
        raise ReleaseError(f"the gate did not pass for bundle {digest[:12]} ({failed}); nothing is released",
                           EVIDENCE_FILES["gate"])
    for kind, report in (("gate", gate), ("eval", eval_report), ("golden", golden)):
        got = report.get("bundle_digest")
        if got != digest:
            raise ReleaseError(f"the {kind} report is for bundle {str(got)[:12]}, the bundle is {digest[:12]}",
                               EVIDENCE_FILES[kind])


def _password(params: ReleaseParams) -> str | None:
    env = params.signing.password_env
    if env and env not in os.environ:
        raise ReleaseError(f"the signing key's password is read from ${env}, which is not set")
    return os.environ.get(env) if env else None


def _ensure_key(params: ReleaseParams) -> None:
    s = params.signing
    if s.method != "key" or Path(s.private_key).is_file():
        return
    if not s.create_key_if_missing:
        raise ReleaseError(f"signing key {s.private_key} not found; create one with "
                           f"`python -m pipeline.release keygen` or point release.signing.private_key at yours")
    generate_key(s.private_key, s.public_key)


def replay_under_load(params: ReleaseReplayParams, bundle_dir: Path, golden_path: Path, out: Path,
                      export_dir: Path | None = None) -> dict | None:
    """Serve the bundle as users will (`python -m serving`, startup checks and parity probe
    included, in its own process) and replay every golden item through the official client,
    `params.concurrency` at a time (`python -m serving.replay`). Writes the result to `out`;
    raises ReleaseError when it could not run, or when an answer differs and the params require
    identity, naming the items and where they first differ. None when the evaluation generated
    no greedy answer to replay (a suite of log-likelihood tasks only). With export_dir, that export
    is served instead of the bundle (`--export`), and golden_path holds its own answers."""
    if not read_json(golden_path).get("prompts"):
        log.warning("nothing to replay under load: the golden file has no greedy answers")
        return None
    cmd = [sys.executable, "-m", "serving.replay", "--serve", str(bundle_dir), "--golden", str(golden_path),
           "--concurrency", str(params.concurrency), "--out", str(out),
           *(["--export", str(export_dir)] if export_dir is not None else [])]
    what = f"export {export_dir.parent.name}" if export_dir is not None else "bundle"
    log.info("replaying every golden item against the served %s at concurrency %d", what, params.concurrency)
    # stderr (the server's start-up, the replay's progress) is shown as it comes, and its tail kept
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tail: collections.deque[str] = collections.deque(maxlen=40)
    for line in proc.stderr:
        sys.stderr.write(line)
        tail.append(line)
    stdout = proc.stdout.read()
    returncode = proc.wait()
    if returncode not in (0, 1) or not out.is_file():
        raise ReleaseError(f"the replay under load could not run (exit {returncode}): "
                           f"{''.join(tail).strip()[-1500:]}", EVIDENCE_FILES["golden"])
    result = json.loads(out.read_text(encoding="utf-8"))
    log.info("%s", stdout.strip())
    if result["different"] and params.required:
        raise ReleaseError(f"served under load, {result['different']} of {result['items']} answers differ from the "
                           f"evaluated ones of the {what}; nothing is released (release.replay.required):\n"
                           f"{stdout.strip()}", EVIDENCE_FILES["golden"] if export_dir is None
                           else f"{configurations.EXPORTS_DIR}/{export_dir.parent.name}/golden.json")
    if result["different"]:
        log.warning("releasing with %d of %d served answers different from the evaluated ones "
                    "(release.replay.required is false)", result["different"], result["items"])
    return result


def _exports(params: ReleaseParams, tmp: Path, configs: dict[str, dict], exports_dir, exports_reports,
             digest: str) -> tuple[dict, dict, dict]:
    """Stage and replay each export whose own gate passed: (record entries, card data of the
    shipped ones, the refused ones)."""
    entries, shipped, refused = {}, {}, {}
    for name, c in configs.items():
        if not c.get("gate_passed"):
            refused[name] = c
            log.warning("export %s was refused by its gate; it is not released", name)
            continue
        dest, record = configurations.stage(tmp, name, exports_dir, exports_reports, digest)
        replayed = (replay_under_load(params.replay, tmp / BUNDLE_DIR, dest / "golden.json",
                                      dest / configurations.REPLAY, export_dir=dest / configurations.MODEL_DIR)
                    if params.replay.enabled else None)
        entries[name] = configurations.entry(dest, record, replayed is not None)
        # its own signature over its folder (model, evidence, replay): a user who deploys only this
        # export checks it without the rest of the release; the release's signature covers it too
        s = params.signing
        sign_release(dest, s.method, private_key=s.private_key, public_key=s.public_key, password=_password(params),
                     sigstore_staging=s.sigstore_staging)
        shipped[name] = {"eval": read_json(dest / "eval.json"), "replay": replayed, "size_bytes": c["size_bytes"]}
    return entries, shipped, refused


def release(params: ReleaseParams, bundle_dir: str | Path, eval_path: str | Path, gate_path: str | Path,
            golden_path: str | Path, out_dir: str | Path, repo_root: str | Path = ".",
            now: datetime | None = None, exports_dir: str | Path | None = None,
            exports_reports: str | Path | None = None) -> tuple[ReleaseRecord, ReleasePointer]:
    """Release the bundle, and beside it each export of exports_dir (the export stage's output;
    its evaluations in exports_reports) that passed its own gate."""
    verified = verify_bundle(bundle_dir)
    manifest = verified.manifest
    digest = manifest.bundle_digest
    eval_report, gate, golden = read_json(eval_path), read_json(gate_path), read_json(golden_path)
    check_releasable(digest, eval_report, gate, golden)
    configs = configurations.asked_for(exports_dir, digest)
    registry = Registry.from_name_or_url(params.remote, repo_root)  # fail on a bad remote before any work
    _ensure_key(params)

    released_at = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
    s = params.signing
    signing = SigningInfo(method=s.method, key_fingerprint=key_fingerprint(s.public_key) if s.method == "key" else None)
    commit = git_commit()
    with atomic_dir(out_dir) as tmp:
        shutil.copytree(verified.root, tmp / BUNDLE_DIR)
        for kind, src in (("eval", eval_path), ("gate", gate_path), ("golden", golden_path)):
            shutil.copyfile(src, tmp / EVIDENCE_FILES[kind])
        replayed = (replay_under_load(params.replay, tmp / BUNDLE_DIR, tmp / EVIDENCE_FILES["golden"],
                                      tmp / OPTIONAL_EVIDENCE["replay"]) if params.replay.enabled else None)
        entries, shipped, refused = _exports(params, tmp, configs, exports_dir, exports_reports, digest)
        bundle_bytes = sum(p.stat().st_size for p in (tmp / BUNDLE_DIR).rglob("*") if p.is_file())
        card = render_card(manifest, eval_report, gate, base_model=params.card.base_model, replay=replayed,
                           license=params.card.license, language=list(params.card.language) or None,
                           model_name=params.card.model_name,
                           release={"released_at": released_at, "git_commit": commit, "remote": registry.url,
                                    "public_key": s.public_key if s.method == "key" else None,
                                    **signing.model_dump()},
                           configurations=configurations.card_lines(eval_report, replayed, shipped, refused,
                                                                    bundle_bytes))
        atomic_write_text(tmp / EVIDENCE_FILES["card"], card)
        names = [*EVIDENCE_FILES.values(), *([OPTIONAL_EVIDENCE["replay"]] if replayed else [])]
        evidence = {name: FileEntry(sha256=sha256_file(tmp / name), size=(tmp / name).stat().st_size)
                    for name in sorted(names)}
        record = ReleaseRecord(bundle_digest=digest, evidence=evidence, gate_passed=True, released_at=released_at,
                               git_commit=commit, signing=signing, platform=eval_report.get("platform"),
                               exports=entries)
        atomic_write_json(tmp / RECORD_NAME, record.model_dump(mode="json"))
        sign_release(tmp, s.method, private_key=s.private_key, public_key=s.public_key, password=_password(params),
                     sigstore_staging=s.sigstore_staging)
        # Test the thing we ship: open it exactly as serving will, signature included.
        open_release(tmp, public_key=s.public_key if s.method == "key" else None,
                     require_signature=s.method == "key")
    pointer = registry.push(out_dir, record)
    log.info("released bundle %s to %s (signature: %s)", digest[:12], registry.url, s.method)
    return record, pointer
