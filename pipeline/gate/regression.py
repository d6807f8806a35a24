"""Regression rules: the candidate against its baseline (pipeline/gate/baseline.py).

With per-item scores on both sides, each budgeted metric is compared item by item on the items
both runs scored (pipeline/gate/paired.py): `overall.<m>` over all common items,
`slices.<s|*>.<m>` over the common items of each slice (wildcards expand over the baseline's
slices: what was released must still be measured). A rule fails when the worsening exceeds its
budget or is significant at `gate.regression_alpha` after Holm's adjustment. Without per-item
scores on the baseline (a release made before releases carried them) the means are compared
against the budgets, on the same suite version only, and the comparison says it was not paired.
"""

from __future__ import annotations

from pipeline.gate.baseline import Baseline
from pipeline.gate.items import ItemScores
from pipeline.gate.paired import Comparison, compare_metric, judge
from pipeline.gate.rules import Rule, apply_regression
from pipeline.params import GateParams
from pipeline.report_paths import expand, read_value


def _suite(report: dict) -> tuple:
    s = report.get("suite") or {}
    return s.get("name"), s.get("version")


def regression_rules(params: GateParams, report: dict, baseline: Baseline, now: ItemScores | None,
                     now_error: str | None) -> tuple[list[Rule], dict]:
    """The rules, and the comparison block of gate.json (what gate.md and the card show)."""
    if baseline.error:
        return ([Rule("baseline_present", None, baseline.spec or "the latest release of the suite", "==", False,
                      f"{baseline.error} (fails closed)")], {"paired": False, "note": baseline.error, "rows": []})
    if baseline.eval is None:
        return [], {"paired": False, "note": baseline.note, "rows": []}
    if not params.regression:
        return [], {"paired": False, "note": "gate.regression names no budgets: nothing compared", "rows": []}
    ours, theirs = _suite(report), _suite(baseline.eval)
    label = f"{theirs[0]} v{theirs[1]}"
    paired = baseline.items is not None
    if ours[0] != theirs[0] or (not paired and ours[1] != theirs[1]):
        why = ("regressions are only meaningful on the same suite" if ours[0] != theirs[0] else
               "the baseline has no per-item scores, and means over different suite versions are not comparable")
        return ([Rule("baseline_suite_matches", f"{ours[0]} v{ours[1]}", label, "==", False, why)],
                {"paired": False, "note": why, "rows": []})
    rules = [Rule("baseline_suite_matches", f"{ours[0]} v{ours[1]}", label, "==", True,
                  "same suite" + ("" if ours[1] == theirs[1] else ", another version: compared on common items"))]
    if not paired:
        for rule in params.regression:
            rules += apply_regression(rule, report, baseline.eval)
        return rules, {"paired": False, "note": baseline.note, "rows": _means_rows(params, report, baseline.eval)}
    if now is None:
        why = now_error or "this run's per-item scores are missing"
        return rules + [Rule("item_scores_present", None, "per-item scores of this run", "==", False,
                             f"{why}: the paired comparison needs them (fails closed)")], \
            {"paired": False, "note": why, "rows": []}
    shared = sorted(set(now.ids) & set(baseline.items.ids))
    # an id whose prompt or reference changed (a rewritten item in a new suite version) is not
    # the same item; a side that did not record contents cannot tell, and its ids are trusted
    def rewritten(i: str) -> bool:
        ours, theirs = now.content_of(i), baseline.items.content_of(i)
        return ours is not None and theirs is not None and ours != theirs

    changed = [i for i in shared if rewritten(i)]
    common = [i for i in shared if not rewritten(i)]
    only_then = len(set(baseline.items.ids) - set(now.ids))
    only_now = len(set(now.ids) - set(baseline.items.ids))
    rules.append(Rule("baseline_common_items", len(common), 1, ">=", bool(common),
                      f"{len(common)} items in both runs; {only_then} only in the baseline, {only_now} only now"
                      + (f", {len(changed)} rewritten (same id, another prompt or reference)" if changed else "")
                      + ("" if common else "; nothing to compare (set gate.baseline: none to release without a "
                                           "regression check)")))
    comparisons: list[Comparison] = []
    for rule in params.regression:
        for path, _ in expand(baseline.eval, rule.metric):
            parts = path.split(".")
            if len(parts) == 2 and parts[0] == "overall":
                ids = common
            elif len(parts) == 3 and parts[0] == "slices" and parts[1] != "*":
                ids = [i for i in common if now.slice_of(i) == parts[1]]
            else:
                rules += apply_regression(rule.model_copy(update={"metric": path}), report, baseline.eval)
                continue
            comparisons.append(compare_metric(path, parts[-1], ids, now, baseline.items, rule,
                                              samples=params.regression_bootstrap_samples, seed=params.regression_seed))
    judge(comparisons, params.regression_alpha)
    for c in comparisons:
        rules.append(Rule(f"regression.{c.metric}", c.worsening, c.budget, "<=", c.passed, c.reason))
    moved = sum(1 for i in common if now.slice_of(i) != baseline.items.slice_of(i))
    block = {"paired": True, "common_items": len(common), "only_baseline": only_then, "only_now": only_now,
             "rewritten": len(changed), "slice_changed": moved, "alpha": params.regression_alpha, "correction": "holm",
             "note": baseline.note, "rows": [c.as_dict() for c in comparisons]}
    return rules, block


def _means_rows(params: GateParams, report: dict, then: dict) -> list[dict]:
    """The unpaired comparison as rows for gate.md and the card (the verdicts are apply_regression's
    rules: the same arithmetic, a missing value fails)."""
    rows = []
    for rule in params.regression:
        direction = "drop" if rule.max_drop is not None else "rise"
        budget = rule.max_drop if rule.max_drop is not None else rule.max_rise
        for path, node in expand(then, rule.metric):
            now_node = expand(report, path)[0][1]
            a, b = read_value(node), read_value(now_node)
            worse = None if a is None or b is None else (a - b if direction == "drop" else b - a)
            n = _count(report, path, now_node)
            rows.append(Comparison(path, "means", n, a, b, 0, 0, worse, budget, direction,
                                   passed=worse is not None and worse <= budget).as_dict())
    return rows


def _count(report: dict, path: str, node) -> int:
    """Items behind a metric: its own n, else its slice's (per-slice summaries keep n once)."""
    if isinstance(node, dict) and isinstance(node.get("n"), int):
        return node["n"]
    parent = expand(report, path.rsplit(".", 1)[0])[0][1] if "." in path else None
    return parent["n"] if isinstance(parent, dict) and isinstance(parent.get("n"), int) else 0
