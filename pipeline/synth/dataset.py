"""The default dataset: clean training pool, held-out eval suite, and the raw file with defects.

Three independent RNG streams are derived from one seed (`{seed}/train`, `{seed}/eval`,
`{seed}/defects`), so e.g. changing the defect plan never changes a clean record. The raw file
mixes the clean pool with realistic planted defects that curation must catch; every defect is
listed (1-based line, kind, detail) in defects.json so curation can be scored against it. The
defect builders live in pipeline/synth/defects.py.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Callable

from .defects import (
    MALFORMED_KINDS, STUBS, copied_prompt_messages, dumps, malformed_line, near_duplicate_note, pii_counts,
    pii_note, repetitive_messages, stub_messages, symbol_soup_note, with_note,
)
from .discharge import SLICES, Case, generate, make_case, note_key

DEFAULT_SEED = 20261123
TRAIN_COUNTS: dict[str, int] = {"common": 550, "interaction": 120, "allergy": 200, "long": 130}
EVAL_PER_SLICE = 40
# Planted in this order from the `{seed}/defects` stream; a new kind goes at the end, so the
# defects planted before it keep their content (only the shuffle moves them).
DEFECT_COUNTS: dict[str, int] = {
    "exact_duplicate": 30, "near_duplicate": 30, "malformed": 15, "over_long": 10, "eval_copy": 10,
    "pii": 20, "repetitive": 5, "symbol_soup": 5, "copied_prompt": 5, "too_short": 5,
}
OVER_LONG_NOTE_CHARS = 12_000  # over-long defects get at least this much note text (up to 1.4x)
LOOPING_REPLIES = 2  # of the repetitive defects, this many loop in the reply; the rest in the note

RAW_FILE, DEFECTS_FILE, SUITE_FILE = "discharge_notes.jsonl", "defects.json", "test.jsonl"
# Every note spelling of each drug/allergen, for the suite's hallucinated-entity scorer (the
# suite reads this file instead of importing the generator).
SPELLINGS_FILE = "spellings.json"


def spellings() -> dict[str, list[str]]:
    """Canonical drug/allergen name -> every spelling a note may use for it, case-folded (the
    summary task normalises "HCTZ" to "hydrochlorothiazide", so a canonical name absent from
    the note is not invented when one of its spellings is there)."""
    from .vocab import ALLERGENS, DRUGS

    table = {name: (name, *drug.aliases) for name, drug in DRUGS.items()}
    for name, names in ALLERGENS.items():
        table[name] = tuple(dict.fromkeys((name, *table.get(name, ()), *names)))
    return {k: [v.casefold() for v in vs] for k, vs in sorted(table.items())}


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


# ---------------------------------------------------------------- assembly

@dataclass
class _Entry:
    kind: str | None                      # None for a clean record
    build: Callable[[str, "_Ids"], tuple[str, str]]  # (own id, ids) -> (line, detail)
    extra: dict = field(default_factory=dict)  # more keys for the defect's defects.json entry


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
        return _Entry(None, lambda rid, ids: (dumps(case.record(rid)), ""))

    entries += [clean(c) for c in train]
    n_train = len(train)
    sources = rng.sample(range(n_train), DEFECT_COUNTS["exact_duplicate"] + DEFECT_COUNTS["near_duplicate"])
    for src in sources[: DEFECT_COUNTS["exact_duplicate"]]:
        entries.append(_Entry("exact_duplicate", lambda rid, ids, src=src: (
            dumps(train[src].record(rid)), f"same messages as {ids.ref(src)}")))
    for src in sources[DEFECT_COUNTS["exact_duplicate"]:]:
        note, how = near_duplicate_note(rng, train[src].note)
        entries.append(_Entry("near_duplicate", lambda rid, ids, src=src, note=note, how=how: (
            dumps({"id": rid, "slice": train[src].slice, "messages": with_note(train[src].messages(), note)}),
            f"{how} in the note of {ids.ref(src)}")))
    for i in range(DEFECT_COUNTS["malformed"]):
        kind = list(MALFORMED_KINDS)[i % len(MALFORMED_KINDS)]
        case = _fresh(rng, "common", seen)
        entries.append(_Entry("malformed", lambda rid, ids, case=case, kind=kind: (
            malformed_line(kind, case.record(rid), rng_line(seed, rid)), f"{kind}: {MALFORMED_KINDS[kind]}")))
    for _ in range(DEFECT_COUNTS["over_long"]):
        case = _fresh(rng, "long", seen, int(OVER_LONG_NOTE_CHARS * rng.uniform(1.02, 1.4)))
        entries.append(_Entry("over_long", lambda rid, ids, case=case: (
            dumps(case.record(rid)), f"note of {len(case.note)} characters")))
    for ev in sorted(rng.sample(range(len(eval_cases)), DEFECT_COUNTS["eval_copy"])):
        entries.append(_Entry("eval_copy", lambda rid, ids, ev=ev: (
            dumps({"id": rid, "slice": eval_cases[ev].slice, "messages": eval_cases[ev].messages()}),
            f"verbatim messages of eval item {eval_id(ev)}")))
    entries += _quality_defects(rng, seen)

    order = list(range(len(entries)))
    rng.shuffle(order)
    ids = _Ids(order)
    lines, defects = [], []
    for entry in order:
        line, detail = entries[entry].build(ids.id(entry), ids)
        lines.append(line)
        if entries[entry].kind is not None:
            defects.append({"line": ids.line[entry], "kind": entries[entry].kind, "detail": detail,
                            **entries[entry].extra})
    report = {
        "seed": seed,
        "total_lines": len(lines),
        "clean_records": n_train,
        "counts": dict(sorted(DEFECT_COUNTS.items())),
        "defects": defects,
    }
    return Dataset(seed, train, eval_cases, lines, report)


def _record_entry(kind: str, slice_name: str, messages: list[dict], detail: str, **extra) -> _Entry:
    return _Entry(kind, lambda rid, ids: (dumps({"id": rid, "slice": slice_name, "messages": messages}), detail),
                  extra)


def _quality_defects(rng: random.Random, seen: set[str]) -> list[_Entry]:
    """Records a schema accepts but curate must scrub (pii) or reject: repetitive, symbol
    soup, copied prompt, too short. Fresh cases, so none doubles as a duplicate."""
    out = []
    for i in range(DEFECT_COUNTS["pii"]):
        case = _fresh(rng, "common", seen)
        note, planted = pii_note(rng, case, i)
        counts = pii_counts(planted)
        out.append(_record_entry("pii", case.slice, with_note(case.messages(), note),
                                 "identifiers in the note: " + ", ".join(f"{k} {n}" for k, n in counts.items()),
                                 pii=counts, planted=[{"type": k, "text": t} for k, t in planted]))
    for i in range(DEFECT_COUNTS["repetitive"]):
        case = _fresh(rng, "common", seen)
        messages, detail = repetitive_messages(rng, case, looping_reply=i < LOOPING_REPLIES)
        out.append(_record_entry("repetitive", case.slice, messages, detail))
    for _ in range(DEFECT_COUNTS["symbol_soup"]):
        case = _fresh(rng, "common", seen)
        note, share = symbol_soup_note(rng, case.note)
        out.append(_record_entry("symbol_soup", case.slice, with_note(case.messages(), note),
                                 f"OCR failure: letters are {share:.0%} of the user turn's visible characters"))
    for _ in range(DEFECT_COUNTS["copied_prompt"]):
        case = _fresh(rng, "common", seen)
        messages, detail = copied_prompt_messages(rng, case)
        out.append(_record_entry("copied_prompt", case.slice, messages, detail))
    for stub in rng.sample(STUBS, DEFECT_COUNTS["too_short"]):
        out.append(_record_entry("too_short", "common", stub_messages(stub),
                                 f"stub row: note {stub[0]!r}, reply {stub[1]!r}, no system prompt or instruction"))
    return out


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
        SUITE_FILE: "".join(dumps(r) + "\n" for r in ds.eval_records()),
        SPELLINGS_FILE: json.dumps(spellings(), ensure_ascii=False, indent=1, sort_keys=True) + "\n",
    }
