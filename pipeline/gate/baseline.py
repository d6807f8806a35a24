"""The baseline a candidate is compared with: by default the latest release of the same suite.

`gate.baseline` decides where it comes from:

- null (the default): the registry the release stage pushes to (`gate.registry`, kept equal to
  `release.remote`) is asked for
  its releases, newest first; the first of the same suite name and version is the baseline (when
  there is none, the newest of the same suite name at another version, compared on the items
  both versions share). The candidate's own release is skipped, so a rerun of a released bundle
  is compared with what came before it and the gate's verdict does not change once it releases.
  No release of the suite at all: "no previous release: no regression check".
- `none`: the regression check is off, and gate.json and the card say so.
- a bundle digest: that release, pulled from the registry.
- a path: a release directory, or an eval.json (its per-item scores from an eval_samples.jsonl
  beside it, else from a gate.json beside it).

A release is read once: pulled, opened (signature with the release key when there is one,
evidence hashes, bundle), and its release.json, eval.json and gate.json are kept in a local cache
by digest; later reads check the cached files against the registry's pointer and the release
record. A baseline that was named or found but cannot be read is an error the gate fails on.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.files import atomic_dir, read_json, sha256_bytes, sha256_file
from pipeline.gate.items import ItemScores, ItemScoresError, check_against_report, read_samples
from pipeline.params import GateParams

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_KEPT = ("release.json", "eval.json", "gate.json")
NO_PREVIOUS = "no previous release: no regression check"


@dataclass
class Baseline:
    """What the gate compares with. `eval` is None when there is nothing to compare with (the
    `note` says why) or when it could not be read (`error` says why; the gate fails)."""

    source: str  # "registry" (looked up), "release" (named by digest or directory), "file", "none", "off"
    note: str = ""
    spec: str | None = None  # gate.baseline as given
    bundle_digest: str | None = None
    released_at: str | None = None
    eval: dict | None = None
    items: ItemScores | None = None
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    error: str | None = None

    def describe(self) -> dict:
        """The gate.json record: which baseline, by digest and sha256, and why."""
        suite = (self.eval or {}).get("suite") or {}
        return {"source": self.source, "spec": self.spec, "bundle_digest": self.bundle_digest,
                "released_at": self.released_at,
                "suite": {"name": suite.get("name"), "version": suite.get("version")} if self.eval else None,
                "sha256": dict(sorted(self.files.items())), "item_scores": self.items is not None,
                "note": self.error or self.note}


def resolve(params: GateParams, candidate_digest: str | None, suite: dict, *, remote: str | None,
            repo_root: str | Path, cache_dir: str | Path, public_key: str | Path | None) -> Baseline:
    """The baseline `params.baseline` names, for a candidate of `suite` ({name, version})."""
    spec = params.baseline
    if spec is not None and spec.strip().lower() == "none":
        return Baseline("off", note="gate.baseline is none: the regression check is turned off", spec=spec)
    try:
        if spec is None:
            return _latest(candidate_digest, suite, remote, repo_root, cache_dir, public_key)
        if _DIGEST.match(spec.strip().lower()):
            registry = _registry(remote, repo_root)
            if registry is None:
                raise LookupError(f"gate.baseline names release {spec[:12]}, but gate.registry {remote!r} is not "
                                  "a registry here")
            pointer = registry.pointer(spec.strip().lower())
            if pointer is None:
                raise LookupError(f"gate.baseline: bundle {spec[:12]} has no release in {registry.url}")
            return _from_release(_fetch(registry, pointer, cache_dir, public_key), "release", spec)
        return _from_path(Path(spec), spec, public_key)
    except (LookupError, ValueError, OSError) as exc:  # ReleaseError and ItemScoresError are ValueErrors
        return Baseline("registry" if spec is None else "release", spec=spec, error=f"baseline unusable: {exc}")


def _registry(remote: str | None, repo_root: str | Path):
    """The release registry, or None when none is configured here (a remote *name* with no DVC
    repository to resolve it: a params file outside a pipeline checkout)."""
    from pipeline.release.registry import Registry

    if not remote:
        return None
    if "://" not in remote and "/" not in remote and not (Path(repo_root) / ".dvc").is_dir():
        return None
    return Registry.from_name_or_url(remote, repo_root)


def _latest(candidate: str | None, suite: dict, remote, repo_root, cache_dir, public_key) -> Baseline:
    registry = _registry(remote, repo_root)
    if registry is None:
        return Baseline("none", note=f"{NO_PREVIOUS} (no release registry configured here: gate.registry {remote!r})")
    # A local registry nothing was pushed to yet (a fresh clone's) holds no releases. The note
    # below reads the same as for one holding only this bundle: its own first release must not
    # change its gate.json.
    fresh = "://" not in registry.url and not Path(registry.url).exists()
    pointers = [] if fresh else sorted(registry.list(), key=lambda p: (p.released_at, p.bundle_digest), reverse=True)
    other_version = None
    for pointer in pointers:
        if pointer.bundle_digest == candidate:
            continue
        folder = _fetch(registry, pointer, cache_dir, public_key)
        theirs = read_json(folder / "eval.json").get("suite") or {}
        if theirs.get("name") != suite.get("name"):
            continue
        if theirs.get("version") == suite.get("version"):
            return _from_release(folder, "registry", None, pointer.released_at)
        if other_version is None:
            other_version = (folder, pointer.released_at)
    if other_version is not None:
        found = _from_release(other_version[0], "registry", None, other_version[1])
        found.note = (f"no earlier release of {suite.get('name')} v{suite.get('version')}; the latest release of "
                      f"the suite at another version, compared on the items both versions share")
        return found
    return Baseline("none", note=f"{NO_PREVIOUS} (no other release of suite {suite.get('name')} in the registry)")


def _cached(folder: Path, pointer) -> bool:
    """The cached evidence is the release the registry points at, byte for byte."""
    from pipeline.release.record import ReleaseRecord

    if not all((folder / n).is_file() for n in _KEPT):
        return False
    if sha256_file(folder / "release.json") != pointer.record_sha256:
        return False
    record = ReleaseRecord.model_validate_json((folder / "release.json").read_bytes())
    return all(n in record.evidence and sha256_file(folder / n) == record.evidence[n].sha256 for n in _KEPT[1:])


def _fetch(registry, pointer, cache_dir: str | Path, public_key) -> Path:
    """release.json, eval.json and gate.json of a release, from the cache or pulled and opened."""
    from pipeline.release.open import open_release
    from pipeline.release.record import ReleaseError

    folder = Path(cache_dir) / pointer.bundle_digest
    if folder.is_dir() and _cached(folder, pointer):
        return folder
    tmp = Path(tempfile.mkdtemp(prefix="tailgate-baseline-"))
    try:
        pulled = registry.pull(pointer.bundle_digest, tmp / "release")
        key = public_key if public_key and Path(public_key).is_file() else None
        open_release(pulled, public_key=key)
        if sha256_file(pulled / "release.json") != pointer.record_sha256:
            raise ReleaseError(f"release {pointer.bundle_digest[:12]}: its release.json is not the one the "
                               "registry's index points at", "release.json")
        if folder.exists():
            shutil.rmtree(folder)
        with atomic_dir(folder) as out:
            for name in _KEPT:
                shutil.copyfile(pulled / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _from_release(folder: Path, source: str, spec: str | None, released_at: str | None = None) -> Baseline:
    ev, gate = read_json(folder / "eval.json"), read_json(folder / "gate.json")
    record = read_json(folder / "release.json")
    where = f"release {str(ev.get('bundle_digest'))[:12]} gate.json"
    items = None
    if gate.get("items") is not None:
        items = ItemScores.from_json(gate["items"], where)
        check_against_report(items, ev, where)
    files = {n: sha256_file(folder / n) for n in _KEPT}
    note = "" if items is not None else ("the release carries no per-item scores (released before releases did): "
                                         "compared by means against the budgets, no paired test")
    return Baseline(source, note=note, spec=spec, bundle_digest=ev.get("bundle_digest"),
                    released_at=released_at or record.get("released_at"), eval=ev, items=items, files=files)


def _from_path(path: Path, spec: str, public_key) -> Baseline:
    from pipeline.release.open import open_release
    from pipeline.release.record import is_release_dir

    if path.is_dir():
        if not is_release_dir(path):
            raise LookupError(f"gate.baseline {spec}: a directory that is not a release (no release.json)")
        key = public_key if public_key and Path(public_key).is_file() else None
        open_release(path, public_key=key)
        return _from_release(path, "release", spec)
    if not path.is_file():
        raise LookupError(f"gate.baseline {spec}: no such file")
    ev = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(ev, dict):
        raise ItemScoresError(f"{spec}: not an eval report")
    files, items = {"eval.json": sha256_file(path)}, None
    samples, gate = path.with_name("eval_samples.jsonl"), path.with_name("gate.json")
    if samples.is_file():
        items, files["eval_samples.jsonl"] = read_samples(samples, ev), sha256_file(samples)
    elif gate.is_file():
        g = read_json(gate)
        if g.get("bundle_digest") == ev.get("bundle_digest") and g.get("items") is not None:
            items = ItemScores.from_json(g["items"], str(gate))
            check_against_report(items, ev, str(gate))
            files["gate.json"] = sha256_bytes(gate.read_bytes())
    note = "" if items is not None else (f"no per-item scores beside {spec}: compared by means against the budgets, "
                                         "no paired test")
    return Baseline("file", note=note, spec=spec, bundle_digest=ev.get("bundle_digest"), eval=ev, items=items,
                    files=files)
