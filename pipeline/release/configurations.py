"""Exports a release carries beside its bundle, each a configuration with evidence of its own.

The export stage evaluates and gates each export it was asked for (pipeline/export/run.py). The
release takes those whose own gate passed, copies each into `exports/<name>/` (the export folder
as `model/`, its eval.json, gate.json and golden.json beside it), serves it the way a user will
(`python -m serving --export`, the runtime that evaluated it) and replays every one of its own
evaluated answers against it, and pins all of it in the release record, under the one signature.
A refused export is named on the card and not shipped. Each export folder is also signed on its
own (`exports/<name>/release.sig`, same key), so a user who deploys only the GGUF checks it
without the rest of the release.

Opening a release checks each export again: its own signature when the release's is checked, the
record's entry, every evidence hash, every file of the export against its own record, the gate
verdict and the digests they all name.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from pipeline.bundle.manifest import FileEntry
from pipeline.files import hash_files, read_json, sha256_file
from pipeline.release.record import EXPORTS_DIR, SIGNATURE_NAME, ExportEntry, ReleaseError, ReleaseRecord

MODEL_DIR = "model"
EVIDENCE = ("eval.json", "gate.json", "golden.json")
REPLAY = "replay.json"
SUMMARY = "exports.json"  # the export stage's summary, in its artifacts and reports folders


def asked_for(exports_dir: str | Path | None, digest: str) -> dict[str, dict]:
    """The export stage's configurations for this bundle (name -> summary entry); {} when there
    is no export folder or nothing was asked for. A summary of another bundle is refused."""
    if exports_dir is None or not (Path(exports_dir) / SUMMARY).is_file():
        return {}
    summary = read_json(Path(exports_dir) / SUMMARY)
    if summary.get("bundle_digest") != digest:
        raise ReleaseError(f"the exports are of bundle {str(summary.get('bundle_digest'))[:12]}, the bundle is "
                           f"{digest[:12]}: rerun the export stage", str(Path(exports_dir) / SUMMARY))
    return dict(sorted((summary.get("configurations") or {}).items()))


def stage(tmp: Path, name: str, exports_dir: str | Path, reports_dir: str | Path, digest: str) -> tuple[Path, dict]:
    """Copy a passing export and its evidence into the release being built; return its folder
    and its record (every file checked against it)."""
    from pipeline.export.record import export_digest, open_export

    dest = tmp / EXPORTS_DIR / name
    shutil.copytree(Path(exports_dir) / name, dest / MODEL_DIR)
    for f in EVIDENCE:
        shutil.copyfile(Path(reports_dir) / name / f, dest / f)
    record = open_export(dest / MODEL_DIR)
    check(dest, name, digest, record, export_digest(dest / MODEL_DIR))
    return dest, record


def check(dest: Path, name: str, digest: str, record: dict, got_digest: str) -> None:
    """An export folder's evidence names this bundle and this export, and its gate passed."""
    if record.get("bundle_digest") != digest:
        raise ReleaseError(f"export {name} was made from bundle {str(record.get('bundle_digest'))[:12]}, the "
                           f"release is {digest[:12]}", f"{EXPORTS_DIR}/{name}/{MODEL_DIR}")
    gate = read_json(dest / "gate.json")
    if gate.get("passed") is not True or gate.get("failed"):
        raise ReleaseError(f"export {name}'s gate did not pass ({', '.join(gate.get('failed') or []) or 'no verdict'})",
                           f"{EXPORTS_DIR}/{name}/gate.json")
    for f in [*EVIDENCE, *([REPLAY] if (dest / REPLAY).is_file() else [])]:
        data = read_json(dest / f)
        if data.get("bundle_digest") != digest:
            raise ReleaseError(f"{EXPORTS_DIR}/{name}/{f} is for bundle {str(data.get('bundle_digest'))[:12]}, the "
                               f"release is {digest[:12]}", f"{EXPORTS_DIR}/{name}/{f}")
    # the report names the export by its record's sha256; the golden answers carry it too
    named = (read_json(dest / "eval.json").get("export") or {}).get("digest")
    golden = (read_json(dest / "golden.json").get("export") or {}).get("digest")
    if named != got_digest or golden != got_digest:
        raise ReleaseError(f"export {name}'s evaluation is of another export ({str(named)[:12]}), its files are "
                           f"{got_digest[:12]}", f"{EXPORTS_DIR}/{name}/eval.json")


def entry(dest: Path, record: dict, replayed: bool) -> ExportEntry:
    from pipeline.export.record import export_digest

    names = [*EVIDENCE, *([REPLAY] if replayed else [])]
    return ExportEntry(kind=record["kind"], digest=export_digest(dest / MODEL_DIR), gate_passed=True,
                       evidence={n: FileEntry(sha256=sha256_file(dest / n), size=(dest / n).stat().st_size)
                                 for n in sorted(names)})


