"""Builders of the planted defects: what a hospital export really contains besides clean records.

Each builder turns a case (or a record) into the defective version and says what it did, so
defects.json can name every defect precisely. They draw from the rng they are given and nothing
else, which keeps the raw file reproducible from the seed. Every defect here must be caught by
one specific curate check (data/raw/README.md maps kind -> reason code); the builders leave a
margin to that check's default threshold, so a small change in a tokenizer or a threshold does
not silently move a defect to another reason or into the training set.
"""

from __future__ import annotations

import json
import random
import re

from .discharge import INSTRUCTION, Case
from .notes import _HEADERS as NOTE_TITLES
from .notes import filler_day
from .summary import render


def dumps(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False)


def with_note(messages: list[dict], note: str) -> list[dict]:
    out = [dict(m) for m in messages]
    out[1]["content"] = f"{INSTRUCTION}\n\n{note}"
    return out


def _one_of(rng: random.Random, text: str, pattern: str) -> re.Match | None:
    matches = list(re.finditer(pattern, text))
    return rng.choice(matches) if matches else None


# ---------------------------------------------------------------- near duplicates

_WORD_SWAPS = (("with", "w/"), ("patient", "pt"), ("Pt", "Patient"), ("and", "&"),
               ("discontinued", "stopped"), ("history", "hx"), ("the", "a"))


def near_duplicate_note(rng: random.Random, note: str) -> tuple[str, str]:
    """A copy of `note` with one whitespace, punctuation or word edit that keeps its meaning."""
    edit = rng.choice(("whitespace", "punctuation", "word"))
    if edit == "word":
        swaps = [s for s in _WORD_SWAPS if re.search(rf"\b{re.escape(s[0])}\b", note)]
        if swaps:
            old, new = rng.choice(swaps)
            m = _one_of(rng, note, rf"\b{re.escape(old)}\b")
            return note[:m.start()] + new + note[m.end():], f"word edit '{old}' -> '{new}'"
        edit = "whitespace"
    if edit == "punctuation":
        m = _one_of(rng, note, r"(?<=[A-Za-z)])\.(?=\s|$)")  # a sentence end, never a decimal point
        if m:
            return note[:m.start()] + note[m.end():], "removed a sentence-final period"
    m = _one_of(rng, note, r" |\n")
    doubled = note[:m.start()] + m.group() * 2 + note[m.end():]
    return doubled, "doubled a space" if m.group() == " " else "doubled a line break"


# ---------------------------------------------------------------- malformed lines

MALFORMED_KINDS: dict[str, str] = {
    "broken_json": "JSON text cut off mid-object",
    "non_object": "a bare JSON array of messages, not an object",
    "missing_assistant": "messages end after the user turn",
    "empty_assistant": "assistant content is an empty string",
    "unknown_role": "the user turn has role 'doctor'",
    "messages_not_list": "messages is an object keyed by role, not a list",
}


