"""PII scrubbing: typed placeholders for identifiers that must not reach a trained model.

Pattern-based on purpose: a team can read, test and extend every rule, and the rules run in
the curate stage at corpus speed. Each type is one regular expression; when it has a group
named `pii`, only that group is replaced (so "MRN: 4402913" keeps its label and becomes
"MRN: [MRN]", which the model may still learn to write), otherwise the whole match is.
Patterns come from params (`curate.pii.patterns`), these are the defaults.

What this catches is what the patterns say, no more: names, addresses and free-text dates are
out of its reach (a model-based recogniser is the tool for those), which is why the report
counts what was replaced per type and the README says so.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Mapping

_MONTH = r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"  # noqa: E501

DEFAULT_PATTERNS: dict[str, str] = {
    # Local part: the RFC 5322 "atext" characters and dots; domain: labels and an alphabetic TLD.
    "email": r"(?<![\w.!#$%&'*+/=?^`{|}~-])[\w.!#$%&'*+/=?^`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
             r"(?![\w-])",
    # North American numbers with separators, and international numbers written with a leading
    # "+" and at least 8 digits. Bare digit runs are left alone: in notes they are too often a
    # lab value, an accession number or a dose.
    "phone": r"(?<![\w+/.-])(?:(?:\+?1[ .-]?)?(?:\(\d{3}\)\s?|\d{3}[ .-])\d{3}[ .-]\d{4}"
             r"|\+(?=(?:[ .()-]?\d){8})\d{1,3}(?:[ .-]?\(?\d{1,5}\)?){2,5})(?![\w/-])",
    # A record number is recognised by its label; the number alone is indistinguishable from a lab value.
    "mrn": r"(?i)\b(?:MRN|med(?:ical)?\s+rec(?:ord)?(?:\s+(?:no\.?|number|num|#))?|chart\s*(?:no\.?|number|#)|"
           r"patient\s+id|(?:acct|account)\s*(?:no\.?|number|#))\s*[:#]?\s*(?P<pii>[A-Z]{0,3}-?\d{5,12}[A-Z]{0,2})\b",
    # A date of birth, likewise, by its label: a bare date is an admission or a lab draw.
    "dob": r"(?i)\b(?:DOB|D\.O\.B\.?|date\s+of\s+birth|birth\s*date|born(?:\s+on)?)\s*[:\-]?\s*"
           rf"(?P<pii>\d{{1,2}}[/.-]\d{{1,2}}[/.-]\d{{2,4}}|\d{{4}}-\d{{2}}-\d{{2}}|{_MONTH}\.?\s+\d{{1,2}},?\s+\d{{4}}|"
           rf"\d{{1,2}}\s+{_MONTH}\.?,?\s+\d{{4}})(?![\w/-])",
    # US SSN (with separators, impossible area numbers excluded) and UK National Insurance numbers
    # (letters the scheme never issues and the reserved prefixes excluded).
    "national_id": r"(?<![\w-])(?!000|666|9\d\d)\d{3}[- ](?!00)\d{2}[- ](?!0000)\d{4}(?![\w-])|"
                   r"\b(?!BG|GB|KN|NK|NT|TN|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]\s?\d{2}\s?\d{2}\s?\d{2}\s?[A-D]\b",
}


# Cheap necessary conditions of the default patterns, checked first because Python's `re` tries
# every position of a text whose pattern starts with an assertion (about 60 us per default
# type on a 2 KB note; the gates bring the five types from about 300 to about 45 us per
# record). Each gate is False only where its pattern cannot match: they are keyed by the exact
# pattern text, so an edited pattern loses its gate instead of keeping a wrong one
# (tests/unit/test_pii.py checks gated and ungated scrubbing agree).
_DIGIT_RUN = re.compile(r"\d[\d\s.()-]{4,}\d")  # every phone and national id holds one (a BP "126/73" does not)
_MRN_LABEL = re.compile(r"med(?:ical)?\s+rec|patient\s+id")
# The only non-ASCII characters re.IGNORECASE matches to an ASCII letter (checked over all of
# Unicode): str.lower() does not turn them into that letter (U+0130 lowers to "i" + a combining
# dot), so the label gates map them first.
_FOLD_EXTRA = str.maketrans({"\u0130": "i", "\u0131": "i", "\u017f": "s", "\u212a": "k"})
_FOLD_CHARS = "\u0130\u0131\u017f\u212a"


class _Probe:
    """One text's lower-cased form and digit-run test, computed at most once."""

    __slots__ = ("text", "_lower", "_digits")

    def __init__(self, text: str):
        self.text, self._lower, self._digits = text, None, None

    @property
    def lower(self) -> str:
        if self._lower is None:
            text = self.text
            if not text.isascii() and any(c in text for c in _FOLD_CHARS):  # rare: skip the slow translate
                text = text.translate(_FOLD_EXTRA)
            self._lower = text.lower()
        return self._lower

    @property
    def has_digit_run(self) -> bool:
        if self._digits is None:
            self._digits = _DIGIT_RUN.search(self.text) is not None
        return self._digits