def verify(root: Path, record: ReleaseRecord, check_signature: Callable[[Path], None] | None = None) -> None:
    """Every export the record pins is there, unchanged (its own signature checked with
    check_signature when given), its own gate passed and its evidence names this bundle; nothing
    else is under exports/. Raises ReleaseError naming the file."""
    from pipeline.export.record import ExportError, export_digest, open_export

    folder = root / EXPORTS_DIR
    present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    if folder.exists() and not folder.is_dir():
        raise ReleaseError(f"release file {EXPORTS_DIR!r} is not a folder", EXPORTS_DIR)
    for name in present:
        if name not in record.exports:
            raise ReleaseError(f"release file {EXPORTS_DIR}/{name} is not pinned by the release record",
                               f"{EXPORTS_DIR}/{name}")
    for name, pinned in sorted(record.exports.items()):
        dest = folder / name
        if not dest.is_dir():
            raise ReleaseError(f"release export {EXPORTS_DIR}/{name} is missing", f"{EXPORTS_DIR}/{name}")
        own = {MODEL_DIR, SIGNATURE_NAME}
        extra = sorted(p.name for p in dest.iterdir() if p.name not in own and p.name not in pinned.evidence)
        if extra:
            raise ReleaseError(f"release file {EXPORTS_DIR}/{name}/{extra[0]} is not pinned by the release record",
                               f"{EXPORTS_DIR}/{name}/{extra[0]}")
        if record.signing.method != "none" and not (dest / SIGNATURE_NAME).is_file():
            raise ReleaseError(f"release export {name} is not signed", f"{EXPORTS_DIR}/{name}/{SIGNATURE_NAME}")
        if check_signature is not None:
            try:
                check_signature(dest)
            except ReleaseError as exc:
                raise ReleaseError(f"release export {name}: {exc}", f"{EXPORTS_DIR}/{name}/{exc.path}") from None
        for f in sorted(pinned.evidence):
            if not (dest / f).is_file():
                raise ReleaseError(f"release file {EXPORTS_DIR}/{name}/{f} is missing", f"{EXPORTS_DIR}/{name}/{f}")
        actual = hash_files(dest, sorted(pinned.evidence))
        for f, want in sorted(pinned.evidence.items()):
            if actual[f] != want.sha256:
                raise ReleaseError(f"release file {EXPORTS_DIR}/{name}/{f} changed: expected sha256 {want.sha256}, "
                                   f"actual {actual[f]}", f"{EXPORTS_DIR}/{name}/{f}")
        try:
            export_record = open_export(dest / MODEL_DIR)
        except ExportError as exc:
            raise ReleaseError(f"release export {name}: {exc}", f"{EXPORTS_DIR}/{name}/{MODEL_DIR}") from None
        got = export_digest(dest / MODEL_DIR)
        if got != pinned.digest or export_record.get("kind") != pinned.kind:
            raise ReleaseError(f"release export {name} is not the one the record pins (record sha256 {got[:12]}, "
                               f"pinned {pinned.digest[:12]})", f"{EXPORTS_DIR}/{name}/{MODEL_DIR}")
        if not pinned.gate_passed:
            raise ReleaseError(f"release export {name} is pinned as refused by its gate", f"{EXPORTS_DIR}/{name}")
        check(dest, name, record.bundle_digest, export_record, got)


# -- the card ----------------------------------------------------------------------------------

def _tokens_per_s(replay: dict | None) -> str:
    if not replay or not replay.get("wall_s"):
        return "-"
    served = sum(i.get("served_tokens") or 0 for i in replay.get("per_item") or [])
    return f"{served / replay['wall_s']:.1f}"


def _replayed(replay: dict | None) -> str:
    if not replay:
        return "not replayed"
    return f"{replay['identical']}/{replay['items']} at {replay['concurrency']}"


def _n(x, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def card_lines(eval_report: dict, replay: dict | None, shipped: dict[str, dict], refused: dict[str, dict],
               size_bytes: int) -> list[str]:
    """The configurations side by side: the bundle, then each export shipped (name -> its
    eval.json, replay.json and size), then each one refused (name -> the stage's summary entry)."""
    if not shipped and not refused:
        return []
    head = eval_report.get("headline_metric")
    worst = (eval_report.get("worst_slice") or {}).get("mean")
    out = ["## Configurations", "",
           "Each configuration was evaluated on the same suite through the runtime that serves it, gated on its "
           "own, and replayed against that runtime before signing; damage is measured against the bundle, item by "
           "item. tokens/s: the replay's generated tokens over its wall time, on the release machine.", "",
           f"| configuration | runtime | size (MB) | {head} | worst slice | answers identical to the bundle | "
           "flip rate | abs delta NLL p99 | replay identical | tokens/s |", "|---|---|---|---|---|---|---|---|---|---|",
           f"| bundle (NF4 + LoRA) | {(eval_report.get('engine') or {}).get('name', '-')} | {size_bytes / 1e6:.0f} | "
           f"{_n((eval_report.get('overall') or {}).get(head, {}).get('mean'))} | {_n(worst)} | - | - | - | "
           f"{_replayed(replay)} | {_tokens_per_s(replay)} |"]
    for name, c in sorted(shipped.items()):
        ev, d = c["eval"], c["eval"].get("damage") or {}
        out.append(f"| {name} | {(ev.get('engine') or {}).get('name', '-')} | {c['size_bytes'] / 1e6:.0f} | "
                   f"{_n((ev.get('overall') or {}).get(head, {}).get('mean'))} | "
                   f"{_n((ev.get('worst_slice') or {}).get('mean'))} | {_n(d.get('identical_outputs'))} | "
                   f"{_n(d.get('flip_rate'))} | {_n((d.get('abs_delta_nll_per_token') or {}).get('p99'), '.2e')} | "
                   f"{_replayed(c.get('replay'))} | {_tokens_per_s(c.get('replay'))} |")
    out.append("")
    for name, c in sorted(refused.items()):
        out.append(f"- **{name}: refused by its gate, not shipped** ({', '.join(c.get('gate_failed') or [])})")
    if refused:
        out.append("")
    if shipped:
        out += ["Serve one with `python -m serving --bundle <release dir> --export <configuration>`; a GGUF folder "
                "also holds an Ollama `Modelfile`.", ""]
    return out