def malformed_line(kind: str, record: dict, rng: random.Random) -> str:
    """A raw line that is not a usable chat record, built from a real one."""
    msgs = record["messages"]
    if kind == "broken_json":  # cut mid-object, as a crashed export leaves it
        text = dumps(record)
        return text[: rng.randint(len(text) // 4, 3 * len(text) // 4)]
    if kind == "non_object":
        return dumps(msgs)  # a bare list of messages, no id/slice wrapper
    bad = {"id": record["id"], "slice": record["slice"]}
    if kind == "missing_assistant":
        bad["messages"] = msgs[:2]
    elif kind == "empty_assistant":
        bad["messages"] = msgs[:2] + [{"role": "assistant", "content": ""}]
    elif kind == "unknown_role":
        bad["messages"] = [msgs[0], {"role": "doctor", "content": msgs[1]["content"]}, msgs[2]]
    elif kind == "messages_not_list":
        bad["messages"] = {m["role"]: m["content"] for m in msgs}
    else:
        raise ValueError(kind)
    return dumps(bad)


# ---------------------------------------------------------------- note sections

def _split(note: str) -> tuple[str, list[str]]:
    """The note's part separator and its parts (sections, or lines of a note joined by '\\n')."""
    sep = "\n\n" if "\n\n" in note else "\n"
    return sep, note.split(sep)


_INSIDE_A_LIST = re.compile(r"(- |\d+\. |CONTINUE:|NEW:|STOPPED:|STOP taking:)")


def _boundaries(parts: list[str], start: int) -> list[int]:
    """Indices from `start` where a new part may go without splitting a list from its label."""
    return [k for k in range(start, len(parts) + 1)
            if k == len(parts) or (not _INSIDE_A_LIST.match(parts[k]) and not parts[k - 1].endswith(":"))]


def _title_end(parts: list[str]) -> int:
    """Index after the note's title line (0 for a note without one)."""
    return 1 if parts[0] in NOTE_TITLES else 0


# ---------------------------------------------------------------- PII

# Every identifier is fake and built to be matched by exactly one default pattern of
# pipeline/curate/pii.py (tests/unit/test_synth.py checks the counts per line): phone numbers
# use the 555-0100..0199 block reserved for fiction and Ofcom's drama range (020 7946 0xxx),
# e-mail addresses the reserved example.* domains.
PII_TYPES = ("email", "phone", "mrn", "dob", "national_id")
ADMISSION_YEAR = 2025  # a DOB agrees with the note's stated age
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December")
_FIRST = ("jane", "maria", "david", "wei", "amara", "tom", "priya", "luis", "grace", "samir", "ellen", "kofi")
_LAST = ("doe", "okafor", "novak", "garcia", "chen", "murphy", "haddad", "silva", "brennan", "ito")
_RELATIONS = ("daughter", "son", "wife", "husband", "sister", "niece", "partner", "brother")
_NI_FIRST, _NI_SECOND = "ABCEGHJKLMNOPRSTWXYZ", "ABCEGHJKLMNPRSTWXYZ"  # letters HMRC issues
_NI_NEVER = ("BG", "GB", "KN", "NK", "NT", "TN", "ZZ")


def _phone(rng: random.Random) -> str:
    area, line = rng.choice(("617", "508", "781", "978", "413")), f"01{rng.randint(0, 99):02d}"
    return rng.choice((f"({area}) 555-{line}", f"{area}-555-{line}", f"{area}.555.{line}", f"+1 {area} 555 {line}",
                       f"+44 20 7946 0{rng.randint(0, 999):03d}"))


def _email(rng: random.Random) -> str:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    local = rng.choice((f"{first}.{last}", f"{first[0]}{last}", f"{first}_{last}{rng.randint(1, 99)}"))
    return f"{local}@{rng.choice(('example.org', 'example.com', 'example.net'))}"


def _dob(rng: random.Random, age: int) -> str:
    y, m, d = ADMISSION_YEAR - age, rng.randint(1, 12), rng.randint(1, 28)
    return rng.choice((f"{m:02d}/{d:02d}/{y}", f"{y}-{m:02d}-{d:02d}", f"{_MONTHS[m - 1]} {d}, {y}",
                       f"{d} {_MONTHS[m - 1][:3]} {y}"))


def _ssn(rng: random.Random) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])  # 000, 666 and 9xx are never issued
    sep = rng.choice("-- ")  # hyphens twice as often as spaces
    return f"{area:03d}{sep}{rng.randint(1, 99):02d}{sep}{rng.randint(1, 9999):04d}"


def _ni(rng: random.Random) -> str:
    while (prefix := rng.choice(_NI_FIRST) + rng.choice(_NI_SECOND)) in _NI_NEVER:
        pass
    digits = f"{rng.randint(0, 999999):06d}"
    spaced = rng.random() < 0.5
    body = " ".join((digits[:2], digits[2:4], digits[4:])) if spaced else digits
    return f"{prefix}{' ' if spaced else ''}{body}{' ' if spaced else ''}{rng.choice('ABCD')}"


