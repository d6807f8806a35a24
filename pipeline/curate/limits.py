"""What curation may throw away: the run's quarantine share and each slice's loss.

A global quarantine share hides where the records went. The filters hit the feared tails
first (long inputs share filler text with each other and with eval items; rare cases are
templated alike, so they look like near duplicates), and a run that keeps 90% of its records
can still have stripped a tail slice bare. So every slice (the records' `slice` field) is
counted on its own, in and out, per reason, and a slice that loses more than its limit fails
the stage (or warns, `on_slice_loss`). The limit is one number for every slice or one per
slice (`max_slice_loss_fraction: {"*": 0.5, outage: 0.0, common: 0.8}`): a protected tail at
0, a templated common slice allowed to lose more of its near-identical records. A limit for a
slice that no input record has fails the stage whatever on_slice_loss says: a misspelt name
would otherwise protect nothing, silently.

Every failure names the reason that took most of the records and the param that controls
that reason (REASON_PARAMS), so the fix starts from the message, not from the code.
"""

from __future__ import annotations

import logging
from collections import Counter

from pipeline.curate import validate as v
from pipeline.params import CurateParams

log = logging.getLogger(__name__)

# The bucket of records whose slice is unknown: rejected before the `slice` field could be read
# (not JSON, not an object, a slice of the wrong type, an over-long line, an unreadable file). It
# is not a slice, and everything in it is quarantined by definition, so the slice limit does not
# judge it; max_quarantine_fraction does.
NO_SLICE = "(none)"

_MALFORMED = "malformed input (fix the raw data)"

# Which knob decides each reason code: what a failure message points the user at.
REASON_PARAMS: dict[str, str] = {
    v.LINE_TOO_LONG: "curate.max_line_bytes",
    v.UNREADABLE_FILE: _MALFORMED,
    v.BAD_ROW: _MALFORMED,
    v.NON_UTF8: _MALFORMED,
    v.NUL_CHARACTER: _MALFORMED,
    v.BAD_JSON: _MALFORMED,
    v.NOT_OBJECT: _MALFORMED,
    v.BAD_FIELD: _MALFORMED,
    # the declared record shape decides whether `messages` or `prompt`/`completion` is read
    v.BAD_MESSAGES: f"{_MALFORMED}; curate.format",
    v.BAD_MESSAGE: _MALFORMED,
    v.UNKNOWN_ROLE: _MALFORMED,
    v.MISSING_ASSISTANT: f"{_MALFORMED}; curate.format",
    v.EMPTY_CONTENT: _MALFORMED,
    v.REPETITIVE: "curate.quality.max_repeated_ngram_fraction / repetition_ngram / min_words",
    v.SYMBOL_RATIO: "curate.quality.min_alpha_fraction / min_visible_chars",
    v.COPIED_PROMPT: "curate.quality.max_copied_ngram_fraction / copy_ngram",
    # no curate knob: the base's chat template, or special-token text inside a message
    v.BAD_TEMPLATE: "the base tokenizer's chat template (base stage), or special-token text in the input",
    v.TOO_SHORT: "curate.min_seq_len_tokens",
    v.TOO_LONG: "curate.max_seq_len_tokens",
    # identical after PII scrubbing: scrubbing can make records that differed in an identifier equal
    v.EXACT_DUPLICATE: "none (identical content after curate.pii scrubbing)",
    v.EVAL_CONTAMINATION: "curate.decontam.max_eval_item_share / min_overlap_fraction / ngram",
    v.NEAR_DUPLICATE: "curate.near_dup.threshold / ngram (or curate.near_dup.enabled)",
}
assert set(REASON_PARAMS) == set(v.REASONS), "every reason names what controls it"


class CurationFailed(ValueError):
    """The stage ran to the end but its outputs must not be used; `report` is complete, so the
    stage writes it before exiting non-zero."""

    def __init__(self, report: dict, message: str):
        self.report = report
        super().__init__(message)


class QuarantineTooLarge(CurationFailed):
    def __init__(self, report: dict, also: list[str] = ()):
        reasons = {k: n for k, n in report["reasons"].items() if n}
        top = dominant(Counter(reasons))
        msg = (f"{report['rejected']} of {report['input_lines']} records quarantined "
               f"({report['quarantine_fraction']:.1%}) exceeds curate.max_quarantine_fraction; reasons: {reasons}")
        if top is not None:
            msg += f"; most by {top} ({reasons[top]}), controlled by {REASON_PARAMS[top]}"
        super().__init__(report, "; ".join([msg, *also]))


class SliceLimitUnknown(CurationFailed):
    def __init__(self, report: dict, problems: list[str]):
        super().__init__(report, "; ".join(problems))


