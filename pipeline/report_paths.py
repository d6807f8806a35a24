"""Dotted paths into an eval report: `slices.*.field_accuracy` and the number at each.

Shared by the gate (which applies rules by path) and the suite check the evaluate stage runs
before generating (which resolves the same paths against the report a suite will produce):
a module of its own, so the evaluate stage depends on this and not on the gate.
"""

from __future__ import annotations

import math
from typing import Any


def expand(report: dict, path: str) -> list[tuple[str, Any]]:
    """The concrete paths `path` names in report, with the node at each (None where missing).
    A `*` segment expands over the keys of the dict at that point; matching nothing yields one
    (path, None) entry, so the caller fails closed rather than checking nothing."""
    out: list[tuple[str, Any]] = []

    def walk(node: Any, parts: list[str], done: list[str]) -> None:
        if not parts:
            out.append((".".join(done), node))
            return
        head, rest = parts[0], parts[1:]
        if head == "*":
            keys = sorted(node) if isinstance(node, dict) else []
            if not keys:
                out.append((".".join(done + parts), None))
            for k in keys:
                walk(node[k], rest, done + [k])
            return
        if isinstance(node, dict) and head in node:
            walk(node[head], rest, done + [head])
        else:
            out.append((".".join(done + parts), None))

    walk(report, path.split("."), [])
    return out


def read_value(node: Any, bound: str = "mean") -> float | None:
    """A number from a node: itself (a flag as 0/1), or the bound of a summary. None when it holds
    no number."""
    if isinstance(node, dict) and "mean" in node:
        if bound == "mean":
            node = node["mean"]
        else:
            ci = node.get("ci95")
            node = ci[0 if bound == "ci_low" else 1] if isinstance(ci, (list, tuple)) and len(ci) == 2 else None
    if isinstance(node, bool):  # `too_small` and other flags: gateable as 0/1 (`max: 0` forbids them)
        return float(node)
    if not isinstance(node, (int, float)) or not math.isfinite(node):
        return None
    return float(node)


def metric_names(paths) -> list[str]:
    """The metric each report path names (`overall.M`, `slices.S.M`, `reference.slices.S.M`; a
    gate rule's display suffix ` [ci_low]` ignored), in order, once each: what a rule makes
    visible on the card and in eval.md."""
    out: list[str] = []
    for path in paths:
        parts = str(path).split(" ")[0].split(".")
        if parts and parts[0] == "reference":
            parts = parts[1:]
        if len(parts) >= 2 and parts[0] == "overall":
            out.append(parts[1])
        elif len(parts) >= 3 and parts[0] == "slices":
            out.append(parts[2])
    return [m for m in dict.fromkeys(out) if m not in ("n", "suite_n", "too_small")]
