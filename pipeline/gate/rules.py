"""Gate rules over any report metric, named by dotted path.

`slices.*.field_accuracy` names every slice's field_accuracy; a path that ends at a summary
(`{"n", "mean", "ci95"}`) is read at the rule's bound (the mean, or an end of the 95% CI).
Every rule fails closed: a path the report lacks, a wildcard that matches nothing, a value that
is not a number, all fail and say which part was missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.params import GateRegressionRule, GateRule
from pipeline.report_paths import expand, read_value


@dataclass
class Rule:
    name: str
    value: Any
    threshold: Any
    op: str  # ">=", "<=", "==", "is"
    passed: bool
    note: str = ""


def _missing_note(report: dict, concrete: str) -> str:
    """Which part of a path the report lacks, and what it has there instead."""
    node: Any = report
    seen = []
    for part in concrete.split("."):
        if isinstance(node, dict) and part in node:
            node, seen = node[part], seen + [part]
            continue
        where = ".".join(seen) or "the report"
        have = sorted(k for k in node if not isinstance(node[k], (list,))) if isinstance(node, dict) else []
        shown = ", ".join(have[:12]) + (" ..." if len(have) > 12 else "")
        return f"missing from the report (fails closed): {where} has no {part!r}" + (f"; it has: {shown}" if have else "")
    return "not a number in the report (fails closed)"


def apply_rule(rule: GateRule, report: dict) -> list[Rule]:
    op, threshold = (">=", rule.min) if rule.min is not None else ("<=", rule.max)
    suffix = "" if rule.bound == "mean" else f" [{rule.bound}]"
    out = []
    for concrete, node in expand(report, rule.metric):
        value = read_value(node, rule.bound)
        if value is None:
            out.append(Rule(concrete + suffix, None, threshold, op, False, _missing_note(report, concrete)))
            continue
        passed = value >= threshold if op == ">=" else value <= threshold
        out.append(Rule(concrete + suffix, value, threshold, op, passed, rule.note))
    return out


def apply_regression(rule: GateRegressionRule, report: dict, baseline: dict) -> list[Rule]:
    """Wildcards expand over the baseline (what was released must still be measured now)."""
    out = []
    for concrete, then_node in expand(baseline, rule.metric):
        now = read_value(expand(report, concrete)[0][1])
        then = read_value(then_node)
        name = f"regression.{concrete}"
        if now is None or then is None:
            missing = "the baseline" if then is None else "this report"
            out.append(Rule(name, None, rule.max_drop if rule.max_drop is not None else rule.max_rise, "<=", False,
                            f"{concrete} missing from {missing} (fails closed)"))
            continue
        if rule.max_drop is not None:
            out.append(Rule(name, then - now, rule.max_drop, "<=", then - now <= rule.max_drop,
                            f"drop against the baseline ({then:.4f} -> {now:.4f})"))
        else:
            out.append(Rule(name, now - then, rule.max_rise, "<=", now - then <= rule.max_rise,
                            f"rise against the baseline ({then:.4f} -> {now:.4f})"))
    return out