class SliceLossTooLarge(CurationFailed):
    def __init__(self, report: dict, problems: list[str]):
        super().__init__(report, "; ".join(problems) + " (set curate.on_slice_loss: warn to keep the run, "
                         "flagged in the report)")


def dominant(reasons: Counter) -> str | None:
    """The reason with the most records; ties go to the check that runs first."""
    if not any(reasons.values()):
        return None
    return max((r for r in v.REASONS if reasons.get(r)), key=lambda r: (reasons[r], -v.REASONS.index(r)))


class SliceTally:
    """Records in, kept per split and quarantined per reason, for each slice."""

    def __init__(self):
        self.kept: dict[str, Counter[str]] = {}
        self.lost: dict[str, Counter[str]] = {}

    def add(self, slice_name: str, split: str | None, reason: str | None) -> None:
        self.kept.setdefault(slice_name, Counter())
        self.lost.setdefault(slice_name, Counter())
        if reason is not None:
            self.lost[slice_name][reason] += 1
        else:
            self.kept[slice_name][split] += 1

    def table(self, params: CurateParams) -> dict[str, dict]:
        """slice -> counts and loss limit, named slices sorted, the unknown-slice bucket last."""
        names = sorted(n for n in self.kept if n != NO_SLICE) + ([NO_SLICE] if NO_SLICE in self.kept else [])
        out = {}
        for name in names:
            kept, lost = self.kept[name], self.lost[name]
            n_kept, n_lost = sum(kept.values()), sum(lost.values())
            out[name] = {"input": n_kept + n_lost, "kept": n_kept, "train": kept.get("train", 0),
                         "val": kept.get("val", 0), "quarantined": n_lost,
                         "loss_fraction": n_lost / (n_kept + n_lost),
                         "max_loss_fraction": None if name == NO_SLICE else params.slice_loss_limit(name),
                         "reasons": {r: lost[r] for r in v.REASONS if lost.get(r)}}
        return out


def slice_loss(slices: dict[str, dict], params: CurateParams) -> dict:
    """The limits, the action, every slice over its limit with the reason that took most of it,
    and the slices a per-slice limit names that no input record has."""
    flagged = []
    for name, s in slices.items():
        if name == NO_SLICE or s["loss_fraction"] <= s["max_loss_fraction"]:
            continue
        top = dominant(Counter(s["reasons"]))
        flagged.append({"slice": name, "input": s["input"], "quarantined": s["quarantined"],
                        "loss_fraction": s["loss_fraction"], "limit": s["max_loss_fraction"], "reason": top,
                        "reason_count": s["reasons"][top], "controlled_by": REASON_PARAMS[top]})
    judged = {n: s for n, s in slices.items() if n != NO_SLICE}
    worst = max(judged, key=lambda n: (judged[n]["loss_fraction"], n), default=None)
    limits = params.max_slice_loss_fraction
    unknown = sorted(n for n in limits if n != "*" and n not in judged) if isinstance(limits, dict) else []
    return {"max_slice_loss_fraction": limits, "on_slice_loss": params.on_slice_loss,
            "not_judged": NO_SLICE, "worst_slice": worst,
            "worst_loss_fraction": judged[worst]["loss_fraction"] if worst is not None else 0.0,
            "flagged": flagged, "unknown_slices": unknown}


def describe(f: dict) -> str:
    return (f"slice {f['slice']!r} lost {f['quarantined']} of its {f['input']} records ({f['loss_fraction']:.1%}), "
            f"over its curate.max_slice_loss_fraction {f['limit']:g}: most by {f['reason']} ({f['reason_count']}), "
            f"controlled by {f['controlled_by']}")


def enforce(report: dict, params: CurateParams) -> None:
    """Raise CurationFailed when the run or a slice lost more than its limit (a slice only warns
    with on_slice_loss: warn), or a per-slice limit names a slice the input lacks. The report
    already holds the counts and the flags either way."""
    sl = report["slice_loss"]
    problems = [describe(f) for f in sl["flagged"]]
    if params.on_slice_loss == "warn":
        for p in problems:
            log.warning("curate: %s (curate.on_slice_loss: warn, so the run goes on)", p)
        problems = []
    unknown = [f"curate.max_slice_loss_fraction names slice {n!r}, which no input record has (slices: "
               f"{', '.join(n for n in report['slices'] if n != NO_SLICE) or 'none'}); fix or remove the name"
               for n in sl.get("unknown_slices", ())]
    if report["quarantine_fraction"] > params.max_quarantine_fraction:
        raise QuarantineTooLarge(report, unknown + problems)
    if unknown:
        raise SliceLimitUnknown(report, unknown + problems)
    if problems:
        raise SliceLossTooLarge(report, problems)
