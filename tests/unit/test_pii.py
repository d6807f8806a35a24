"""PII scrubbing: planted identifiers never survive, clean clinical text is left alone."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.curate.pii import DEFAULT_PATTERNS, Scrubber
from tests.conftest import REPO

SCRUB = Scrubber.from_patterns(DEFAULT_PATTERNS)
UNGATED = Scrubber.from_patterns(DEFAULT_PATTERNS, use_gates=False)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

digits = lambda n: st.text("0123456789", min_size=n, max_size=n)  # noqa: E731

# ---------------------------------------------------------------- clean clinical-like text

WORDS = ["patient", "admitted", "with", "chest", "pain", "discharged", "home", "on", "metoprolol", "lisinopril",
         "follow-up", "with", "cardiology", "no", "known", "allergies", "stable", "afebrile", "Pt", "denies", "SOB",
         "Dx:", "CAP", "NKDA", "plan:", "continue", "PO", "daily", "BID", "q6h", "PRN", "IV", "x1", "in", "the", "ED"]
CLINICAL = st.one_of(
    st.sampled_from(WORDS),
    st.builds("{} mg".format, st.sampled_from(["0.5", "5", "25", "250", "1000", "12.5"])),
    st.builds("BP {}/{}".format, st.integers(80, 200), st.integers(40, 120)),
    st.builds("HR {}".format, st.integers(40, 160)),
    st.builds("T {}.{} °C".format, st.integers(35, 40), st.integers(0, 9)),
    st.builds("SpO2 {}%".format, st.integers(85, 100)),
    st.builds("{} yo".format, st.integers(18, 99)),
    st.builds("{}-year-old".format, st.integers(18, 99)),
    st.builds("x{} days".format, st.integers(1, 14)),
    st.builds("Na {} K {}.{} Cr {}.{}".format, st.integers(125, 150), st.integers(3, 6), st.integers(0, 9),
              st.integers(0, 4), st.integers(0, 9)),
    st.builds("f/u PCP {} wk".format, st.integers(1, 6)),
    st.builds("pneumonia in {}".format, st.integers(1990, 2030)),
    st.builds("WBC {}.{}, Hgb {}.{}, Plt {}".format, st.integers(2, 20), st.integers(0, 9), st.integers(7, 17),
              st.integers(0, 9), st.integers(50, 600)),
)
SEPARATORS = st.sampled_from([" ", ", ", ". ", "\n", "; ", " - "])


@st.composite
def clinical_text(draw, min_size=1, max_size=25):
    parts = draw(st.lists(CLINICAL, min_size=min_size, max_size=max_size))
    seps = draw(st.lists(SEPARATORS, min_size=len(parts), max_size=len(parts)))
    return "".join(p + s for p, s in zip(parts, seps)).strip()


# ---------------------------------------------------------------- planted identifiers

LOCAL = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=1, max_size=12)
LABEL = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10)
EMAILS = st.builds(lambda a, sep, b, dom, sub, tld: f"{a}{sep}{b}@{dom}{sub}.{tld}",
                   LOCAL, st.sampled_from(["", ".", "_", "+", "-", "%"]), LOCAL, LABEL,
                   st.sampled_from(["", ".mail", ".med-center"]), st.sampled_from(["com", "org", "co.uk", "health", "de"]))


@st.composite
def phones(draw):
    a, b, c = draw(digits(3)), draw(digits(3)), draw(digits(4))
    fmt = draw(st.sampled_from(["({a}) {b}-{c}", "({a}){b}-{c}", "{a}-{b}-{c}", "{a}.{b}.{c}", "{a} {b} {c}",
                                "+1 {a} {b} {c}", "+1-{a}-{b}-{c}", "1-{a}-{b}-{c}", "+1 ({a}) {b}-{c}"]))
    intl = draw(st.sampled_from([f"+44 20 {draw(digits(4))} {draw(digits(4))}", f"+44 7700 {draw(digits(6))}",
                                 f"+33 1 {draw(digits(2))} {draw(digits(2))} {draw(digits(2))} {draw(digits(2))}",
                                 f"+49 30 {draw(digits(7))}", f"+61 2 {draw(digits(4))} {draw(digits(4))}"]))
    return draw(st.sampled_from([fmt.format(a=a, b=b, c=c), intl]))


@st.composite
def mrns(draw):
    label = draw(st.sampled_from(["MRN", "MRN:", "MRN #", "mrn", "Medical record number:", "Med rec #", "Medical Record #:",
                                  "Chart no.", "Chart #", "Patient ID:", "patient id", "Acct #", "Account number:"]))
    number = draw(st.sampled_from(["", "A", "MR", "MR-"])) + draw(st.text("0123456789", min_size=5, max_size=12))
    return f"{label} {number}", number


MONTHS = ["January", "Feb", "March", "Apr", "May", "June", "Jul", "August", "Sept", "Oct", "November", "Dec"]


@st.composite
def dobs(draw):
    y, m, d = draw(st.integers(1920, 2020)), draw(st.integers(1, 12)), draw(st.integers(1, 28))
    date = draw(st.sampled_from([f"{m:02d}/{d:02d}/{y}", f"{m}/{d}/{y % 100:02d}", f"{y}-{m:02d}-{d:02d}",
                                 f"{d:02d}.{m:02d}.{y}", f"{d}-{m}-{y}", f"{MONTHS[m - 1]} {d}, {y}",
                                 f"{d} {MONTHS[m - 1]} {y}", f"{MONTHS[m - 1][:3]}. {d} {y}"]))
    label = draw(st.sampled_from(["DOB", "DOB:", "D.O.B.", "dob", "Date of birth:", "date of birth", "Birth date:",
                                  "Birthdate", "born", "born on", "Born on"]))
    return f"{label} {date}", date


@st.composite
def ssns(draw):
    area = draw(st.integers(1, 899).filter(lambda a: a != 666))
    group, serial = draw(st.integers(1, 99)), draw(st.integers(1, 9999))
    sep = draw(st.sampled_from(["-", " "]))
    return f"{area:03d}{sep}{group:02d}{sep}{serial:04d}"


@st.composite
def ni_numbers(draw):
    first = draw(st.sampled_from("ABCEGHJKLMNOPRSTWXYZ"))
    second = draw(st.sampled_from("ABCEGHJKLMNPRSTWXYZ"))
    if first + second in {"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"}:
        second = "A"
    groups = [draw(digits(2)) for _ in range(3)]
    sep = draw(st.sampled_from(["", " "]))
    return f"{first}{second}{sep}{sep.join(groups)}{sep}{draw(st.sampled_from('ABCD'))}"


def _embed(draw, pii: str) -> str:
    left, right = draw(clinical_text(max_size=8)), draw(clinical_text(max_size=8))
    open_, close = draw(st.sampled_from([(" ", " "), (" (", ") "), ("\n", ".\n"), (": ", ", "), (" ", ".")]))
    return f"{left}{open_}{pii}{close}{right}"


@given(st.data())
@SETTINGS
def test_planted_emails_phones_and_national_ids_never_survive(data):
    kind, strategy = data.draw(st.sampled_from([("email", EMAILS), ("phone", phones()), ("national_id", ssns()),
                                                ("national_id", ni_numbers())]))
    pii = data.draw(strategy)
    text = _embed(data.draw, pii)
    counts: Counter[str] = Counter()
    out = SCRUB.scrub(text, counts)
    assert pii not in out, (text, out)
    assert f"[{kind.upper()}]" in out and counts[kind] >= 1, (text, out, counts)
    assert out == UNGATED.scrub(text)


@given(st.data())
@SETTINGS
def test_labelled_mrns_and_dates_of_birth_never_survive_and_keep_their_label(data):
    kind, (phrase, secret) = data.draw(st.one_of(st.tuples(st.just("mrn"), mrns()), st.tuples(st.just("dob"), dobs())))
    text = _embed(data.draw, phrase)
    counts: Counter[str] = Counter()
    out = SCRUB.scrub(text, counts)
    assert secret not in out, (text, out)
    assert f"[{kind.upper()}]" in out and counts[kind] == 1, (text, out, counts)
    assert phrase.split()[0] in out  # the label stays: the model may still learn to write "MRN: [MRN]"
    assert out == UNGATED.scrub(text)


@given(clinical_text(max_size=40))
@SETTINGS
def test_clean_clinical_text_is_unchanged(text):
    counts: Counter[str] = Counter()
    assert SCRUB.scrub(text, counts) == text
    assert not counts


@given(st.text(max_size=300))
@SETTINGS
def test_the_speed_gates_never_change_the_result(text):
    # the gates are necessary conditions of the default patterns: on any text, same output
    assert SCRUB.scrub(text) == UNGATED.scrub(text)


def test_gates_survive_unicode_case_folding():
    # characters re.IGNORECASE matches to ASCII letters but str.lower() does not produce
    for text in ("PATİENT ID 1234567", "patıent id 1234567", "DOB 01/02/1960", "bırth date 01/02/1960"):
        assert SCRUB.scrub(text) == UNGATED.scrub(text) != text


def test_default_patterns_find_nothing_in_the_clean_default_data():
    defects = {d["line"] for d in json.loads((REPO / "data/raw/defects.json").read_text())["defects"]}
    counts: Counter[str] = Counter()
    with open(REPO / "data/raw/discharge_notes.jsonl", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if lineno not in defects:
                for m in json.loads(line)["messages"]:
                    assert SCRUB.scrub(m["content"], counts) == m["content"], (lineno, counts)
    assert not counts


def test_patterns_are_configurable_and_checked():
    custom = Scrubber.from_patterns({**DEFAULT_PATTERNS, "insurance_id": r"\bINS-\d{6}\b"})
    assert custom.scrub("policy INS-123456, call 555-123-4567") == "policy [INSURANCE_ID], call [PHONE]"
    only_email = Scrubber.from_patterns({"email": DEFAULT_PATTERNS["email"]})
    assert only_email.scrub("a@b.org 555-123-4567") == "[EMAIL] 555-123-4567"
    with pytest.raises(ValueError, match="lowercase"):
        Scrubber.from_patterns({"Bad Kind": r"x"})
    with pytest.raises(ValueError, match="does not compile"):
        Scrubber.from_patterns({"broken": r"(unclosed"})
    with pytest.raises(ValueError, match="empty string"):
        Scrubber.from_patterns({"everything": r"\d*"})
