"""The default dataset: clean training pool, held-out eval suite, and the raw file with defects.

Three independent RNG streams are derived from one seed (`{seed}/train`, `{seed}/eval`,
`{seed}/defects`), so e.g. changing the defect plan never changes a clean record. The raw file
mixes the clean pool with realistic planted defects that curation must catch; every defect is
listed (1-based line, kind, detail) in defects.json so curation can be scored against it.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import Callable

from .discharge import INSTRUCTION, SLICES, Case, generate, make_case, note_key

DEFAULT_SEED = 20261123
TRAIN_COUNTS: dict[str, int] = {"common": 550, "interaction": 120, "allergy": 200, "long": 130}
EVAL_PER_SLICE = 40
DEFECT_COUNTS: dict[str, int] = {
    "exact_duplicate": 30, "near_duplicate": 30, "malformed": 15, "over_long": 10, "eval_copy": 10,
}
OVER_LONG_NOTE_CHARS = 12_000  # over-long defects get at least this much note text (up to 1.4x)
MALFORMED_KINDS: dict[str, str] = {
    "broken_json": "JSON text cut off mid-object",
    "non_object": "a bare JSON array of messages, not an object",
    "missing_assistant": "messages end after the user turn",
    "empty_assistant": "assistant content is an empty string",
    "unknown_role": "the user turn has role 'doctor'",
    "messages_not_list": "messages is an object keyed by role, not a list",
}

RAW_FILE, DEFECTS_FILE, SUITE_FILE = "discharge_notes.jsonl", "defects.json", "test.jsonl"


@dataclass
class Dataset:
    seed: int
    train: list[Case]
    eval: list[Case]
    raw_lines: list[str]  # the raw file, one JSON text (or broken text) per line
    defects: dict

    def eval_records(self) -> list[dict]:
        return [c.record(eval_id(i)) for i, c in enumerate(self.eval)]


def eval_id(i: int) -> str:
    return f"ev-{i + 1:04d}"


def _dumps(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False)


# ---------------------------------------------------------------- near-duplicate edits

_WORD_SWAPS = (("with", "w/"), ("patient", "pt"), ("Pt", "Patient"), ("and", "&"),
               ("discontinued", "stopped"), ("history", "hx"), ("the", "a"))


def _one_of(rng: random.Random, text: str, pattern: str) -> re.Match | None:
    matches = list(re.finditer(pattern, text))
    return rng.choice(matches) if matches else None


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


def _with_note(messages: list[dict], note: str) -> list[dict]:
    out = [dict(m) for m in messages]
    out[1]["content"] = f"{INSTRUCTION}\n\n{note}"
    return out


# ---------------------------------------------------------------- malformed lines

def malformed_line(kind: str, record: dict, rng: random.Random) -> str:
    """A raw line that is not a usable chat record, built from a real one."""
    msgs = record["messages"]
    if kind == "broken_json":  # cut mid-object, as a crashed export leaves it
        text = _dumps(record)
        return text[: rng.randint(len(text) // 4, 3 * len(text) // 4)]
    if kind == "non_object":
        return _dumps(msgs)  # a bare list of messages, no id/slice wrapper
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
    return _dumps(bad)


# ---------------------------------------------------------------- assembly

@dataclass
class _Entry:
    kind: str | None                      # None for a clean record
    build: Callable[[str, "_Ids"], tuple[str, str]]  # (own id, ids) -> (line, detail)


class _Ids:
    """Line numbers and ids of the entries, known only after the shuffle."""

    def __init__(self, order: list[int]) -> None:
        self.line = {entry: pos + 1 for pos, entry in enumerate(order)}

    def id(self, entry: int) -> str:
        return f"dn-{self.line[entry]:06d}"

    def ref(self, entry: int) -> str:
        return f"{self.id(entry)} (line {self.line[entry]})"


def build(seed: int = DEFAULT_SEED) -> Dataset:
    seen: set[str] = set()
    train = generate(random.Random(f"{seed}/train"), TRAIN_COUNTS, seen)
    eval_cases = generate(random.Random(f"{seed}/eval"), {s: EVAL_PER_SLICE for s in SLICES}, seen)
    rng = random.Random(f"{seed}/defects")

    entries: list[_Entry] = []

    def clean(case: Case) -> _Entry:
        return _Entry(None, lambda rid, ids: (_dumps(case.record(rid)), ""))

    entries += [clean(c) for c in train]
    n_train = len(train)
    sources = rng.sample(range(n_train), DEFECT_COUNTS["exact_duplicate"] + DEFECT_COUNTS["near_duplicate"])
    for src in sources[: DEFECT_COUNTS["exact_duplicate"]]:
        entries.append(_Entry("exact_duplicate", lambda rid, ids, src=src: (
            _dumps(train[src].record(rid)), f"same messages as {ids.ref(src)}")))
    for src in sources[DEFECT_COUNTS["exact_duplicate"]:]:
        note, how = near_duplicate_note(rng, train[src].note)
        entries.append(_Entry("near_duplicate", lambda rid, ids, src=src, note=note, how=how: (
            _dumps({"id": rid, "slice": train[src].slice, "messages": _with_note(train[src].messages(), note)}),
            f"{how} in the note of {ids.ref(src)}")))
    for i in range(DEFECT_COUNTS["malformed"]):
        kind = list(MALFORMED_KINDS)[i % len(MALFORMED_KINDS)]
        case = _fresh(rng, "common", seen)
        entries.append(_Entry("malformed", lambda rid, ids, case=case, kind=kind: (
            malformed_line(kind, case.record(rid), rng_line(seed, rid)), f"{kind}: {MALFORMED_KINDS[kind]}")))
    for _ in range(DEFECT_COUNTS["over_long"]):
        case = _fresh(rng, "long", seen, int(OVER_LONG_NOTE_CHARS * rng.uniform(1.02, 1.4)))
        entries.append(_Entry("over_long", lambda rid, ids, case=case: (
            _dumps(case.record(rid)), f"note of {len(case.note)} characters")))
    for ev in sorted(rng.sample(range(len(eval_cases)), DEFECT_COUNTS["eval_copy"])):
        entries.append(_Entry("eval_copy", lambda rid, ids, ev=ev: (
            _dumps({"id": rid, "slice": eval_cases[ev].slice, "messages": eval_cases[ev].messages()}),
            f"verbatim messages of eval item {eval_id(ev)}")))

    order = list(range(len(entries)))
    rng.shuffle(order)
    ids = _Ids(order)
    lines, defects = [], []
    for entry in order:
        line, detail = entries[entry].build(ids.id(entry), ids)
        lines.append(line)
        if entries[entry].kind is not None:
            defects.append({"line": ids.line[entry], "kind": entries[entry].kind, "detail": detail})
    report = {
        "seed": seed,
        "total_lines": len(lines),
        "clean_records": n_train,
        "counts": dict(sorted(DEFECT_COUNTS.items())),
        "defects": defects,
    }
    return Dataset(seed, train, eval_cases, lines, report)


def rng_line(seed: int, rid: str) -> random.Random:
    """A per-line stream, so how one line is broken does not depend on build order."""
    return random.Random(f"{seed}/defects/{rid}")


def _fresh(rng: random.Random, slice_name: str, seen: set[str], target: int | None = None) -> Case:
    """A new case whose note is in neither split (so a defect never doubles as a duplicate)."""
    while True:
        case = make_case(rng, slice_name, target)
        if note_key(case.note) not in seen:
            seen.add(note_key(case.note))
            return case


def outputs(ds: Dataset) -> dict[str, str]:
    """File name -> exact file text ('\\n' line endings, trailing newline)."""
    return {
        RAW_FILE: "".join(line + "\n" for line in ds.raw_lines),
        DEFECTS_FILE: json.dumps(ds.defects, ensure_ascii=False, indent=1) + "\n",
        SUITE_FILE: "".join(_dumps(r) + "\n" for r in ds.eval_records()),
    }
