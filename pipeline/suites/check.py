"""Check a suite before a release depends on it: `check_suite(suite, gate)`.

Evaluation fails late and expensively (after minutes of generation) on a suite whose items or
scorers are broken; and a scorer that marks a reference answer wrong silently
caps every model's score, so its flips and floors mean nothing. The check runs every scorer on
every reference answer instead, which costs no model at all, and collects every problem rather
than stopping at the first, so one run tells a suite author everything to fix.

With gate rules it also builds the skeleton of the report this suite will produce and resolves
every rule's path in it the way the gate does, so a rule naming a metric or slice the report
will not have is caught here and not at release time (where it fails closed).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import yaml

from pipeline.params import GateParams
from pipeline.suites.spec import EvalItem, Suite, SuiteError

MAX_IDS = 5  # item ids named per problem: enough to find the pattern, short enough to read
NLL_KEYS = ("p50", "p90", "p99", "max", "worst5pct_mean", "mean")


@dataclass
class SuiteCheck:
    """What a suite will produce, and everything wrong with it."""

    suite: str
    root: str
    items: int = 0
    slices: dict[str, int] = field(default_factory=dict)
    metrics: list[str] = field(default_factory=list)          # every scorer output, in scorer order
    correctness: list[str] = field(default_factory=list)
    lower_is_better: list[str] = field(default_factory=list)
    headline: str = ""
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)         # worth reading, not worth failing on
    # slice -> the metrics its items' references produce (a scorer may write a metric for some
    # items only, e.g. a recall over the feared slice): the report has it in those slices only
    slice_metrics: dict[str, list[str]] = field(default_factory=dict)
    # metric -> how many items' references produce it (a metric some items are n/a for has fewer)
    metric_items: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_for_problems(self) -> None:
        if self.problems:
            listed = "\n".join(f"  - {p}" for p in self.problems)
            raise SuiteError(f"suite {self.suite} ({self.root}) has {len(self.problems)} problem(s):\n{listed}")


def _check_tasks(suite: Suite, problems: list[str]) -> None:
    # Evaluation builds every task from suite.yaml; a task YAML left beside it would look like
    # configuration (a filter, a metric, a data path) while changing nothing: a trap, so refused.
    from pipeline.evaluate.tasks import OUTPUT_TYPES

    for attr in OUTPUT_TYPES:
        name = getattr(suite.spec, attr)
        for folder in ("tasks", "."):
            path = suite.root / folder / f"{name}.yaml"
            if name is not None and path.is_file() and path.name != "suite.yaml":
                problems.append(f"{attr} {name!r}: {path} is never read: evaluation builds the task from suite.yaml "
                                "(generation budget, stop strings, greedy); delete the file, and change the suite "
                                "instead")


def _ids(items: list[EvalItem]) -> str:
    shown = [it.id for it in items[:MAX_IDS]]
    return f"{shown}" + (f" and {len(items) - MAX_IDS} more" if len(items) > MAX_IDS else "")


def _run_scorers(scorers: list, items: list[EvalItem], check: SuiteCheck) -> None:
    """Every scorer on every reference answer: errors, imperfect correctness, metric clashes."""
    from pipeline.evaluate.scoring import reference_output

    writer: dict[str, str] = {}                              # metric -> the scorer that writes it
    for s in scorers:
        if s.needs_choices and any(it.options is None for it in items):
            # Reported as a choices problem; its errors on such items would only be noise.
            for m in s.metrics:
                writer.setdefault(m, s.name)
            continue
        seen = list(s.metrics)
        errors: dict[str, list[EvalItem]] = {}
        wrong: dict[str, list[EvalItem]] = {}
        feared: dict[str, list[EvalItem]] = {}
        for it in items:
            try:
                values = s(reference_output(it), it)
            except Exception as exc:  # any failure of user code is a finding, not a crash of the check
                errors.setdefault(f"{type(exc).__name__}: {exc}", []).append(it)
                continue
            in_slice = check.slice_metrics.setdefault(it.slice, [])
            for k in values:
                check.metric_items[k] = check.metric_items.get(k, 0) + 1
            for k, v in values.items():
                if k not in in_slice:
                    in_slice.append(k)
                if k not in seen:
                    seen.append(k)
                if k in s.correctness and v != 1.0:
                    wrong.setdefault(k, []).append(it)
                if k in s.lower_is_better and v > 0.0:
                    feared.setdefault(k, []).append(it)
        for msg, bad in list(errors.items())[:3]:
            check.problems.append(f"scorer {s.name} fails on the reference answers of items {_ids(bad)}: {msg}")
        if len(errors) > 3:
            check.problems.append(f"scorer {s.name} fails in {len(errors) - 3} more ways on other items")
        for metric, bad in wrong.items():
            check.problems.append(f"scorer {s.name} marks reference answers wrong on correctness metric {metric} "
                                  f"({len(bad)} of {len(items)} items: {_ids(bad)}); a suite's references must "
                                  "score 1.0 on every correctness metric")
        for metric, bad in feared.items():
            # A feared rate (refusals, hallucinations) above 0 on the references themselves puts a
            # floor under every model's rate: not necessarily wrong, worth a look.
            check.warnings.append(f"lower-is-better metric {metric} is above 0 on the reference answers of "
                                  f"{len(bad)} items: {_ids(bad)}")
        for m in s.correctness:
            if m not in seen and not errors:
                check.problems.append(f"scorer {s.name} declares correctness metric {m!r} but never outputs it")
        for m in seen:
            if m in writer:
                check.problems.append(f"metric {m!r} is written by both {writer[m]} and {s.name} (give one a "
                                      "`prefix:`)")
            writer.setdefault(m, s.name)
        for m in s.lower_is_better:
            if m in s.correctness:
                check.problems.append(f"scorer {s.name}: {m!r} is declared both correctness and lower-is-better")
    check.metrics = list(writer)


# what the report writes beside the metrics of a slice or a summary: a metric of that name would
# be shadowed or misread by a gate path
REPORT_FIELDS = frozenset({"n", "suite_n", "too_small", "mean", "ci95", "interval"})
# report sections whose values are all in [0, 1]: a floor above 1 or a ceiling below 0 never passes
_UNIT_RANGE_DAMAGE = ("flip_rate", "unflip_rate", "identical_outputs")


def check_suite(suite: Suite, gate: GateParams | None = None, damage: bool = True,
                limit: int | None = None, tokenizer=None) -> SuiteCheck:
    """Everything that would stop `suite` from evaluating, or make its report meaningless.
    `gate` (the params' gate section) adds a check that every rule's path will be in the report;
    `damage` says whether that report will have the damage and reference sections; `limit`
    (evaluate.limit) is the items per slice evaluation will take, so slice sizes are checked as
    evaluated; `tokenizer` (the bundle's) lets it check the reference answers fit the generation
    budget."""
    from pipeline.evaluate.scoring import build_scorer

    spec = suite.spec
    check = SuiteCheck(suite=suite.name, root=str(suite.root), headline=spec.headline_metric)
    try:
        items = suite.items()
    except SuiteError as exc:
        check.problems.append(f"items do not load: {exc}")
        items = []
    check.items = len(items)
    check.slices = dict(sorted(Counter(it.slice for it in items).items()))
    evaluated = {k: min(n, limit) if limit is not None else n for k, n in check.slices.items()}
    small = {k: n for k, n in evaluated.items() if n < spec.min_slice_n}
    if small:
        limited = f" as evaluated with evaluate.limit={limit}" if limit is not None else ""
        check.warnings.append(f"slices smaller than min_slice_n={spec.min_slice_n}{limited} (reported as too small "
                              f"to trust): {small}")
    if limit is not None and sum(evaluated.values()) < check.items:
        check.warnings.append(f"evaluate.limit={limit} evaluates {sum(evaluated.values())} of {check.items} items; the "
                              "gate refuses a limited evaluation unless gate.allow_limited_evaluation is true")
    _check_tasks(suite, check.problems)

    scorers, unbuilt = [], 0
    for entry in spec.scorers:
        try:
            scorers.append(build_scorer(suite, entry))
        except Exception as exc:  # SuiteError, or an import error in the suite's scorers.py
            check.problems.append(f"scorer {entry!r} does not build: {exc}")
            unbuilt += 1
    check.correctness = [m for s in scorers for m in s.correctness]
    check.lower_is_better = [m for s in scorers for m in s.lower_is_better]

    needs = [s.name for s in scorers if s.needs_choices]
    no_options = [it for it in items if it.options is None]
    if needs and spec.choice_task is None:
        check.problems.append(f"scorers {needs} need option log-likelihoods: the suite needs a choice_task")
    if (needs or spec.choice_task) and no_options:
        why = f"scorers {needs} need" if needs else f"choice_task {spec.choice_task!r} needs"
        check.problems.append(f"{why} options on every item; {len(no_options)} items have no "
                              f"`{spec.options_field}`: {_ids(no_options)}")

    if items:
        _run_scorers(scorers, items, check)
    else:
        check.metrics = [m for s in scorers for m in s.metrics]
    if scorers and items and spec.headline_metric not in check.metrics:
        check.problems.append(f"headline_metric {spec.headline_metric!r} is not produced by any scorer; "
                              f"metrics: {check.metrics}")
    elif scorers and items and not unbuilt and check.metric_items.get(spec.headline_metric, 0) < len(items):
        check.problems.append(f"headline_metric {spec.headline_metric!r} is produced for "
                              f"{check.metric_items.get(spec.headline_metric, 0)} of {len(items)} items: the worst "
                              "slice and the length buckets need it on every item (pick a metric every item has)")
    for m in check.metrics:
        if "." in m or m in REPORT_FIELDS:
            check.problems.append(f"metric name {m!r} " + ("contains '.', which gate paths split on" if "." in m else
                                  "collides with a field the report writes beside every metric") +
                                  " (rename it, or give its scorer a `prefix:`)")
    if tokenizer is not None and items:
        budget = spec.generation.max_new_tokens
        long = [it for it in items if len(tokenizer.encode(it.reference, add_special_tokens=False)) > budget]
        if long:
            check.warnings.append(f"{len(long)} reference answers are longer than generation.max_new_tokens={budget} "
                                  f"tokens, so no model can produce them whole within the budget: {_ids(long)}")
    if gate is not None and (unbuilt or not items):
        # Without every item and scorer the skeleton would lack slices and metrics, and each
        # rule would be reported missing for a reason already listed above.
        check.warnings.append("gate rules not checked: the suite's items or scorers do not load")
    elif gate is not None:
        _check_gate(gate, check, suite, damage)
    return check


# -- gate rules against the report this suite will produce ---------------------------------------

def _summary(n: int) -> dict:
    return {"n": n, "mean": 0.0, "ci95": [0.0, 0.0]}


def skeleton_report(check: SuiteCheck, has_nll: bool, damage: bool) -> dict[str, Any]:
    """The shape of reports/eval.json for a suite that produces check's metrics over check's
    slices, every number 0.0. Sections that evaluation writes only sometimes (NLL without a
    loglikelihood_task, damage when it is off, flips without correctness metrics) are absent,
    so a rule on them is found missing here exactly as the gate would find it missing."""
    n, head = check.items, check.headline
    slices = {name: {"n": k, "suite_n": k, "too_small": False,
                     **{m: _summary(k) for m in check.metrics if m in check.slice_metrics.get(name, check.metrics)}}
              for name, k in check.slices.items()}
    nll = {k: 0.0 for k in NLL_KEYS} if has_nll else {}
    report: dict[str, Any] = {
        "headline_metric": head,
        "overall": {m: _summary(n) for m in check.metrics},
        "slices": slices,
        "worst_slice": {"slice": next(iter(check.slices), ""), "mean": 0.0, "n": n, "too_small": False},
    }
    if has_nll:
        report["nll_per_token"] = dict(nll)
        report["nll_by_slice"] = {name: dict(nll) for name in check.slices}
    if damage:
        dmg_slices = {name: {"n": k, f"{head}_shipped": 0.0, f"{head}_reference": 0.0, f"{head}_drop": 0.0,
                             **({"delta_nll_mean": 0.0} if has_nll else {})}
                      for name, k in check.slices.items()}
        report["damage"] = {"delta_nll_per_token": dict(nll), "identical_outputs": 0.0, "worst_slice_drop": 0.0,
                            "slices": dmg_slices}
        if check.correctness:  # flips are counted over correctness metrics; none, no flip rate
            report["damage"].update(flip_rate=0.0, unflip_rate=0.0, correctness_pairs=n * len(check.correctness))
        report["reference"] = {"overall": report["overall"], "slices": slices,
                               **({"nll_per_token": dict(nll)} if has_nll else {})}
    return report


def _why_missing(report: dict, concrete: str, damage: bool, has_nll: bool) -> str:
    """Which part of a concrete path the skeleton lacks, said in the suite's terms."""
    parts = concrete.split(".")
    node: Any = report
    for i, part in enumerate(parts):
        if isinstance(node, dict) and part in node:
            node = node[part]
            continue
        where = parts[:i]
        if where in (["overall"], ["reference", "overall"]) or (len(where) in (2, 3) and where[-2] == "slices"
                                                                 and where[0] != "damage"):
            if part in report["overall"]:  # produced, but not for any item of this slice
                return f"metric {part!r} is produced only for some slices' items ({where[-1]} has none)"
            return f"unknown metric {part!r}; the suite's metrics: {', '.join(report['overall'])}"
        if where and where[-1] == "slices":
            return f"unknown slice {part!r}; the suite's slices: {', '.join(report['slices']) or '(none)'}"
        if not where and part == "damage" and not damage:
            return "no damage section: damage is off for this run"
        if not where and part in ("nll_per_token", "nll_by_slice") and not has_nll:
            return "no NLL: the suite has no loglikelihood_task"
        if where == ["damage"] and part in ("flip_rate", "unflip_rate", "correctness_pairs"):
            return f"no {part}: the suite has no correctness metrics to count flips on"
        have = sorted(node) if isinstance(node, dict) else []
        return (f"{'.'.join(where) or 'the report'} has no {part!r}"
                + (f"; it has: {', '.join(have)}" if have else ""))
    return "the report has it, but not as a number (it names a section or a label)"


def _check_gate(gate: GateParams, check: SuiteCheck, suite: Suite, damage: bool) -> None:
    from pipeline.report_paths import expand, read_value

    has_nll = suite.spec.loglikelihood_task is not None
    report = skeleton_report(check, has_nll, damage)
    named = [(f"gate rule {i} ({r.metric}, {'min' if r.min is not None else 'max'} "
              f"{r.min if r.min is not None else r.max})", r.metric, r.bound) for i, r in enumerate(gate.rules)]
    named += [(f"gate regression rule {i} ({r.metric})", r.metric, "mean") for i, r in enumerate(gate.regression)]
    for i, r in enumerate(gate.rules):
        parts = r.metric.split(".")
        parts = parts[1:] if parts[0] == "reference" else parts
        scorer_metric = ((parts[0] == "overall" and len(parts) == 2 and parts[1] in check.metrics)
                         or (parts[0] == "slices" and len(parts) == 3 and parts[2] in check.metrics))
        unit = scorer_metric or (parts[0] == "damage" and len(parts) == 2 and parts[1] in _UNIT_RANGE_DAMAGE)
        if unit and ((r.min is not None and r.min > 1.0) or (r.max is not None and r.max < 0.0)):
            check.problems.append(f"gate rule {i} ({r.metric}, {'min' if r.min is not None else 'max'} "
                                  f"{r.min if r.min is not None else r.max}) can never pass: the report gives "
                                  f"{parts[-1]} in [0, 1] (a percentage threshold? write 0.4, not 40)")
    for label, path, bound in named:
        # One problem per rule and reason: `slices.*.typo` is one mistake, not one per slice.
        missing: dict[str, list[str]] = {}
        for concrete, node in expand(report, path):
            if read_value(node, bound) is None:
                missing.setdefault(_why_missing(report, concrete, damage, has_nll), []).append(concrete)
        for why, paths in missing.items():
            shown = ", ".join(paths[:MAX_IDS]) + (f" and {len(paths) - MAX_IDS} more" if len(paths) > MAX_IDS else "")
            check.problems.append(f"{label}: {shown} will not be in the report: {why}")
