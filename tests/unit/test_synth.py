"""The synthetic discharge dataset: determinism, committed files, summary format, traps, defects."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from pipeline.evaluate.scoring import load_module
from pipeline.synth import (
    DEFAULT_SEED, FIELDS, INSTRUCTION, LONG_NOTE_TARGET_CHARS, SLICES, SYSTEM_PROMPT,
    Summary, build, outputs, render,
)
from pipeline.synth import vocab as V
from pipeline.synth.__main__ import main as synth_main
from pipeline.synth.dataset import DEFECT_COUNTS, EVAL_PER_SLICE, OVER_LONG_NOTE_CHARS, TRAIN_COUNTS
from pipeline.synth.defects import PII_TYPES, STUBS, alpha_share

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = {
    "discharge_notes.jsonl": ROOT / "data/raw/discharge_notes.jsonl",
    "defects.json": ROOT / "data/raw/defects.json",
    "test.jsonl": ROOT / "eval_suites/discharge/data/test.jsonl",
    "spellings.json": ROOT / "eval_suites/discharge/data/spellings.json",
}
# The discharge suite's parser: what the generator renders must parse back there.
_FMT = load_module(ROOT / "eval_suites/discharge/summary_format.py")


def parse(text):
    parsed = _FMT.parse(text)
    return None if parsed is None else Summary(**vars(parsed))


compare = _FMT.compare


@pytest.fixture(scope="module")
def ds():
    return build(DEFAULT_SEED)


@pytest.fixture(scope="module")
def files(ds):
    return outputs(ds)


def _note(record: dict) -> str:
    return record["messages"][1]["content"].split("\n\n", 1)[1]


def _valid(line: str) -> dict | None:
    """A usable chat record, or None (what curation must reject as malformed)."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("messages"), list):
        return None
    msgs = rec["messages"]
    if [m.get("role") if isinstance(m, dict) else None for m in msgs] != ["system", "user", "assistant"]:
        return None
    if not all(isinstance(m.get("content"), str) and m["content"] for m in msgs):
        return None
    return rec


def _mentions(note: str, name: str) -> bool:
    drug = V.DRUGS.get(name)
    spellings = (name,) + (drug.aliases if drug else ())
    return any(s.casefold() in note.casefold() for s in spellings)


def _listed(summary: Summary, name: str) -> bool:
    return any(item.startswith(name + " ") for item in summary.medications)


# ---------------------------------------------------------------- determinism and committed files

def test_generation_is_deterministic(files):
    assert outputs(build(DEFAULT_SEED)) == files


def test_other_seed_gives_other_data(files):
    assert outputs(build(DEFAULT_SEED + 1))["test.jsonl"] != files["test.jsonl"]


def test_independent_of_hash_seed(files):
    """Set iteration order must never leak into the data (it varies with PYTHONHASHSEED)."""
    code = ("import hashlib; from pipeline.synth import build, outputs; "
            "print(hashlib.sha256(''.join(outputs(build()).values()).encode()).hexdigest())")
    want = hashlib.sha256("".join(files.values()).encode()).hexdigest()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                             text=True, check=True)
        assert out.stdout.strip() == want


@pytest.mark.parametrize("name", sorted(COMMITTED))
def test_committed_files_equal_fresh_generation(files, name):
    path = COMMITTED[name]
    if path.parent == ROOT / "data/raw" and not (ROOT / "data/raw/defects.json").is_file():
        pytest.skip("data/raw holds a team's own records, not the default dataset")
    assert path.is_file(), f"{path} missing: run python -m pipeline.synth"
    assert path.read_bytes() == files[name].encode("utf-8"), (
        f"{path} differs from a fresh generation; never edit it by hand, run python -m pipeline.synth")


def test_cli_writes_and_checks(tmp_path, files):
    args = ["--raw-dir", str(tmp_path / "raw"), "--suite-dir", str(tmp_path / "suite")]
    assert synth_main(args) == 0
    assert (tmp_path / "suite/test.jsonl").read_text(encoding="utf-8") == files["test.jsonl"]
    assert synth_main(args + ["--check"]) == 0
    (tmp_path / "raw/defects.json").write_text("{}", encoding="utf-8")
    assert synth_main(args + ["--check"]) == 1


# ---------------------------------------------------------------- summary format

GOLD = Summary("Community-acquired pneumonia",
               ("amoxicillin 500 mg three times daily", "lisinopril 10 mg daily"),
               ("penicillin (rash)",), ("warfarin + ciprofloxacin: increased bleeding risk",),
               "primary care in 1 week")


