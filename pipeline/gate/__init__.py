"""gate stage: release rules over the eval report of the exact bundle. Fails closed.

Reads: params `gate`; the eval report; the bundle (verified: digest and chat template);
the baseline report named in params, if any.
Writes (via the stage): `reports/gate.json` with every rule's value, threshold and verdict,
and `reports/gate.md`, one screen saying why the release passed or failed.

A rule whose value is missing fails; a bundle that fails verification, a report for another
bundle or another chat template fails; a report from an engine that is not exact fails unless
explicitly allowed. Quantization damage (shipped vs the 16-bit reference) and regressions
against the last release's report have their own ceilings and budgets.
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


def decide(params: GateParams, report: dict, bundle_digest: str | None, *, chat_template_sha256: str | None = None,
           bundle_error: str | None = None, baseline: dict | None = None) -> dict:
    """Apply every rule. bundle_digest and chat_template_sha256 come from the verified bundle
    being released; bundle_error is why it failed verification (then nothing can pass)."""
    rules = [
        Rule("bundle_verified", bundle_error or "ok", "ok", "==", bundle_error is None,
             "every file matches the manifest" if bundle_error is None else "the bundle failed verification"),
        _cmp("bundle_digest_matches", report.get("bundle_digest"), bundle_digest, "==",
             "the report must describe the bundle being released"),
        _cmp("chat_template_matches", _get(report, "bundle", "chat_template_sha256"), chat_template_sha256, "==",
             "the chat template evaluated is the one shipped"),
    ]
    if bundle_digest is None or chat_template_sha256 is None:
        for r in rules[1:]:
            r.passed, r.note = False, "no verified bundle to compare with (fails closed)"
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
    rules += _damage_rules(params, report)
    rules += _regression_rules(params, report, baseline)
    passed = all(r.passed for r in rules)
    return {"passed": passed, "bundle_digest": bundle_digest, "rules": [asdict(r) for r in rules],
            "failed": [r.name for r in rules if not r.passed]}


def _damage_rules(params: GateParams, report: dict) -> list[Rule]:
    """Quantization damage: the shipped precision against the 16-bit reference, same adapter."""
    rules = []
    if params.max_delta_nll_p99 is not None:
        rules.append(_cmp("damage.delta_nll_p99", _get(report, "damage", "delta_nll_per_token", "p99"),
                          params.max_delta_nll_p99, "<=", "NLL increase from quantization, p99 over examples"))
    if params.max_flip_rate is not None:
        rules.append(_cmp("damage.flip_rate", _get(report, "damage", "flip_rate"), params.max_flip_rate, "<=",
                          "fields right under reference precision, wrong as shipped"))
    if params.max_slice_accuracy_drop is not None:
        worst = max(_get(report, "damage", "slices") or {"-": {}},
                    key=lambda k: _get(report, "damage", "slices", k, "field_accuracy_drop") or 0.0)
        rules.append(_cmp("damage.worst_slice_drop", _get(report, "damage", "worst_slice_drop"),
                          params.max_slice_accuracy_drop, "<=", f"largest per-slice drop: {worst}"))
    return rules


def _regression_rules(params: GateParams, report: dict, baseline: dict | None) -> list[Rule]:
    """Each slice of the last release's report may lose at most its budget."""
    if params.baseline is None:
        return []
    if baseline is None:
        return [Rule("baseline_present", None, params.baseline, "==", False,
                     "the baseline report named in params is missing or unreadable (fails closed)")]
    same = (_get(baseline, "suite", "name"), _get(baseline, "suite", "version"))
    rules = [Rule("baseline_suite_matches", f"{_get(report, 'suite', 'name')} v{_get(report, 'suite', 'version')}",
                  f"{same[0]} v{same[1]}", "==",
                  same == (_get(report, "suite", "name"), _get(report, "suite", "version")),
                  "regressions are only meaningful on the same suite version")]

    def drop(path_now, path_then):
        now, then = _get(report, *path_now), _get(baseline, *path_then)
        return None if now is None or then is None else then - now

    rules.append(_cmp("regression.overall", drop(("overall", "field_accuracy", "mean"),
                                                 ("overall", "field_accuracy", "mean")),
                      params.regression_budget, "<=", "field-accuracy drop against the baseline"))
    for name in sorted(_get(baseline, "slices") or {}):
        budget = params.slice_regression_budgets.get(name, params.regression_budget)
        rules.append(_cmp(f"regression.slice[{name}]", drop(("slices", name, "field_accuracy", "mean"),
                                                            ("slices", name, "field_accuracy", "mean")),
                          budget, "<=", "field-accuracy drop against the baseline"))
    return rules


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return v[:16] + "..." if isinstance(v, str) and len(v) > 16 else str(v)


def render_markdown(decision: dict) -> str:
    """One screen: the verdict, why (each failed rule in full), then every rule."""
    verdict = "PASS" if decision["passed"] else "FAIL"
    digest = decision["bundle_digest"] or "unknown"
    lines = [f"# Release gate: {verdict}", "", f"Bundle `{digest[:16]}`", ""]
    failed = [r for r in decision["rules"] if not r["passed"]]
    if failed:
        lines += ["Blocked by:", ""]
        lines += [f"- **{r['name']}**: {r['value']} (needs {r['op']} {r['threshold']}){'; ' + r['note'] if r['note'] else ''}"
                  for r in failed]
        lines.append("")
    lines += ["| rule | value | threshold | verdict | note |", "|---|---|---|---|---|"]
    for r in decision["rules"]:
        lines.append(f"| {r['name']} | {_short(r['value'])} | {r['op']} {_short(r['threshold'])} "
                     f"| {'pass' if r['passed'] else '**FAIL**'} | {r['note']} |")
    return "\n".join(lines) + "\n"
