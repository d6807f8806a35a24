"""A failed gate leaves no earlier release looking current.

When the gate fails, `dvc repro` stops before the release stage, so reports/release.json and
reports/model_card.md would still describe the last bundle that was released, possibly of
another task, beside a gate.md that refused this one. The gate stage therefore replaces them
with a record that says nothing was released for this bundle, why, and which release they
described before.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.files import atomic_write_json, atomic_write_text

NOT_RELEASED = "not released"


def _previous_digest(paths: list[Path]) -> str | None:
    for p in paths:
        if p.suffix == ".json" and p.is_file():
            try:
                record = json.loads(p.read_text(encoding="utf-8"))
            except ValueError:
                return None
            if record.get("status") != NOT_RELEASED:
                return record.get("bundle_digest")
            return record.get("previous_release")
    return None


def mark_not_released(paths: list[str | Path], decision: dict, summary: str | Path) -> list[Path]:
    """Overwrite the release stage's report files that exist with a not-released record for
    decision's bundle; returns the files written."""
    paths = [Path(p) for p in paths]
    previous = _previous_digest(paths)
    digest = decision.get("bundle_digest") or "unknown"
    failed = list(decision.get("failed") or [])
    written = []
    for p in paths:
        if not p.exists():
            continue
        if p.suffix == ".json":
            atomic_write_json(p, {"status": NOT_RELEASED, "bundle_digest": decision.get("bundle_digest"),
                                  "gate_failed": failed, "gate_summary": str(summary), "previous_release": previous})
        else:
            was = (f" It described bundle `{previous}`, released earlier; that release is still in the registry, but "
                   "it is not what this pipeline last evaluated." if previous else "")
            atomic_write_text(p, f"# Not released\n\nThe release gate refused bundle `{digest}` "
                                 f"({', '.join(failed) or 'no verdict'}): see `{summary}`. This file held the model "
                                 f"card of the last release and was replaced so it cannot be read as current.{was}\n")
        written.append(p)
    return written