def test_render_exact_format():
    assert render(GOLD) == (
        "Diagnosis: Community-acquired pneumonia\n"
        "Medications: amoxicillin 500 mg three times daily; lisinopril 10 mg daily\n"
        "Allergies: penicillin (rash)\n"
        "Warnings: warfarin + ciprofloxacin: increased bleeding risk\n"
        "Follow-up: primary care in 1 week")
    empty = Summary("Gout flare", (), (), (), "rheumatology in 2 weeks")
    assert render(empty).splitlines()[1:4] == ["Medications: none", "Allergies: NKDA", "Warnings: none"]
    assert parse(render(empty)) == empty


def test_round_trip_every_gold(ds):
    for case in ds.train + ds.eval:
        assert parse(render(case.summary)) == case.summary
        assert case.messages()[2]["content"] == render(case.summary)


def test_parse_tolerates_whitespace_and_label_case():
    text = "\r\n  " + render(GOLD).replace("\n", "  \r\n\r\n").replace("Diagnosis", "DIAGNOSIS") + "\n\n"
    assert parse(text) == GOLD
    assert parse(render(GOLD).replace("penicillin (rash)", "none")).allergies == ()
    assert parse(render(GOLD).replace("penicillin (rash)", "No known drug allergies")).allergies == ()


@pytest.mark.parametrize("mutate", [
    lambda t: "",
    lambda t: "not a summary at all",
    lambda t: "\n".join(t.splitlines()[:4]),                                  # missing field
    lambda t: t + "\nWarnings: none",                                         # duplicated field
    lambda t: t.replace("Warnings:", "Notes:"),                               # unknown label
    lambda t: "\n".join([t.splitlines()[1], t.splitlines()[0]] + t.splitlines()[2:]),  # reordered
    lambda t: t.replace("Diagnosis: Community-acquired pneumonia", "Diagnosis:"),  # empty value
    lambda t: t.replace("Follow-up: ", "Follow-up "),                         # no colon
    lambda t: t.replace("Medications: amoxicillin 500 mg three times daily; lisinopril 10 mg daily",
                        "Medications: ; ;"),                                  # only empty items
    lambda t: t + "\nThe patient is doing well.",                             # trailing chatter
])
def test_parse_rejects_malformed(mutate):
    assert parse(mutate(render(GOLD))) is None


def test_parse_rejects_non_text():
    assert parse(None) is None  # type: ignore[arg-type]


def test_compare_semantics():
    assert compare(GOLD, GOLD) == dict.fromkeys(FIELDS, True)
    assert compare(None, GOLD) == dict.fromkeys(FIELDS, False)
    shuffled = Summary("  community-acquired   PNEUMONIA. ",
                       ("Lisinopril 10 mg daily.", "amoxicillin  500 mg three times daily"),
                       ("PENICILLIN (rash)",), ("warfarin + ciprofloxacin: increased bleeding risk;",),
                       "Primary care in 1 week!")
    assert compare(shuffled, GOLD) == dict.fromkeys(FIELDS, True)
    fewer = Summary(GOLD.diagnosis, GOLD.medications[:1], (), GOLD.warnings, "primary care in 2 weeks")
    assert compare(fewer, GOLD) == {"diagnosis": True, "medications": False, "allergies": False,
                                    "warnings": True, "follow_up": False}
    extra = Summary(GOLD.diagnosis, GOLD.medications + ("metformin 500 mg twice daily",), GOLD.allergies,
                    (), GOLD.follow_up)
    assert compare(extra, GOLD)["medications"] is False and compare(extra, GOLD)["warnings"] is False


# ---------------------------------------------------------------- records, slices, splits

def test_record_shape(ds):
    for i, case in enumerate(ds.train + ds.eval):
        rec = case.record(f"x-{i}")
        assert list(rec) == ["id", "slice", "messages"] and rec["slice"] in SLICES
        assert _valid(json.dumps(rec)) is not None
        assert rec["messages"][0]["content"] == SYSTEM_PROMPT
        assert rec["messages"][1]["content"].startswith(INSTRUCTION + "\n\n")


def test_slices_in_both_splits(ds):
    assert Counter(c.slice for c in ds.train) == Counter(TRAIN_COUNTS)
    assert Counter(c.slice for c in ds.eval) == Counter(dict.fromkeys(SLICES, EVAL_PER_SLICE))


def test_eval_notes_absent_from_training(ds):
    train_notes = {c.note for c in ds.train}
    assert not any(c.note in train_notes for c in ds.eval)


def test_note_lengths(ds):
    for case in ds.train + ds.eval:
        n = len(case.note)
        if case.slice == "long":
            assert 0.85 * LONG_NOTE_TARGET_CHARS <= n <= 1.2 * LONG_NOTE_TARGET_CHARS
            # the hospital course and discharge medications sit behind the filler
            filler_at = case.note.index("HD#1 progress note")
            for label in (r"(brief )?(hospital )?course", r"discharge med(ication)?s|meds on discharge"):
                assert filler_at < re.search(rf"(?im)^({label}):", case.note).start()
        else:
            assert 350 <= n <= 1600