def _mrn_gate(p: _Probe) -> bool:
    low = p.lower
    return ("mrn" in low or "chart" in low or "acct" in low or "account" in low
            or (("med" in low or "patient" in low) and _MRN_LABEL.search(low) is not None))


_GATES = {
    DEFAULT_PATTERNS["email"]: lambda p: "@" in p.text,
    DEFAULT_PATTERNS["phone"]: lambda p: p.has_digit_run,
    DEFAULT_PATTERNS["mrn"]: _mrn_gate,
    DEFAULT_PATTERNS["dob"]: lambda p: any(label in p.lower for label in ("dob", "d.o.b", "birth", "born")),
    DEFAULT_PATTERNS["national_id"]: lambda p: p.has_digit_run,
}


def placeholder(kind: str) -> str:
    return f"[{kind.upper()}]"


@dataclass(frozen=True)
class Scrubber:
    """Compiled patterns, applied in order (earlier types win where matches overlap)."""

    patterns: tuple[tuple[str, re.Pattern[str]], ...]
    gates: tuple[Callable[[_Probe], bool] | None, ...]

    @classmethod
    def from_patterns(cls, patterns: Mapping[str, str], use_gates: bool = True) -> "Scrubber":
        compiled = []
        for kind, pattern in patterns.items():
            if not re.fullmatch(r"[a-z][a-z0-9_]*", kind):
                raise ValueError(f"PII type {kind!r}: use lowercase letters, digits and '_' (it names a placeholder)")
            try:
                rx = re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"PII pattern for {kind!r} does not compile: {exc}") from None
            if rx.search("") is not None:
                raise ValueError(f"PII pattern for {kind!r} matches the empty string (it would tag every position)")
            compiled.append((kind, rx))
        gates = tuple(_GATES.get(rx.pattern) if use_gates else None for _, rx in compiled)
        return cls(tuple(compiled), gates)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(kind for kind, _ in self.patterns)

    def scrub(self, text: str, counts: Counter[str] | None = None) -> str:
        """Text with every match replaced by its type's placeholder; `counts` gains one per match."""
        probe = _Probe(text)
        for (kind, rx), gate in zip(self.patterns, self.gates):
            if gate is not None and not gate(probe):
                continue
            out, n = self._replace(kind, rx, probe.text)
            if n:
                probe = _Probe(out)
                if counts is not None:
                    counts[kind] += n
        return probe.text

    @staticmethod
    def _replace(kind: str, rx: re.Pattern[str], text: str) -> tuple[str, int]:
        token = placeholder(kind)
        if "pii" not in rx.groupindex:
            return rx.subn(token, text)

        def sub(m: re.Match[str]) -> str:
            if m.start("pii") < 0:
                return token
            # keep the label around the identifier, replace the identifier itself
            whole, (s, e) = m.group(0), (m.start("pii") - m.start(), m.end("pii") - m.start())
            return whole[:s] + token + whole[e:]

        return rx.subn(sub, text)
