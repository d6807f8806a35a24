"""gate stage: release rules over the eval report of the exact bundle. Fails closed.

Reads: params `gate`; the eval report; the bundle manifest (for its digest).
Writes (via the stage): `reports/gate.json` with every rule's value, threshold and verdict,
and `reports/gate.md`, one screen saying why the release passed or failed.

A rule whose value is missing fails; a report for another bundle fails; a report from an engine
that is not exact fails unless explicitly allowed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from pipeline.params import GateParams


@dataclass
class Rule:
    name: str
    value: Any
    threshold: Any
    op: str  # ">=", "<=", "==", "is"
    passed: bool
    note: str = ""


def _cmp(name: str, value, threshold, op: str, note: str = "") -> Rule:
    if value is None:
        return Rule(name, None, threshold, op, False, note or "value missing from the report (fails closed)")
    ok = {">=": lambda: value >= threshold, "<=": lambda: value <= threshold,
          "==": lambda: value == threshold, "is": lambda: value is threshold}[op]()
    return Rule(name, value, threshold, op, bool(ok), note)


def _get(d: dict, *path):
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def decide(params: GateParams, report: dict, bundle_digest: str) -> dict:
    rules = [
        _cmp("bundle_digest_matches", report.get("bundle_digest"), bundle_digest, "==",
             "the report must describe the bundle being released"),
    ]
    engine_exact = _get(report, "engine", "exact")
    rules.append(Rule("engine_exact", engine_exact, True, "is",
                      engine_exact is True or (params.allow_inexact_engine and engine_exact is not None),
                      "allowed by allow_inexact_engine" if params.allow_inexact_engine else ""))
    rules.append(_cmp("field_accuracy", _get(report, "overall", "field_accuracy", "mean"),
                      params.min_field_accuracy, ">="))
    rules.append(_cmp("format_validity", _get(report, "overall", "format_valid", "mean"),
                      params.min_format_validity, ">="))
    rules.append(_cmp("worst_slice_field_accuracy", _get(report, "worst_slice", "mean"),
                      params.min_worst_slice_field_accuracy, ">=",
                      f"worst slice: {_get(report, 'worst_slice', 'slice')}"))
    for name, floor in sorted(params.min_slice_field_accuracy.items()):
        rules.append(_cmp(f"slice[{name}].field_accuracy", _get(report, "slices", name, "field_accuracy", "mean"),
                          floor, ">="))
    if params.max_nll_p99 is not None:
        rules.append(_cmp("nll_per_token_p99", _get(report, "nll_per_token", "p99"), params.max_nll_p99, "<="))
    if params.max_hallucination_rate is not None:
        rules.append(_cmp("hallucination_rate", _get(report, "overall", "hallucination", "mean"),
                          params.max_hallucination_rate, "<=", "outputs naming a drug/allergen absent from the note"))
    passed = all(r.passed for r in rules)
    return {"passed": passed, "bundle_digest": bundle_digest, "rules": [asdict(r) for r in rules],
            "failed": [r.name for r in rules if not r.passed]}


def render_markdown(decision: dict) -> str:
    verdict = "PASS" if decision["passed"] else "FAIL"
    lines = [f"# Release gate: {verdict}", "", f"Bundle `{decision['bundle_digest'][:16]}`", ""]
    if decision["failed"]:
        lines += [f"Blocked by: {', '.join(decision['failed'])}", ""]
    lines += ["| rule | value | threshold | verdict | note |", "|---|---|---|---|---|"]
    for r in decision["rules"]:
        value = f"{r['value']:.4f}" if isinstance(r["value"], float) else str(r["value"])
        if isinstance(r["value"], str) and len(r["value"]) > 16:
            value = r["value"][:16] + "..."
        threshold = r["threshold"]
        threshold = f"{threshold[:16]}..." if isinstance(threshold, str) and len(threshold) > 16 else threshold
        lines.append(f"| {r['name']} | {value} | {r['op']} {threshold} | {'pass' if r['passed'] else '**FAIL**'} "
                     f"| {r['note']} |")
    return "\n".join(lines) + "\n"