# ---------------------------------------------------------------- traps

def test_stopped_meds_named_but_not_listed(ds):
    seen = 0
    for case in ds.train + ds.eval:
        for name in case.truth.stopped:
            seen += 1
            assert _mentions(case.note, name), (name, case.note)
            assert not _listed(case.summary, name)
    assert seen > 100


def test_one_time_and_inpatient_meds_not_listed(ds):
    for case in ds.train + ds.eval:
        for key in case.truth.ed_meds:
            assert V.ONE_TIME_MEDS[key] in case.note
            assert not _listed(case.summary, key)
        for key in case.truth.inpatient_meds:
            assert V.INPATIENT_MEDS[key] in case.note
            assert not _listed(case.summary, key)
        for name, _ in case.truth.past_meds:
            assert name in case.note and not _listed(case.summary, name)


def test_new_meds_listed(ds):
    for case in ds.train + ds.eval:
        for med in case.truth.new:
            assert med.canonical in case.summary.medications


def test_dose_changes_use_the_new_dose(ds):
    changed = [(c, m) for c in ds.train for m in c.truth.home if m.old_dose and m.name not in c.truth.stopped]
    assert len(changed) > 50
    for case, med in changed:
        assert med.canonical in case.summary.medications
        assert f"{med.name} {med.old_dose} " not in " ".join(case.summary.medications)


NEGATION_CUES = ("denies", "ruled out", "negative", "no true allergy", "removed")


def test_negated_allergies(ds):
    nkda = 0
    for case in ds.train + ds.eval:
        t = case.truth
        for allergen in t.negated_allergens:
            assert not any(item.startswith(allergen + " (") for item in case.summary.allergies)
            sentences = re.split(r"(?<=\.)\s", case.note)
            assert any(any(s.casefold() in sent.casefold() for s in V.ALLERGENS[allergen])
                       and any(cue in sent.casefold() for cue in NEGATION_CUES) for sent in sentences)
        if case.slice == "allergy" and t.negated_allergens and not t.all_allergies:
            nkda += 1
            assert case.summary.allergies == ()
            assert "Allergies: NKDA" in render(case.summary)
    assert nkda > 50


def test_real_and_new_allergies_listed(ds):
    for case in ds.train + ds.eval:
        t = case.truth
        assert case.summary.allergies == tuple(f"{a} ({r})" for a, r in t.all_allergies)
        if t.new_allergy:
            assert "allergy added to chart" in case.note
        for allergen in t.family_allergens:  # family history never becomes the patient's allergy
            assert not any(item.startswith(allergen + " (") for item in case.summary.allergies)


def test_interaction_warnings(ds):
    for case in ds.train + ds.eval:
        if case.truth.kind == "interaction":
            assert case.summary.warnings
        if case.slice in ("common", "allergy"):
            assert case.summary.warnings == ()
        for warning in case.summary.warnings:
            pair, risk = warning.split(": ", 1)
            a, b = pair.split(" + ")
            assert _listed(case.summary, a) and _listed(case.summary, b) and risk


def test_inactive_pairs_give_no_warning(ds):
    seen = 0
    for case in ds.train + ds.eval:
        for pair in case.truth.inactive_pairs:
            seen += 1
            assert _mentions(case.note, pair.a) and _mentions(case.note, pair.b)
            assert pair.warning not in case.summary.warnings
            assert not (_listed(case.summary, pair.a) and _listed(case.summary, pair.b))
    assert seen > 50


# ---------------------------------------------------------------- raw file and defects