def _header(rng: random.Random, case: Case) -> tuple[str, list[tuple[str, str]]]:
    """The registration header an EHR export puts above the note."""
    mrn = rng.choice((f"{rng.randint(0, 10**8 - 1):08d}", f"{rng.randint(10**6, 10**7 - 1)}"))
    dob = _dob(rng, case.truth.age)
    mrn_label = rng.choice(("MRN:", "MRN", "MRN#", "Med rec #:", "Medical record number:", "Patient ID:"))
    dob_label = rng.choice(("DOB:", "DOB", "D.O.B.", "Date of birth:", "Born"))
    return f"{mrn_label} {mrn}  {dob_label} {dob}", [("mrn", mrn), ("dob", dob)]


def _contact(rng: random.Random, with_email: bool) -> tuple[str, list[tuple[str, str]]]:
    rel, phone = rng.choice(_RELATIONS), _phone(rng)
    if with_email:
        email = _email(rng)
        return f"Contact: {rel} at {phone} / {email}", [("phone", phone), ("email", email)]
    return rng.choice((f"Emergency contact: {rel}, {phone}", f"HCP: {rel}, cell {phone}")), [("phone", phone)]


def _national_id(rng: random.Random, uk: bool) -> tuple[str, list[tuple[str, str]]]:
    if uk:
        ni = _ni(rng)
        return rng.choice((f"UK visitor, NI number {ni}; GHIC on file.", f"National Insurance no. {ni}")), \
            [("national_id", ni)]
    ssn = _ssn(rng)
    return rng.choice((f"SSN {ssn} on file; insurance verified.", f"Registration: SS# {ssn}")), [("national_id", ssn)]


def _clinic(rng: random.Random, by_email: bool) -> tuple[str, list[tuple[str, str]]]:
    if by_email:
        email = _email(rng)
        return f"Copy of this summary e-mailed to the PCP office ({email}).", [("email", email)]
    phone = _phone(rng)
    return rng.choice((f"Questions after discharge: call the nurse line at {phone}.",
                       f"Clinic will call pt at {phone} with the appointment time.")), [("phone", phone)]


def pii_note(rng: random.Random, case: Case, i: int) -> tuple[str, list[tuple[str, str]]]:
    """The note of `case` with identifiers where an export puts them: a registration header
    under the title, a contact line, an ID line after the header, a clinic line at the end.
    Which lines go in cycles with `i`, so that a handful of records covers every type."""
    sep, parts = _split(case.note)
    head = _title_end(parts)
    plan = [("header", "contact_email"), ("header", "ssn", "clinic_phone"),
            ("contact_phone", "ni", "clinic_email"), ("header", "ssn", "contact_phone")][i % 4]
    planted: list[tuple[str, str]] = []
    for what in plan:
        if what == "header":
            line, found = _header(rng, case)
            at = head
        elif what.startswith("contact"):
            line, found = _contact(rng, with_email=what == "contact_email")
            at = rng.choice(_boundaries(parts, head + 1))
        elif what in ("ssn", "ni"):
            line, found = _national_id(rng, uk=what == "ni")
            at = head + 1 if plan[0] == "header" else head
        else:
            line, found = _clinic(rng, by_email=what == "clinic_email")
            at = len(parts)
        parts.insert(at, line)
        planted += found
    return sep.join(parts), planted


def pii_counts(planted: list[tuple[str, str]]) -> dict[str, int]:
    return {kind: n for kind in PII_TYPES if (n := sum(k == kind for k, _ in planted))}


# ---------------------------------------------------------------- quality defects

