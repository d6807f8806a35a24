"""An export's record (tailgate_export.json): what names an export, and opening one.

Kept apart from the writers and the engines so that what only checks an export (a release being
opened, a server starting) imports neither torch nor a runtime.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.files import sha256_file

EXPORT_RECORD = "tailgate_export.json"


class ExportError(RuntimeError):
    """An export that would not be the model that was evaluated."""


def open_export(export_dir: str | Path) -> dict:
    """The export's record, after every file it lists hashes to its recorded sha256 and no file
    is there that it does not list."""
    root = Path(export_dir)
    path = root / EXPORT_RECORD
    if not path.is_file():
        raise ExportError(f"{root} has no {EXPORT_RECORD}: not an export written by `python -m pipeline.export`")
    record = json.loads(path.read_text(encoding="utf-8"))
    files = record.get("files") or {}
    for name, want in sorted(files.items()):
        if not (root / name).is_file():
            raise ExportError(f"export file {root / name} is missing")
        if sha256_file(root / name) != want:
            raise ExportError(f"export file {root / name} does not match its recorded sha256 (changed after export)")
    extra = sorted(p.name for p in root.iterdir() if p.is_file() and p.name not in files and p.name != EXPORT_RECORD)
    if extra:
        raise ExportError(f"export {root} holds files its record does not list: {', '.join(extra)}")
    return record


def export_name(record: dict) -> str:
    """The configuration's name (the export stage's folder, the release's exports/<name>)."""
    return f"gguf_{record['gguf_type']}" if record.get("kind") == "gguf" else str(record.get("kind"))


def export_digest(export_dir: str | Path) -> str:
    """What names an export: the sha256 of its record, which pins the sha256 of every file."""
    return sha256_file(Path(export_dir) / EXPORT_RECORD)
