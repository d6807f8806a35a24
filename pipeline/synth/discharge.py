"""Synthetic discharge notes: structured ground truth first, prose second.

Each case is sampled as a `Truth` (what happened to the patient), the gold `Summary` is derived
from that truth alone, and only then is the note written from it (`notes.write_note`). Gold is
never recovered by parsing the note, so template bugs cannot silently agree with themselves.

The truth deliberately contains traps the summary must see through: home drugs stopped during
the stay, one-time ED doses, inpatient-only therapy, dose changes, negated and newly found
allergies, interaction pairs where one drug was stopped (no warning), ruled-out working
diagnoses and remote history. Slices control how often each trap appears.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from . import vocab as V
from .summary import Summary, render

SYSTEM_PROMPT = "You write structured hospital discharge summaries."
INSTRUCTION = (
    "Summarize this discharge note as five lines: Diagnosis, Medications (discharge list only), "
    "Allergies, Warnings (drug interactions on the discharge list) and Follow-up."
)
SLICES: tuple[str, ...] = ("common", "interaction", "allergy", "long")


@dataclass
class Med:
    drug: V.Drug
    dose: str
    old_dose: str | None = None  # set when the dose changed during the stay

    @property
    def name(self) -> str:
        return self.drug.name

    @property
    def canonical(self) -> str:
        return f"{self.drug.name} {self.dose} {V.FREQUENCIES[self.drug.freq][0]}"


@dataclass
class Truth:
    """What happened during the admission; everything the note says comes from here."""

    slice: str
    kind: str                      # common | interaction | allergy: which trap mix was used
    age: int
    sex: str                       # "M" | "F"
    diagnosis: V.Diagnosis
    conditions: list[str]
    home: list[Med]                # all home meds in note order, stopped ones included
    new: list[Med]                 # started this admission and continued
    stopped: dict[str, str]        # home drug name -> reason it was stopped
    pair_completed: list[str] = field(default_factory=list)  # started inpatient, stopped before discharge
    allergies: list[tuple[str, str]] = field(default_factory=list)  # (allergen, reaction), on admission
    new_allergy: tuple[str, str] | None = None   # found during the stay
    negated_allergens: list[str] = field(default_factory=list)
    family_allergens: list[str] = field(default_factory=list)
    ed_meds: list[str] = field(default_factory=list)
    inpatient_meds: list[str] = field(default_factory=list)
    past_meds: list[tuple[str, str]] = field(default_factory=list)
    prior_dx: list[str] = field(default_factory=list)
    ruled_out: str | None = None
    follow_up: tuple[str, str] = ("primary care", "1 week")
    inactive_pairs: list[V.Interaction] = field(default_factory=list)

    @property
    def discharge_meds(self) -> list[Med]:
        """Gold order: continued home meds in home-list order, then new meds."""
        return [m for m in self.home if m.name not in self.stopped] + self.new

    @property
    def all_allergies(self) -> list[tuple[str, str]]:
        return self.allergies + ([self.new_allergy] if self.new_allergy else [])

    @property
    def active_pairs(self) -> list[V.Interaction]:
        names = {m.name for m in self.discharge_meds}
        return [p for p in V.INTERACTIONS if p.a in names and p.b in names]

    def summary(self) -> Summary:
        return Summary(
            diagnosis=self.diagnosis.name,
            medications=tuple(m.canonical for m in self.discharge_meds),
            allergies=tuple(f"{a} ({r})" for a, r in self.all_allergies),
            warnings=tuple(p.warning for p in self.active_pairs),
            follow_up=f"{self.follow_up[0]} in {self.follow_up[1]}",
        )


@dataclass(frozen=True)
class Case:
    truth: Truth
    summary: Summary
    note: str

    @property
    def slice(self) -> str:
        return self.truth.slice

    def messages(self) -> list[dict[str, str]]:
        return [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"{INSTRUCTION}\n\n{self.note}"},
            {"role": "assistant", "content": render(self.summary)},
        ]

    def record(self, record_id: str) -> dict:
        return {"id": record_id, "slice": self.slice, "messages": self.messages()}


# ---------------------------------------------------------------- sampling the truth

def _blocked(drug: V.Drug, allergens: list[str]) -> bool:
    return drug.name in allergens or any(a in allergens for a in drug.avoid_with)


def _fits(name: str, present: list[str]) -> bool:
    """A drug may join the list unless it (or a drug of its exclusive group) is already on it."""
    if name in present:
        return False
    return not any(name in g and any(o in present for o in g) for g in V.EXCLUSIVE_GROUPS)


def _med(rng: random.Random, name: str) -> Med:
    drug = V.DRUGS[name]
    return Med(drug, rng.choice(drug.doses))


def _sample_allergies(rng: random.Random, t: Truth) -> None:
    # vancomycin/ceftriaxone allergies only arise during the stay (see NEW_ALLERGENS): as
    # admission allergies they would contradict the inpatient therapy the notes describe
    pool = [a for a in V.ALLERGENS if a not in ("vancomycin", "ceftriaxone")]

    def real(n: int) -> list[tuple[str, str]]:
        return [(a, rng.choice(V.ALLERGEN_REACTIONS.get(a, tuple(V.REACTIONS)))) for a in rng.sample(pool, n)]

    if t.kind != "allergy":
        t.allergies = real(1) if rng.random() < 0.45 else []
    else:
        mode = rng.choices(["negated", "real", "new"], [0.45, 0.35, 0.20])[0]
        if mode == "real":
            t.allergies = real(rng.choice([1, 1, 2]))
        elif mode == "new":
            t.allergies = real(1) if rng.random() < 0.4 else []
            taken = [a for a, _ in t.allergies]
            allergen = rng.choice([a for a in V.NEW_ALLERGENS if a not in taken])
            t.new_allergy = (allergen, rng.choice(("rash", "hives", "itching")))
        taken = [a for a, _ in t.all_allergies]
        if mode == "negated" or rng.random() < 0.5:
            n_neg = 2 if mode == "negated" and rng.random() < 0.3 else 1
            t.negated_allergens = rng.sample([a for a in pool if a not in taken], n_neg)
    taken = [a for a, _ in t.all_allergies] + t.negated_allergens
    if rng.random() < (0.35 if t.kind == "allergy" else 0.1):
        t.family_allergens = [rng.choice([a for a in pool if a not in taken])]


def _sample_meds(rng: random.Random, t: Truth, pair: V.Interaction | None) -> None:
    allergens = [a for a, _ in t.all_allergies]
    present: list[str] = []
    for cond in t.conditions:
        if pair is not None and cond == pair.a_condition:
            name = pair.a  # may be blocked by an allergy: then the case is rejected below
            if _blocked(V.DRUGS[name], allergens):
                continue
        else:
            options = [n for n in V.CONDITIONS[cond][1] if not _blocked(V.DRUGS[n], allergens)]
            options = [n for n in options if _fits(n, present)]
            if not options:
                continue
            name = rng.choice(options)
        if _fits(name, present):
            t.home.append(_med(rng, name))
            present.append(name)
    if pair is not None and not _blocked(V.DRUGS[pair.b], allergens) and _fits(pair.b, present):
        t.new.append(_med(rng, pair.b))
        present.append(pair.b)
    options = [n for n in t.diagnosis.new_meds if not _blocked(V.DRUGS[n], allergens)]
    for name in rng.sample(options, min(len(options), rng.choice([0, 1, 1, 1, 2]))):
        if _fits(name, present):
            t.new.append(_med(rng, name))
            present.append(name)


def _plant_inactive_pair(rng: random.Random, t: Truth, active: V.Interaction | None) -> None:
    """Put both drugs of another pair in the note, but one of them does not go home."""
    allergens = [a for a, _ in t.all_allergies]
    present = [m.name for m in t.home + t.new]
    options = [p for p in V.INTERACTIONS if p is not active
               and _fits(p.a, present) and _fits(p.b, present + [p.a])
               and not _blocked(V.DRUGS[p.a], allergens) and not _blocked(V.DRUGS[p.b], allergens)]
    if not options:
        return
    p = rng.choice(options)
    t.home.insert(rng.randint(0, len(t.home)), _med(rng, p.a))
    if p.a_condition not in t.conditions:
        t.conditions.append(p.a_condition)
    if rng.random() < 0.5:  # the home drug is stopped because of the new one
        t.stopped[p.a] = f"interaction with {p.b}"
        t.new.append(_med(rng, p.b))
    else:  # the new drug was used in hospital only
        t.pair_completed.append(p.b)
    t.inactive_pairs.append(p)


def sample_truth(rng: random.Random, slice_name: str, kind: str) -> Truth:
    """One admission for `slice_name`, using the trap mix of `kind` (common/interaction/allergy)."""
    while True:  # rejection: common/allergy cases must not carry an accidental active pair
        t = _sample_once(rng, slice_name, kind)
        if (len(t.active_pairs) >= 1) == (kind == "interaction"):
            return t


def _sample_once(rng: random.Random, slice_name: str, kind: str) -> Truth:
    pair = rng.choice(V.INTERACTIONS) if kind == "interaction" else None
    if pair is not None and rng.random() < 0.7:
        dx = V.DIAGNOSIS_BY_NAME[rng.choice(pair.b_diagnoses)]
    else:
        dx = rng.choice(V.DIAGNOSES)
    conds = rng.sample(list(V.CONDITIONS), rng.choice([0, 1, 2, 2, 3, 3, 4]))
    if pair is not None and pair.a_condition not in conds:
        conds.append(pair.a_condition)
    t = Truth(slice=slice_name, kind=kind, age=rng.randint(24, 91), sex=rng.choice("MF"),
              diagnosis=dx, conditions=conds, home=[], new=[], stopped={})
    _sample_allergies(rng, t)
    _sample_meds(rng, t, pair)  # an interaction case whose pair got blocked is rejected by the caller

    # home drugs stopped for a reason; never a drug of the active pair
    stoppable = [m.name for m in t.home if m.name in V.STOP_REASONS
                 and (pair is None or m.name not in (pair.a, pair.b))]
    if stoppable and rng.random() < 0.45:
        for name in rng.sample(stoppable, 2 if len(stoppable) > 2 and rng.random() < 0.2 else 1):
            t.stopped[name] = rng.choice(V.STOP_REASONS[name])
    if rng.random() < (0.35 if kind == "interaction" else 0.12):
        _plant_inactive_pair(rng, t, pair)

    changeable = [m for m in t.home if m.name not in t.stopped and len(m.drug.doses) > 1]
    if changeable and rng.random() < 0.25:
        m = rng.choice(changeable)
        m.old_dose = m.dose
        m.dose = rng.choice([d for d in m.drug.doses if d != m.old_dose])

    allergens = [a for a, _ in t.all_allergies]
    on_list = [m.name for m in t.home + t.new]
    ed = [k for k in dx.ed_meds if V.ONE_TIME_AVOID.get(k) not in allergens and k not in on_list]
    t.ed_meds = rng.sample(ed, min(len(ed), rng.choice([0, 1, 1, 2])))
    inpatient = [k for k in dx.inpatient_meds if V.INPATIENT_AVOID.get(k) not in allergens]
    t.inpatient_meds = rng.sample(inpatient, min(len(inpatient), rng.choice([0, 1])))
    past = [pm for pm in V.PAST_MEDS if pm[0] not in on_list + t.pair_completed]
    t.past_meds = rng.sample(past, rng.choice([0, 0, 1, 1, 2]))
    t.prior_dx = rng.sample(V.PRIOR_DX, rng.choice([0, 1, 1, 2]))
    t.ruled_out = rng.choice(dx.ruled_out) if rng.random() < 0.2 else None
    t.follow_up = (rng.choice(dx.follow_up), rng.choice(list(V.INTERVALS)))
    return t


# ---------------------------------------------------------------- cases

# Long-slice notes aim at LONG_NOTE_TARGET_CHARS x U(0.90, 1.15) characters of note text (the
# filler absorbs the difference). This is the one knob for fitting the shipped context length.
LONG_NOTE_TARGET_CHARS = 1500
_LONG_KINDS = (("common", "allergy", "interaction"), (0.55, 0.25, 0.20))


def make_case(rng: random.Random, slice_name: str, target_chars: int | None = None) -> Case:
    """One case of `slice_name`; long cases carry a trap mix drawn like the other slices."""
    from .notes import write_note  # notes imports this module's types

    if slice_name not in SLICES:
        raise ValueError(f"unknown slice {slice_name!r}; expected one of {SLICES}")
    kind = slice_name if slice_name != "long" else rng.choices(*_LONG_KINDS)[0]
    truth = sample_truth(rng, slice_name, kind)
    if slice_name == "long" and target_chars is None:
        target_chars = int(LONG_NOTE_TARGET_CHARS * rng.uniform(0.90, 1.15))
    return Case(truth, truth.summary(), write_note(rng, truth, target_chars))


def note_key(note: str) -> str:
    """Identity of a note for overlap checks: case and whitespace do not make a new note."""
    return " ".join(note.casefold().split())


def generate(rng: random.Random, counts: dict[str, int], exclude: set[str] | None = None) -> list[Case]:
    """`counts[slice]` cases per slice (in SLICES order), skipping notes already in `exclude`.

    `exclude` is updated in place, so successive calls never repeat a note.
    """
    seen = exclude if exclude is not None else set()
    cases: list[Case] = []
    for slice_name in SLICES:
        made = 0
        while made < counts.get(slice_name, 0):
            case = make_case(rng, slice_name)
            key = note_key(case.note)
            if key in seen:
                continue
            seen.add(key)
            cases.append(case)
            made += 1
    return cases
