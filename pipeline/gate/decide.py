"""gate stage: release rules over the eval report of the exact bundle. Fails closed.

Reads: params `gate`; the eval report and its per-item scores; the bundle (verified: digest
and chat template); the baseline (pipeline/gate/baseline.py: by default the latest release of
the same suite), already resolved by the caller.
Writes (via the stage): `reports/gate.json` with every rule's value, threshold and verdict,
and `reports/gate.md`, one screen saying why the release passed or failed.

The fixed rules: the bundle verifies, the report describes this bundle and its chat template,
and the engine that produced it is exact (unless explicitly allowed). The rest are the
suite's own, from params (`gate.rules`, pipeline/gate/rules.py): floors and ceilings on any
report metric by path, and budgets against a baseline release, compared item by item where
both sides have per-item scores (pipeline/gate/regression.py). A rule whose value is missing
fails; a gate with no rules fails. gate.json records the baseline, the comparison and this
run's per-item scores (what the next gate compares with once this bundle is released).
"""

from __future__ import annotations

from dataclasses import asdict

from pipeline.gate.baseline import NO_PREVIOUS, Baseline
from pipeline.gate.items import ItemScores
from pipeline.gate.regression import regression_rules
from pipeline.gate.rules import Rule, apply_rule
from pipeline.params import GateParams
from pipeline.release.card_data import comparison_lines


def decide(params: GateParams, report: dict, bundle_digest: str | None, *, chat_template_sha256: str | None = None,
           bundle_error: str | None = None, baseline: Baseline | dict | None = None,
           items: ItemScores | None = None, items_error: str | None = None) -> dict:
    """Apply every rule. bundle_digest and chat_template_sha256 come from the verified bundle
    being released; bundle_error is why it failed verification (then nothing can pass).
    baseline: the resolved Baseline (a bare eval report dict is a baseline without per-item
    scores); items: this run's per-item scores, or items_error saying why there are none."""
    rules = [
        Rule("bundle_verified", bundle_error or "ok", "ok", "==", bundle_error is None,
             "every file matches the manifest" if bundle_error is None else "the bundle failed verification"),
        _same("bundle_digest_matches", report.get("bundle_digest"), bundle_digest,
              "the report must describe the bundle being released"),
        _same("chat_template_matches", _get(report, "bundle", "chat_template_sha256"), chat_template_sha256,
              "the chat template evaluated is the one shipped"),
    ]
    if bundle_digest is None or chat_template_sha256 is None:
        for r in rules[1:]:
            r.passed, r.note = False, "no verified bundle to compare with (fails closed)"
    engine_exact = _get(report, "engine", "exact")
    rules.append(Rule("engine_exact", engine_exact, True, "is",
                      engine_exact is True or (params.allow_inexact_engine and engine_exact is not None),
                      "allowed by allow_inexact_engine" if params.allow_inexact_engine else ""))
    # Exact alone is not enough: what is evaluated one batch at a time must be what is served
    # under load, so the engine must also be batch-invariant (a report from before the field
    # existed has None and fails closed).
    invariant = _get(report, "engine", "batch_invariant")
    rules.append(Rule("engine_batch_invariant", invariant, True, "is",
                      invariant is True or (params.allow_inexact_engine and invariant is not None),
                      "allowed by allow_inexact_engine" if params.allow_inexact_engine and invariant is not True
                      else "" if invariant is not None else "the report does not say (fails closed)"))
    rules.append(_complete(report, params.allow_limited_evaluation))
    if not params.rules:
        rules.append(Rule("rules_configured", 0, 1, ">=", False,
                          "gate.rules is empty: a release gated on nothing is refused (fails closed)"))
    for rule in params.rules:
        rules += apply_rule(rule, report)
    baseline = _as_baseline(params, baseline)
    if items_error is not None:
        rules.append(Rule("item_scores_match_report", None, "the report's items", "==", False,
                          f"{items_error} (fails closed)"))
    regression, comparison = regression_rules(params, report, baseline, items, items_error)
    rules += regression
    passed = all(r.passed for r in rules)
    return {"passed": passed, "bundle_digest": bundle_digest, "rules": [asdict(r) for r in rules],
            "failed": [r.name for r in rules if not r.passed], "baseline": baseline.describe(),
            "comparison": comparison, "items": items.to_json() if items is not None else None}


def _as_baseline(params: GateParams, baseline: Baseline | dict | None) -> Baseline:
    if isinstance(baseline, Baseline):
        return baseline
    spec = params.baseline
    if isinstance(baseline, dict):
        return Baseline("file", spec=spec, bundle_digest=baseline.get("bundle_digest"), eval=baseline,
                        note="an eval report without per-item scores: compared by means against the budgets")
    if spec is not None and spec.strip().lower() == "none":
        return Baseline("off", spec=spec, note="gate.baseline is none: the regression check is turned off")
    if spec is not None:
        return Baseline("file", spec=spec, error="the baseline report named in params is missing or unreadable")
    return Baseline("none", note=NO_PREVIOUS)


def _complete(report: dict, allowed: bool) -> Rule:
    """The whole suite was evaluated, or a limited run is explicitly allowed; a report that does
    not say (made before the suite's size was recorded) fails closed."""
    items, total = _get(report, "suite", "items"), _get(report, "suite", "suite_items")
    if not isinstance(items, int) or not isinstance(total, int):
        return Rule("evaluation_complete", None, "every suite item", "==", False,
                    "the report does not say how many of the suite's items were evaluated (fails closed)")
    limit = _get(report, "suite", "limit_per_slice")
    if items >= total:
        return Rule("evaluation_complete", f"{items} of {total} items", "every suite item", "==", True, "")
    return Rule("evaluation_complete", f"{items} of {total} items", "every suite item", "==", allowed,
                f"evaluate.limit={limit} per slice; " + ("allowed by gate.allow_limited_evaluation" if allowed
                                                          else "a partial evaluation is refused unless "
                                                               "gate.allow_limited_evaluation is true"))


def _same(name: str, value, expected, note: str) -> Rule:
    if value is None:
        return Rule(name, None, expected, "==", False, "value missing from the report (fails closed)")
    return Rule(name, value, expected, "==", value == expected, note)


def _get(d: dict, *path):
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


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
    lines += ["", *comparison_lines(decision, "## Against the baseline")]
    return "\n".join(lines).rstrip("\n") + "\n"