def test_defects_match_raw_file(files, ds):
    lines = files["discharge_notes.jsonl"].split("\n")[:-1]
    report = json.loads(files["defects.json"])
    assert report["seed"] == DEFAULT_SEED and report["total_lines"] == len(lines)
    assert report["counts"] == Counter(d["kind"] for d in report["defects"]) == DEFECT_COUNTS
    by_line = {d["line"]: d["kind"] for d in report["defects"]}
    assert len(by_line) == len(report["defects"])
    clean_msgs = {json.dumps(c.messages()) for c in ds.train}
    eval_msgs = {json.dumps(c.messages()) for c in ds.eval}
    clean_notes = {c.note for c in ds.train}
    clean_lines = 0
    for n, line in enumerate(lines, 1):
        kind, rec = by_line.get(n), _valid(line)
        if kind == "malformed":
            assert rec is None
            continue
        if kind == "too_short":  # a legacy stub row: user and assistant turns only
            rec = json.loads(line)
            assert [m["role"] for m in rec["messages"]] == ["user", "assistant"]
            assert tuple(m["content"] for m in rec["messages"]) in STUBS
        assert rec is not None and rec["id"] == f"dn-{n:06d}"
        msgs = json.dumps(rec["messages"])
        if kind is None:
            clean_lines += 1
            assert msgs in clean_msgs
        elif kind == "exact_duplicate":
            assert msgs in clean_msgs
        elif kind == "near_duplicate":
            assert msgs not in clean_msgs and _note(rec) not in clean_notes
            assert " ".join(_note(rec).split()) != "" and parse(rec["messages"][2]["content"]) is not None
        elif kind == "over_long":
            assert len(_note(rec)) >= OVER_LONG_NOTE_CHARS and parse(rec["messages"][2]["content"])
        elif kind == "eval_copy":
            assert msgs in eval_msgs
        elif kind in ("pii", "repetitive", "symbol_soup", "copied_prompt"):
            assert _note(rec) not in clean_notes and msgs not in clean_msgs
        if kind != "eval_copy":
            assert msgs not in eval_msgs
    assert clean_lines == report["clean_records"] == sum(TRAIN_COUNTS.values())
    # every clean record appears exactly once among the unmarked lines
    unmarked = [json.dumps(json.loads(lines[n - 1])["messages"]) for n in range(1, len(lines) + 1)
                if n not in by_line]
    assert len(set(unmarked)) == len(unmarked) == len(clean_msgs)


def _defects_of(files, kind: str) -> list[tuple[dict, dict]]:
    lines = files["discharge_notes.jsonl"].split("\n")
    return [(d, json.loads(lines[d["line"] - 1])) for d in json.loads(files["defects.json"])["defects"]
            if d["kind"] == kind]


def test_pii_defects_plant_exactly_what_defects_json_lists(files):
    """Each planted identifier is in its note and matched by its type's default pattern; the
    default patterns find nothing else on any line, so curate's per-type counts on the raw file
    must equal the planted ones."""
    from pipeline.curate.pii import DEFAULT_PATTERNS, Scrubber

    scrub = Scrubber.from_patterns(DEFAULT_PATTERNS)
    planted = {d["line"]: d for d in json.loads(files["defects.json"])["defects"] if d["kind"] == "pii"}
    total: Counter[str] = Counter()
    for n, line in enumerate(files["discharge_notes.jsonl"].split("\n")[:-1], 1):
        try:
            messages = json.loads(line)["messages"]
            contents = [m["content"] for m in messages] if isinstance(messages, list) else list(messages.values())
        except (ValueError, TypeError, KeyError):
            continue  # broken JSON or a bare list: never reaches scrubbing
        found: Counter[str] = Counter()
        scrubbed = [scrub.scrub(c, found) for c in contents]
        if n not in planted:
            assert not found, (n, found)
            continue
        d = planted[n]
        assert d["pii"] == dict(found) == Counter(p["type"] for p in d["planted"]), n
        note = _note(json.loads(line))
        for p in d["planted"]:
            assert p["type"] in PII_TYPES and note.count(p["text"]) == 1, (n, p)
            assert p["text"] not in " ".join(scrubbed), (n, p)  # scrubbing removes every one
        total.update(found)
    assert len(planted) == DEFECT_COUNTS["pii"]
    assert set(total) == set(PII_TYPES) and min(total.values()) >= 5, total  # every type, several times


def test_quality_defects_have_what_their_check_looks_for(files):
    for d, rec in _defects_of(files, "repetitive"):
        # one note paragraph or one reply line occurs 6+ times, in enough words for the check to apply
        turn = rec["messages"][2 if "reply" in d["detail"] else 1]["content"]
        unit = Counter(re.split(r"\n+", turn)).most_common(1)[0]
        assert unit[1] >= 6 and unit[1] * len(unit[0].split()) >= 20, d
    for d, rec in _defects_of(files, "symbol_soup"):
        assert alpha_share(rec["messages"][1]["content"]) < 0.45, d  # curate rejects under 0.5
        assert parse(rec["messages"][2]["content"]) is not None  # the reply itself is fine
    for d, rec in _defects_of(files, "copied_prompt"):
        reply, user = rec["messages"][2]["content"], rec["messages"][1]["content"]
        assert reply in user and len(reply.split()) >= 20, d
    for d, rec in _defects_of(files, "too_short"):
        assert sum(len(m["content"].split()) for m in rec["messages"]) >= 5  # enough words to tell stubs apart
        assert sum(len(m["content"]) for m in rec["messages"]) < 80, d


def test_suite_file(files, ds):
    records = [json.loads(line) for line in files["test.jsonl"].splitlines()]
    assert [r["id"] for r in records] == [f"ev-{i:04d}" for i in range(1, len(records) + 1)]
    assert Counter(r["slice"] for r in records) == Counter(dict.fromkeys(SLICES, EVAL_PER_SLICE))
    assert all(parse(r["messages"][2]["content"]) is not None for r in records)