def repetitive_messages(rng: random.Random, case: Case, looping_reply: bool) -> tuple[list[dict], str]:
    """An export bug that pasted one progress-note block 6-10 times into the note, or a reply
    (written by an older model) that loops on one line. Either way far over the 30% share of
    repeated word 10-grams curate allows."""
    msgs = case.messages()
    if looping_reply:
        lines = render(case.summary).splitlines()
        k = rng.choice((1, 4))  # Medications or Follow-up
        times = rng.randint(10, 16)
        msgs[2]["content"] = "\n".join(lines[:k] + [lines[k]] * times)
        return msgs, f"the reply repeats its line {lines[k].split(':')[0]!r} {times} times"
    sep, parts = _split(case.note)
    block = " ".join(filler_day(rng, rng.randint(1, 3))[:2])  # a progress note (+ labs)
    times = rng.randint(6, 10)
    at = rng.choice(_boundaries(parts, _title_end(parts) + 1))
    parts[at:at] = [block] * times
    return with_note(msgs, sep.join(parts)), f"one progress-note block pasted {times} times into the note"


# Glyphs OCR puts where it cannot read a letter. Never '.', '-', '+', '@', '(', ')', a space or a
# digit: with the note's numbers those could forge a phone number, an e-mail address or an ID
# that PII scrubbing would then count.
_OCR_GLYPHS = "|!#~^*;:'`_=%&<>{}[]/\\$"


def alpha_share(text: str) -> float:
    """Letters among the non-space characters, as curate's symbol_ratio check counts them."""
    visible = [c for c in text if not c.isspace()]
    return sum(c.isalpha() for c in visible) / len(visible)


def symbol_soup_note(rng: random.Random, note: str) -> tuple[str, float]:
    """The note as OCR read a bad fax: most letters came out as glyphs, the degree signs as
    mojibake, the page framed in table borders. Returns the note and the letter share of the
    user turn it ends up in, kept well under curate's 50%."""
    rate = 0.7
    while True:
        garbled = "".join(rng.choice(_OCR_GLYPHS) if c.isalpha() and rng.random() < rate else c for c in note)
        garbled = garbled.replace("°", "Â°")  # UTF-8 read as Latin-1
        garbled = "\n".join(f"|{line}|" for line in garbled.split("\n"))
        share = alpha_share(f"{INSTRUCTION}\n\n{garbled}")
        if share < 0.4:
            return garbled, share
        rate = min(1.0, rate + 0.05)


def copied_prompt_messages(rng: random.Random, case: Case) -> tuple[list[dict], str]:
    """A reply that is the prompt pasted back: the whole user turn, the note, or its first half."""
    msgs = case.messages()
    how = rng.choice(("user_turn", "note", "note_head"))
    if how == "user_turn":
        msgs[2]["content"] = msgs[1]["content"]
        return msgs, "the reply is the user turn, verbatim"
    if how == "note":
        msgs[2]["content"] = case.note
        return msgs, "the reply is the note, verbatim"
    lines = case.note.split("\n")
    msgs[2]["content"] = "\n".join(lines[: max(3, len(lines) // 2)])
    return msgs, "the reply is the first half of the note"


# Stub rows of a legacy export: the EHR's placeholder where the note should be and a one-line
# reply, with neither system prompt nor instruction (with those two, a record is already about
# 60 SmolLM2 tokens before any note, so a stub would pass min_seq_len_tokens 64). Each has at
# least five words so no two stubs look alike to near-duplicate detection.
STUBS = (
    ("See scanned chart.", "Diagnosis: see chart"),
    ("Dictation pending; will addend.", "Diagnosis: pending"),
    ("Note in paper chart (EHR downtime).", "Diagnosis: unknown"),
    ("Discharge summary to follow.", "Follow-up: per primary team"),
    ("Pt left AMA before the summary was written.", "Diagnosis: not documented"),
    ("Refer to outside hospital records.", "Diagnosis: see outside records"),
)


def stub_messages(stub: tuple[str, str]) -> list[dict]:
    note, reply = stub
    return [{"role": "user", "content": note}, {"role": "assistant", "content": reply}]
