"""Writing a discharge note from a `Truth`: templates, abbreviations, section shuffling, filler.

Notes vary on purpose (several templates per section, abbreviations, section order, four
styles of discharge medication list) so that a model has to read them rather than copy fixed
spans. Every statement is a rendering of the truth; filler (progress notes, vitals, labs,
nursing and consult notes) is truth-neutral: it never names a drug, allergy or diagnosis.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from . import vocab as V

if TYPE_CHECKING:
    from .discharge import Med, Truth

_SECTION_LABELS: dict[str, tuple[str, ...]] = {
    "pmh": ("PMH", "Past medical history", "PAST MEDICAL HISTORY"),
    "home": ("Home meds", "Medications prior to admission", "HOME MEDICATIONS", "Meds PTA"),
    "allergy": ("Allergies", "ALLERGIES", "ALL", "Allergy status"),
    "social": ("Social hx", "SOCIAL HISTORY", "SH"),
    "family": ("Family hx", "FHx", "FAMILY HISTORY"),
    "course": ("Hospital course", "HOSPITAL COURSE", "Brief hospital course", "Course"),
    "dx": ("Discharge diagnosis", "DISCHARGE DIAGNOSIS", "Principal dx", "Final diagnosis", "Dx"),
    "secondary": ("Secondary dx", "Chronic problems", "Other active problems"),
    "meds": ("Discharge medications", "DISCHARGE MEDICATIONS", "Discharge meds", "Meds on discharge"),
    "fu": ("Follow-up", "FOLLOW UP", "F/u", "Follow up appointments"),
    "cond": ("Condition at discharge", "Dispo", "Disposition"),
    "filler": ("Daily progress notes", "INTERVAL EVENTS", "Progress notes"),
}
_HEADERS = ("DISCHARGE SUMMARY", "Discharge Summary - Hospital Medicine", "DC SUMMARY",
            "Internal Medicine Discharge Note", "")
_COURSE_MEDS_FOR_DURATION = ("amoxicillin", "amoxicillin-clavulanate", "cephalexin", "doxycycline",
                             "azithromycin", "nitrofurantoin", "fidaxomicin", "ciprofloxacin",
                             "clarithromycin", "trimethoprim", "prednisone")


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _section(rng: random.Random, key: str, body: str) -> str:
    label = rng.choice(_SECTION_LABELS[key])
    return f"{label}:\n{body}" if "\n" in body else f"{label}: {body}"


def drug_text(rng: random.Random, name: str) -> str:
    drug = V.DRUGS.get(name)
    text = rng.choice((name, name, name) + (drug.aliases if drug else ()))
    return _cap(text) if rng.random() < 0.25 else text


def med_text(rng: random.Random, med: "Med", dose: str | None = None, duration: bool = False) -> str:
    dose = dose or med.dose
    if rng.random() < 0.3 and (dose.endswith(" mg") or dose.endswith(" mcg")):
        dose = dose.replace(" ", "")
    route = rng.choice(V.ROUTES[med.drug.route])
    freq = rng.choice(V.FREQUENCIES[med.drug.freq][1])
    if freq.startswith("PO ") and route:
        freq = freq[3:]
    text = " ".join(p for p in (drug_text(rng, med.name), dose, route, freq) if p)
    if duration and med.name in _COURSE_MEDS_FOR_DURATION and rng.random() < 0.5:
        text += rng.choice((f" x{rng.randint(3, 7)} days", f" for {rng.randint(3, 7)} more days"))
    return text


def _allergy_item(rng: random.Random, allergen: str, reaction: str) -> str:
    a, r = rng.choice(V.ALLERGENS[allergen]), rng.choice(V.REACTIONS[reaction])
    return rng.choice((f"{a} ({r})", f"{a} -> {r}", f"{a} - {r}", f"{a}: {r}"))


_NEGATIONS = (
    "pt denies allergy to {a}",
    "{A} allergy listed in old chart was ruled out by allergist",
    "previously labeled {a}-allergic, but skin testing was negative and the label was removed",
    "no true allergy to {a} (GI upset only; removed from allergy list)",
    "tolerated {a} without reaction in the past; {a} allergy removed from chart",
)


def negation(rng: random.Random, allergen: str) -> str:
    a = rng.choice(V.ALLERGENS[allergen])
    return rng.choice(_NEGATIONS).format(a=a, A=_cap(a))


def _allergy_body(rng: random.Random, t: "Truth") -> str:
    if t.allergies:
        body = rng.choice((", ", "; ")).join(_allergy_item(rng, a, r) for a, r in t.allergies)
    else:
        body = rng.choice(("NKDA", "No known drug allergies", "none known", "NKDA."))
    if t.new_allergy and rng.random() < 0.5:
        body = "(on admission) " + body
    for allergen in t.negated_allergens:
        body = body.rstrip(".") + ". " + _cap(negation(rng, allergen)) + "."
    return body


def _id_line(rng: random.Random, t: "Truth") -> str:
    conds = ", ".join(rng.choice(V.CONDITIONS[c][0]) for c in t.conditions)
    hx, pmh, with_ = ((f"hx of {conds}", f"PMH {conds}", conds) if conds else ("no significant PMH",) * 3)
    man, male = ("man", "male") if t.sex == "M" else ("woman", "female")
    complaint = rng.choice(t.diagnosis.complaints)
    return rng.choice((
        f"{t.age} yo {t.sex} w/ {hx} who p/w {complaint}.",
        f"Pt is a {t.age} y/o {male} with {pmh}, presenting with {complaint}.",
        f"HPI: {t.age}-year-old {man} with {with_} admitted c/o {complaint} x{rng.randint(1, 6)} days.",
        f"{t.age}{t.sex} with {with_} presented to the ED with {complaint}.",
    ))


def _pmh_body(rng: random.Random, t: "Truth") -> str:
    parts = [", ".join(rng.choice(V.CONDITIONS[c][0]) for c in t.conditions) or "none"]
    if t.prior_dx:
        parts.append(rng.choice(("hx of ", "remote hx: ", "also ")) + ", ".join(t.prior_dx))
    for name, why in t.past_meds:
        parts.append(rng.choice((f"previously on {name}, stopped years ago ({why})",
                                 f"took {name} in the past, d/c'd ({why})")))
    return "; ".join(parts) + "."


def _home_body(rng: random.Random, t: "Truth") -> str:
    if not t.home:
        return "none"
    items = [med_text(rng, m, dose=m.old_dose or m.dose) for m in t.home]
    style = rng.randrange(3)
    if style == 0:
        return ", ".join(items)
    if style == 1:
        return "\n".join(f"- {i}" for i in items)
    return "\n".join(f"{n}. {i}" for n, i in enumerate(items, 1))


_STOP = (
    "{D} was held on admission for {r} and is discontinued at discharge.",
    "Stopped {d} given {r}.",
    "{D} d/c'd due to {r} - do not resume.",
    "Home {d} discontinued ({r}).",
    "Held {d} for {r}; will NOT be restarted.",
)
_COMPLETED = ("{D} was given during the admission and stopped before discharge.",
              "Completed a course of {d} in hospital; not continued at discharge.",
              "{D} was discontinued prior to discharge.")


def _dose_change(rng: random.Random, m: "Med") -> str:
    up = m.drug.doses.index(m.dose) > m.drug.doses.index(m.old_dose or m.dose)
    d = drug_text(rng, m.name)
    if up:
        return rng.choice((f"{_cap(d)} increased from {m.old_dose} to {m.dose}.",
                           f"Uptitrated {d} to {m.dose} (was {m.old_dose})."))
    return rng.choice((f"{_cap(d)} decreased from {m.old_dose} to {m.dose}.",
                       f"Reduced {d} dose to {m.dose} (previously {m.old_dose})."))


def course_body(rng: random.Random, t: "Truth", stop_in_course: dict[str, bool]) -> str:
    dx = rng.choice(t.diagnosis.aliases)
    if t.ruled_out:
        opening = rng.choice((f"Initially admitted with concern for {t.ruled_out}; this was ruled out and "
                              f"pt was treated for {dx}.",
                              f"Workup for {t.ruled_out} was negative. Managed for {dx}."))
    else:
        opening = rng.choice((f"Pt admitted to medicine for {dx}.", f"Admitted for management of {dx}.",
                              f"Treated for {dx}."))
    middle = []
    for key in t.ed_meds:
        x = V.ONE_TIME_MEDS[key]
        middle.append(rng.choice((f"In the ED received {x} x1.", f"Received {x} once in the ED.",
                                  f"s/p {x} in ED.")))
    for key in t.inpatient_meds:
        x = V.INPATIENT_MEDS[key]
        middle.append(rng.choice((f"Treated with {x}, stopped prior to discharge.",
                                  f"Required {x} during the stay, now off.",
                                  f"Managed with {x} while inpatient.")))
    if t.new and rng.random() < 0.5:
        middle.append("Started on " + " and ".join(drug_text(rng, m.name) for m in t.new) + ".")
    for name, reason in t.stopped.items():
        if stop_in_course[name]:
            d = drug_text(rng, name)
            middle.append(rng.choice(_STOP).format(d=d, D=_cap(d), r=reason))
    for name in t.pair_completed:
        d = drug_text(rng, name)
        middle.append(rng.choice(_COMPLETED).format(d=d, D=_cap(d)))
    for m in t.home:
        if m.old_dose and rng.random() < 0.7:
            middle.append(_dose_change(rng, m))
    if t.new_allergy:
        a, r = t.new_allergy
        x = rng.choice(V.ALLERGENS[a])
        middle.append(f"Developed {rng.choice(V.REACTIONS[r])} shortly after receiving {x} on HD{rng.randint(1, 3)}; "
                      f"{x} allergy added to chart.")
    rng.shuffle(middle)
    closer = rng.choice(("Improved clinically and tolerating PO.", "Afebrile, ambulating, at baseline.",
                         "Symptoms resolved; medically stable for discharge."))
    return " ".join([opening, *middle, closer])


def discharge_meds_body(rng: random.Random, t: "Truth", stop_in_course: dict[str, bool]) -> str:
    """Four list styles; all name the discharge meds in gold order (home first, then new)."""
    continued = [m for m in t.home if m.name not in t.stopped]
    styles = ["numbered", "grouped", "prose"] + (["home_ref"] if t.home else [])
    style = rng.choice(styles)
    # a stop must be visible somewhere; the home-reference style must state it here
    stop_here = [n for n in t.stopped if style == "home_ref" or not stop_in_course[n] or rng.random() < 0.5]
    stops = ", ".join(drug_text(rng, n) for n in stop_here)
    if not continued and not t.new:
        return "None." + (f" STOP {stops}." if stops else "")
    if style == "numbered":
        lines = [med_text(rng, m, duration=True) for m in continued + t.new]
        if stop_here and rng.random() < 0.5:
            lines += [f"{drug_text(rng, n)} -- DISCONTINUED" for n in stop_here]
            stops = ""
        body = "\n".join(f"{i}. {line}" for i, line in enumerate(lines, 1))
        return body + (f"\nSTOP taking: {stops}" if stops else "")
    if style == "grouped":
        groups = []
        if continued:
            groups.append("CONTINUE: " + ", ".join(med_text(rng, m) for m in continued))
        if t.new:
            groups.append("NEW: " + ", ".join(med_text(rng, m, duration=True) for m in t.new))
        if stops:
            groups.append("STOPPED: " + stops)
        return "\n".join(groups)
    if style == "prose":
        meds = [med_text(rng, m, duration=True) for m in continued + t.new]
        text = "Pt will go home on " + (", ".join(meds[:-1]) + " and " + meds[-1] if len(meds) > 1 else meds[0]) + "."
        return text + (f" {_cap(stops)} discontinued." if stops else "")
    # home_ref: continued home meds are implied by the home list; only changes are spelled out
    parts = ["Resume home medications" + (" with the following changes:" if stops or t.new else ".")]
    if stops:
        parts.append(f"STOP {stops}.")
    for m in continued:
        if m.old_dose:
            parts.append(f"CHANGE {med_text(rng, m)} (was {m.old_dose}).")
    if t.new:
        parts.append("NEW: " + ", ".join(med_text(rng, m, duration=True) for m in t.new) + ".")
    return " ".join(parts)


def follow_up(rng: random.Random, t: "Truth") -> str:
    """The follow-up statement: a labelled section or a bare sentence."""
    spec = rng.choice(V.SPECIALTIES[t.follow_up[0]])
    when = rng.choice(V.INTERVALS[t.follow_up[1]])
    if rng.random() < 0.5:
        return _section(rng, "fu", f"{spec} in {when}")
    return rng.choice((f"F/u with {spec} in {when}.", f"Pt to follow up with {spec} within {when}.",
                       f"Appointment with {spec} in {when}.", f"RTC: {spec} in {when}."))


# ---------------------------------------------------------------- filler for long notes

def _vitals(rng: random.Random) -> str:
    return (f"T {rng.randint(363, 379) / 10} °C, HR {rng.randint(62, 104)}, BP {rng.randint(104, 158)}/"
            f"{rng.randint(58, 92)}, RR {rng.randint(12, 22)}, SpO2 {rng.randint(92, 99)}% "
            f"{rng.choice(('RA', 'on 2L NC', 'room air'))}")


def filler_day(rng: random.Random, day: int) -> list[str]:
    """One hospital day of truth-neutral filler: a progress note, maybe labs, nursing, a consult."""
    subj = rng.choice(("feeling better, slept well", "mild fatigue, no new complaints",
                       "pain improved, appetite fair", "ambulated in hallway x2, no distress",
                       "overnight events: none", "anxious about going home, otherwise well"))
    plan = rng.choice(("continue current management", "trend labs in AM", "encourage ambulation",
                       "PT/OT following", "anticipate discharge in 1-2 days", "monitor I/Os, daily weights"))
    exam = rng.choice(("NAD, A&Ox3", "unchanged from prior", "RRR, breathing comfortably", "alert, conversant"))
    blocks = [f"HD#{day} progress note: {subj}. {_vitals(rng)}. Exam: {exam}. Plan: {plan}."]
    if rng.random() < 0.7:
        blocks.append(f"Labs HD#{day}: WBC {rng.randint(45, 140) / 10}, Hgb {rng.randint(95, 150) / 10}, "
                      f"Plt {rng.randint(150, 380)}, Na {rng.randint(132, 144)}, K {rng.randint(34, 50) / 10}, "
                      f"Cr {rng.randint(6, 16) / 10}, BUN {rng.randint(8, 32)}, Glu {rng.randint(85, 210)}.")
    if rng.random() < 0.6:
        shift = rng.choice(("night", "day", "evening"))
        doing = rng.choice(("voiding without difficulty", "tolerating diet", "up to chair with assist"))
        blocks.append(f"Nursing ({shift}, HD#{day}): pt resting comfortably, {doing}, no falls, "
                      f"pain {rng.randint(0, 5)}/10, call light within reach.")
    if rng.random() < 0.3:
        blocks.append(rng.choice((
            "PT eval: ambulates 150 ft with rolling walker; recommends home with outpatient PT.",
            "Case management: confirmed insurance, arranged home health RN visits.",
            "Nutrition consult: encouraged high-protein diet; no supplements needed.",
            "SW: pt has good family support; no barriers to discharge identified.",
            "OT eval: independent with ADLs, no DME needs.")))
    return blocks


# ---------------------------------------------------------------- the whole note

def write_note(rng: random.Random, t: "Truth", target_chars: int | None = None) -> str:
    """The note for `t`; with target_chars, filler pushes the key lines far from the start."""
    stop_in_course = {n: rng.random() < 0.7 for n in t.stopped}
    header = rng.choice(_HEADERS)
    dx_section = _section(rng, "dx", _cap(rng.choice(t.diagnosis.aliases)))
    dx_on_top = rng.random() < 0.25
    allergy = _section(rng, "allergy", _allergy_body(rng, t))
    admission = [_section(rng, "pmh", _pmh_body(rng, t)), _section(rng, "home", _home_body(rng, t))]
    if rng.random() < 0.5:
        admission.append(_section(rng, "social", rng.choice(V.SOCIAL_HX)))
    family = [f"mother with {rng.choice(V.ALLERGENS[a])} allergy" for a in t.family_allergens]
    if family or rng.random() < 0.3:
        admission.append(_section(rng, "family", "; ".join(family + [rng.choice(V.FAMILY_HX)]) + "."))
    # long notes move the allergy status behind the filler, next to the discharge sections
    allergy_late = target_chars is not None and rng.random() < 0.8
    if not allergy_late:
        admission.append(allergy)
    rng.shuffle(admission)

    discharge = [_section(rng, "meds", discharge_meds_body(rng, t, stop_in_course)),
                 follow_up(rng, t)]
    if not dx_on_top:
        discharge.insert(0, dx_section)
    if t.conditions and rng.random() < 0.4:
        discharge.append(_section(rng, "secondary", ", ".join(V.CONDITIONS[c][0][0] for c in t.conditions)))
    if rng.random() < 0.5:
        discharge.append(_section(rng, "cond", rng.choice(("stable, discharged home.", "home with family.",
                                                           "home with VNA services."))))
    if allergy_late:
        discharge.append(allergy)
    rng.shuffle(discharge)

    top = [p for p in (header, dx_section if dx_on_top else "", _id_line(rng, t)) if p]
    course = _section(rng, "course", course_body(rng, t, stop_in_course))
    sep = rng.choice(("\n", "\n\n"))
    parts = top + admission + [course] + discharge
    if target_chars is not None:
        parts = top + admission + [_filler(rng, target_chars - len(sep.join(parts)))] + [course] + discharge
    return sep.join(parts)


def _filler(rng: random.Random, budget: int) -> str:
    """Whole filler days while they fit in `budget` characters, then vitals lines to top up."""
    blocks: list[str] = []
    used, day = 0, 1
    while True:
        blocks_today = filler_day(rng, day)
        size = sum(len(b) + 1 for b in blocks_today)
        if blocks and used + size > budget:
            break
        blocks += blocks_today
        used += size
        day += 1
    while used + 90 < budget:  # a vitals line is ~85 characters
        line = f"Vitals HD#{day - 1}: {_vitals(rng)}."
        blocks.append(line)
        used += len(line) + 1
    return _section(rng, "filler", "\n".join(blocks))
