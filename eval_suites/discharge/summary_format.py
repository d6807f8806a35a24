"""The discharge suite's answer format: parsing and field comparison of the five-line summary.

The text form is the contract between the task's data, the model and this suite's scorers:

    Diagnosis: Community-acquired pneumonia
    Medications: amoxicillin 500 mg three times daily; lisinopril 10 mg daily
    Allergies: penicillin (rash)
    Warnings: warfarin + ciprofloxacin: increased bleeding risk
    Follow-up: primary care in 1 week

Parsing rules (what `parse` accepts), chosen so that "parses" means "follows the shipped
format" and a drifted model (e.g. after quantization) shows up as a format failure:

* exactly the five field lines, each label once, in the order above; a missing, duplicated,
  unknown or reordered label makes the whole text invalid (None). The order is enforced
  because downstream readers may read fields by position and the model is trained on one
  order only, so reordering is drift, not a stylistic choice;
* labels match case-insensitively; surrounding whitespace, CRLF line endings and blank lines
  are tolerated (they carry no information);
* every value must be non-empty; list values are split on ";" with empty items dropped;
  the empty-list markers are "none" (Medications, Warnings) and "NKDA" or "none" (Allergies).

`compare` scores fields independently so evaluation can report per-field accuracy. The data
generator (pipeline/synth/summary.py) renders this format; tests/unit/test_synth.py checks
that everything it renders parses back here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FIELDS: tuple[str, ...] = ("diagnosis", "medications", "allergies", "warnings", "follow_up")
LIST_FIELDS: frozenset[str] = frozenset({"medications", "allergies", "warnings"})
LABELS: dict[str, str] = {
    "diagnosis": "Diagnosis",
    "medications": "Medications",
    "allergies": "Allergies",
    "warnings": "Warnings",
    "follow_up": "Follow-up",
}
_EMPTY_ACCEPTED: dict[str, frozenset[str]] = {
    "medications": frozenset({"none"}),
    "allergies": frozenset({"nkda", "none", "no known drug allergies"}),
    "warnings": frozenset({"none"}),
}

_WS = re.compile(r"\s+")
_TRAILING_PUNCT = ".,;:!?"


@dataclass(frozen=True)
class Summary:
    """A parsed summary (reference or prediction)."""

    diagnosis: str
    medications: tuple[str, ...]
    allergies: tuple[str, ...]
    warnings: tuple[str, ...]
    follow_up: str


def parse(text: str) -> Summary | None:
    """Parse the text form; None when it does not follow the format (see module docstring)."""
    if not isinstance(text, str):
        return None
    lines = [ln.strip() for ln in text.strip().splitlines()]
    lines = [ln for ln in lines if ln]
    if len(lines) != len(FIELDS):
        return None
    values: dict[str, object] = {}
    for name, line in zip(FIELDS, lines):
        label, sep, value = line.partition(":")
        if not sep or label.strip().casefold() != LABELS[name].casefold():
            return None
        value = value.strip()
        if not value:
            return None
        if name in LIST_FIELDS:
            if value.casefold() in _EMPTY_ACCEPTED[name]:
                values[name] = ()
                continue
            items = tuple(item.strip() for item in value.split(";") if item.strip())
            if not items:
                return None
            values[name] = items
        else:
            values[name] = value
    return Summary(**values)  # type: ignore[arg-type]


def normalize(text: str) -> str:
    """Case-fold, collapse whitespace, strip trailing punctuation: the comparison key."""
    return _WS.sub(" ", text.casefold()).strip().rstrip(_TRAILING_PUNCT).strip()


def _items(values: tuple[str, ...]) -> frozenset[str]:
    return frozenset(n for n in (normalize(v) for v in values) if n)


def compare(pred: Summary | None, gold: Summary) -> dict[str, bool]:
    """Per-field exact match after normalisation; list fields compare as sets of items.

    A prediction that did not parse (None) gets every field wrong.
    """
    if pred is None:
        return {name: False for name in FIELDS}
    out: dict[str, bool] = {}
    for name in FIELDS:
        p, g = getattr(pred, name), getattr(gold, name)
        out[name] = _items(p) == _items(g) if name in LIST_FIELDS else normalize(p) == normalize(g)
    return out
