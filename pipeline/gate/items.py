"""Per-item scores: what the paired comparison needs from both runs.

The evaluate stage writes them to `eval_samples.jsonl` (one row per item: id, slice, each
metric). The gate reads them, checks them against the eval report they came with (same items,
same per-slice counts and means, so a stale or foreign samples file cannot stand in), and keeps
the report's metrics in `gate.json` in a compact columnar form. A release carries its gate.json,
so the next gate finds the released model's per-item scores in the release it compares with.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.files import digest_json

# Means in the report and means recomputed here add the same floats in another order.
_MEAN_TOLERANCE = 1e-9


class ItemScoresError(ValueError):
    """Per-item scores that cannot be used: unreadable, malformed, or not the report's items."""


@dataclass(frozen=True)
class ItemScores:
    ids: list[str]
    slices: list[str]
    metrics: dict[str, list[float | None]]
    # per item, a hash of its prompt and reference: an id whose item was rewritten in a new suite
    # version is not the same item (None: not recorded)
    contents: list[str] | None = None
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {i: k for k, i in enumerate(self.ids)})

    def value(self, item_id: str, metric: str) -> float | None:
        col = self.metrics.get(metric)
        k = self._index.get(item_id)
        return None if col is None or k is None else col[k]

    def slice_of(self, item_id: str) -> str:
        return self.slices[self._index[item_id]]

    def content_of(self, item_id: str) -> str | None:
        return None if self.contents is None else self.contents[self._index[item_id]]

    def to_json(self) -> dict:
        out = {"ids": list(self.ids), "slices": list(self.slices),
               "metrics": {m: list(self.metrics[m]) for m in sorted(self.metrics)}}
        if self.contents is not None:
            out["contents"] = list(self.contents)
        return out

    @classmethod
    def from_json(cls, data: object, where: str) -> "ItemScores":
        """The columnar form a gate.json records; ItemScoresError naming `where` if malformed."""
        if not isinstance(data, dict) or not isinstance(data.get("ids"), list) or \
                not isinstance(data.get("slices"), list) or not isinstance(data.get("metrics"), dict):
            raise ItemScoresError(f"{where}: item scores need ids, slices and metrics")
        n = len(data["ids"])
        if len(data["slices"]) != n or len(set(data["ids"])) != n:
            raise ItemScoresError(f"{where}: item scores have {n} ids ({len(set(data['ids']))} distinct) and "
                                  f"{len(data['slices'])} slices")
        metrics = {}
        for m, col in data["metrics"].items():
            if not isinstance(col, list) or len(col) != n or not all(_number_or_none(v) for v in col):
                raise ItemScoresError(f"{where}: item scores of {m!r} are not {n} numbers (or nulls)")
            metrics[m] = [None if v is None else float(v) for v in col]
        contents = data.get("contents")
        if contents is not None and (not isinstance(contents, list) or len(contents) != n
                                     or not all(isinstance(c, str) for c in contents)):
            raise ItemScoresError(f"{where}: item contents are not {n} strings")
        return cls([str(i) for i in data["ids"]], [str(s) for s in data["slices"]], metrics, contents)


def _number_or_none(v: object) -> bool:
    return v is None or (isinstance(v, (int, float)) and math.isfinite(v))


def report_metrics(report: dict) -> list[str]:
    """The per-item metrics a report summarizes (each `overall.<m>` that is a mean over items)."""
    overall = report.get("overall") or {}
    return sorted(m for m, v in overall.items() if isinstance(v, dict) and "mean" in v)


def read_samples(path: str | Path, report: dict) -> ItemScores:
    """The report's per-item metrics from an eval_samples.jsonl, checked against the report."""
    path = Path(path)
    wanted = report_metrics(report)
    ids, slices, contents, cols = [], [], [], {m: [] for m in wanted}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ItemScoresError(f"{path}: unreadable ({exc})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ItemScoresError(f"{path}:{n}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("id"), str) or not isinstance(row.get("slice"), str):
            raise ItemScoresError(f"{path}:{n}: a sample needs a string id and slice")
        ids.append(row["id"])
        slices.append(row["slice"])
        contents.append(digest_json({"prompt": row.get("prompt"), "gold": row.get("gold")})[:16])
        for m in wanted:
            v = row.get(m)
            if isinstance(v, bool):
                v = float(v)
            if not _number_or_none(v):
                raise ItemScoresError(f"{path}:{n} (item {row['id']}): {m} is {v!r}, not a number")
            cols[m].append(None if v is None else float(v))
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ItemScoresError(f"{path}: item ids repeat: {', '.join(dup)}")
    scores = ItemScores(ids, slices, cols, contents)
    check_against_report(scores, report, str(path))
    return scores


def check_against_report(scores: ItemScores, report: dict, where: str) -> None:
    """The scores are the report's items: per slice, each metric's count and mean agree."""
    items = (report.get("suite") or {}).get("items")
    if isinstance(items, int) and items != len(scores.ids):
        raise ItemScoresError(f"{where}: {len(scores.ids)} items, the report evaluated {items}")
    for name, node in sorted((report.get("slices") or {}).items()):
        members = [k for k, s in enumerate(scores.slices) if s == name]
        for m, col in sorted(scores.metrics.items()):
            summary = node.get(m) if isinstance(node, dict) else None
            if not isinstance(summary, dict) or not isinstance(summary.get("mean"), (int, float)):
                continue
            values = [col[k] for k in members if col[k] is not None]
            n = summary.get("n", len(values))
            mean = math.fsum(values) / len(values) if values else None
            if len(values) != n or mean is None or abs(mean - summary["mean"]) > _MEAN_TOLERANCE:
                raise ItemScoresError(
                    f"{where}: slice {name!r} {m}: {len(values)} items, mean {mean} here; the report has "
                    f"n={n}, mean {summary['mean']} (the samples are not this report's)")
