"""The structured discharge summary the generator writes: one dataclass and its text form.

The text form is the contract between the dataset, the model and the discharge suite, whose
parser and field comparison live with its scorers (eval_suites/discharge/summary_format.py):

    Diagnosis: Community-acquired pneumonia
    Medications: amoxicillin 500 mg three times daily; lisinopril 10 mg daily
    Allergies: penicillin (rash)
    Warnings: warfarin + ciprofloxacin: increased bleeding risk
    Follow-up: primary care in 1 week
"""

from __future__ import annotations

from dataclasses import dataclass, fields as dc_fields

FIELDS: tuple[str, ...] = ("diagnosis", "medications", "allergies", "warnings", "follow_up")
LIST_FIELDS: frozenset[str] = frozenset({"medications", "allergies", "warnings"})
LABELS: dict[str, str] = {
    "diagnosis": "Diagnosis",
    "medications": "Medications",
    "allergies": "Allergies",
    "warnings": "Warnings",
    "follow_up": "Follow-up",
}
# What an empty list renders as, and which spellings parse back to an empty list.
EMPTY_MARKER: dict[str, str] = {"medications": "none", "allergies": "NKDA", "warnings": "none"}
ITEM_SEPARATOR = "; "


@dataclass(frozen=True)
class Summary:
    """Ground truth (or a parsed prediction) for one discharge note."""

    diagnosis: str
    medications: tuple[str, ...]
    allergies: tuple[str, ...]
    warnings: tuple[str, ...]
    follow_up: str

    def __post_init__(self) -> None:
        # Accept lists from callers but store tuples, so instances stay hashable and equal
        # regardless of which sequence type built them.
        for name in LIST_FIELDS:
            object.__setattr__(self, name, tuple(getattr(self, name)))


assert tuple(f.name for f in dc_fields(Summary)) == FIELDS


def render(s: Summary) -> str:
    """The five-line text form (no trailing newline)."""
    lines = []
    for name in FIELDS:
        value = getattr(s, name)
        if name in LIST_FIELDS:
            value = ITEM_SEPARATOR.join(value) if value else EMPTY_MARKER[name]
        lines.append(f"{LABELS[name]}: {value}")
    return "\n".join(lines)
