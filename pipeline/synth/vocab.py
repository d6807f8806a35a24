"""Vocabularies for the synthetic discharge notes.

Everything here is plain data. Canonical strings (what gold summaries contain) are the first
or only spelling; notes are written with the aliases, so the model has to normalise
abbreviations ("BID", "PCN", "CAP", "f/u PCP 1 wk") into the canonical form rather than copy
spans. All lists are ordered (never sets) because generation must be reproducible and set
iteration order depends on PYTHONHASHSEED.
"""

from __future__ import annotations

from typing import NamedTuple

# frequency key -> (canonical wording in the summary, spellings used in notes)
FREQUENCIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "qd": ("daily", ("daily", "once daily", "qd", "QD", "once a day", "PO daily")),
    "bid": ("twice daily", ("BID", "bid", "twice daily", "twice a day", "q12h")),
    "tid": ("three times daily", ("TID", "tid", "three times daily", "three times a day")),
    "qid": ("four times daily", ("QID", "qid", "four times daily", "four times a day")),
    "qhs": ("at bedtime", ("QHS", "qhs", "at bedtime", "nightly")),
    "q4prn": ("every 4 hours as needed", ("q4h PRN", "q4h prn", "every 4 hours as needed")),
    "q6prn": ("every 6 hours as needed", ("q6h PRN", "q6h prn", "every 6 hours as needed", "q6h as needed")),
    "weekly": ("weekly", ("weekly", "once weekly", "once a week", "qweek")),
}

ROUTES: dict[str, tuple[str, ...]] = {
    "po": ("PO", "by mouth", "oral", ""),
    "inh": ("inhaled", ""),
    "sc": ("subcut", "SC", "subcutaneously"),
}


class Drug(NamedTuple):
    name: str                 # canonical, lower case
    doses: tuple[str, ...]    # canonical dose strings; a dose change picks another one
    freq: str                 # key into FREQUENCIES
    route: str = "po"         # key into ROUTES
    aliases: tuple[str, ...] = ()  # extra note spellings (brand in parentheses, MDI, ...)
    avoid_with: tuple[str, ...] = ()  # allergens (canonical) that rule this drug out


_D = Drug
DRUGS: dict[str, Drug] = {d.name: d for d in [
    _D("metformin", ("500 mg", "1000 mg"), "bid"),
    _D("lisinopril", ("10 mg", "20 mg", "40 mg"), "qd", avoid_with=("lisinopril",)),
    _D("losartan", ("25 mg", "50 mg", "100 mg"), "qd"),
    _D("amlodipine", ("5 mg", "10 mg"), "qd", aliases=("amlodipine (Norvasc)",)),
    _D("hydrochlorothiazide", ("12.5 mg", "25 mg"), "qd", aliases=("HCTZ",)),
    _D("atorvastatin", ("20 mg", "40 mg", "80 mg"), "qhs", aliases=("atorvastatin (Lipitor)",)),
    _D("metoprolol succinate", ("25 mg", "50 mg", "100 mg"), "qd", aliases=("metoprolol XL", "Toprol XL (metoprolol succinate)")),
    _D("levothyroxine", ("50 mcg", "75 mcg", "100 mcg"), "qd", aliases=("levothyroxine (Synthroid)",)),
    _D("furosemide", ("20 mg", "40 mg"), "qd", aliases=("furosemide (Lasix)",)),
    _D("pantoprazole", ("40 mg",), "qd", aliases=("pantoprazole (Protonix)",)),
    _D("albuterol inhaler", ("2 puffs",), "q4prn", "inh", aliases=("albuterol MDI", "albuterol HFA")),
    _D("tiotropium", ("18 mcg",), "qd", "inh", aliases=("tiotropium (Spiriva)",)),
    _D("insulin glargine", ("10 units", "20 units", "30 units"), "qhs", "sc", aliases=("Lantus (insulin glargine)", "glargine")),
    _D("apixaban", ("2.5 mg", "5 mg"), "bid", aliases=("apixaban (Eliquis)",)),
    _D("gabapentin", ("100 mg", "300 mg"), "tid"),
    _D("acetaminophen", ("500 mg", "650 mg"), "q6prn", aliases=("Tylenol (acetaminophen)", "APAP")),
    _D("prednisone", ("20 mg", "40 mg"), "qd"),
    _D("tamsulosin", ("0.4 mg",), "qd", aliases=("tamsulosin (Flomax)",)),
    _D("aspirin", ("81 mg",), "qd", aliases=("ASA",), avoid_with=("aspirin",)),
    _D("colchicine", ("0.6 mg",), "qd"),
    _D("amoxicillin", ("500 mg",), "tid", avoid_with=("penicillin",)),
    _D("amoxicillin-clavulanate", ("875 mg",), "bid", aliases=("Augmentin (amoxicillin-clavulanate)",), avoid_with=("penicillin",)),
    _D("cephalexin", ("500 mg",), "qid", aliases=("cephalexin (Keflex)",), avoid_with=("penicillin",)),
    _D("doxycycline", ("100 mg",), "bid"),
    _D("azithromycin", ("250 mg",), "qd", avoid_with=("erythromycin",)),
    _D("nitrofurantoin", ("100 mg",), "bid", aliases=("nitrofurantoin (Macrobid)",)),
    _D("fidaxomicin", ("200 mg",), "bid"),
    _D("escitalopram", ("10 mg",), "qd"),
    # drugs that take part in the interaction pairs below
    _D("warfarin", ("2.5 mg", "5 mg"), "qd", aliases=("warfarin (Coumadin)",)),
    _D("ciprofloxacin", ("250 mg", "500 mg"), "bid", aliases=("cipro",)),
    _D("simvastatin", ("20 mg", "40 mg"), "qhs"),
    _D("clarithromycin", ("500 mg",), "bid", avoid_with=("erythromycin",)),
    _D("sertraline", ("50 mg", "100 mg"), "qd", aliases=("sertraline (Zoloft)",)),
    _D("tramadol", ("50 mg",), "q6prn", avoid_with=("codeine",)),
    _D("spironolactone", ("25 mg",), "qd"),
    _D("methotrexate", ("15 mg", "20 mg"), "weekly"),
    _D("trimethoprim", ("100 mg",), "bid"),
    _D("clopidogrel", ("75 mg",), "qd", aliases=("clopidogrel (Plavix)",)),
    _D("omeprazole", ("20 mg", "40 mg"), "qd"),
    _D("digoxin", ("0.125 mg", "0.25 mg"), "qd"),
    _D("amiodarone", ("200 mg",), "qd"),
    _D("lithium", ("300 mg",), "bid", aliases=("lithium carbonate",)),
    _D("ibuprofen", ("400 mg", "600 mg"), "q6prn", aliases=("Motrin (ibuprofen)",), avoid_with=("aspirin",)),
]}


class Interaction(NamedTuple):
    a: str                      # usually a home drug
    b: str                      # usually started this admission
    risk: str
    a_condition: str            # chronic condition (CONDITIONS key) that explains drug a
    b_diagnoses: tuple[str, ...]  # admissions (canonical diagnoses) where b is plausible

    @property
    def warning(self) -> str:
        return f"{self.a} + {self.b}: {self.risk}"


INTERACTIONS: tuple[Interaction, ...] = (
    Interaction("warfarin", "ciprofloxacin", "increased bleeding risk", "AFib", ("Acute pyelonephritis", "Urinary tract infection")),
    Interaction("simvastatin", "clarithromycin", "myopathy risk", "HLD", ("Community-acquired pneumonia",)),
    Interaction("sertraline", "tramadol", "serotonin syndrome risk", "depression", ("Acute low back pain", "Gout flare")),
    Interaction("lisinopril", "spironolactone", "hyperkalemia risk", "HTN", ("Acute decompensated heart failure",)),
    Interaction("methotrexate", "trimethoprim", "bone marrow toxicity", "RA", ("Urinary tract infection",)),
    Interaction("clopidogrel", "omeprazole", "reduced antiplatelet effect", "CAD", ("Upper gastrointestinal bleed", "Acute gastritis")),
    Interaction("digoxin", "amiodarone", "digoxin toxicity", "CHF", ("Atrial fibrillation with rapid ventricular response",)),
    Interaction("lithium", "ibuprofen", "lithium toxicity", "bipolar", ("Gout flare", "Acute low back pain")),
)
# at most one drug per group on a discharge list (no double anticoagulation, two statins...)
EXCLUSIVE_GROUPS: tuple[tuple[str, ...], ...] = (
    ("apixaban", "warfarin"), ("atorvastatin", "simvastatin"), ("pantoprazole", "omeprazole"),
    ("lisinopril", "losartan"), ("sertraline", "escitalopram"),
    # one oral antibiotic at discharge
    ("amoxicillin", "amoxicillin-clavulanate", "cephalexin", "doxycycline", "azithromycin",
     "nitrofurantoin", "fidaxomicin", "ciprofloxacin", "clarithromycin", "trimethoprim"),
)
INTERACTION_DRUGS: frozenset[str] = frozenset(d for p in INTERACTIONS for d in (p.a, p.b))

# chronic condition key -> (spellings in PMH lines, home drugs that treat it)
CONDITIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "HTN": (("HTN", "hypertension"), ("lisinopril", "amlodipine", "losartan", "hydrochlorothiazide")),
    "DM2": (("DM2", "T2DM", "type 2 diabetes"), ("metformin", "insulin glargine")),
    "HLD": (("HLD", "hyperlipidemia"), ("atorvastatin", "simvastatin")),
    "hypothyroidism": (("hypothyroidism",), ("levothyroxine",)),
    "GERD": (("GERD",), ("pantoprazole", "omeprazole")),
    "BPH": (("BPH",), ("tamsulosin",)),
    "depression": (("depression", "MDD"), ("sertraline", "escitalopram")),
    "COPD": (("COPD",), ("tiotropium", "albuterol inhaler")),
    "AFib": (("AFib", "paroxysmal atrial fibrillation"), ("apixaban", "warfarin", "metoprolol succinate")),
    "CAD": (("CAD", "CAD s/p PCI"), ("aspirin", "clopidogrel", "atorvastatin")),
    "CHF": (("HFrEF", "chronic systolic CHF"), ("furosemide", "digoxin", "metoprolol succinate")),
    "neuropathy": (("peripheral neuropathy",), ("gabapentin",)),
    "RA": (("rheumatoid arthritis", "RA"), ("methotrexate",)),
    "bipolar": (("bipolar disorder", "bipolar I"), ("lithium",)),
    "OA": (("OA", "osteoarthritis"), ("acetaminophen",)),
}


class Diagnosis(NamedTuple):
    name: str                        # canonical
    aliases: tuple[str, ...]         # note spellings
    complaints: tuple[str, ...]
    new_meds: tuple[str, ...]        # drugs that may be started and continued at discharge
    ed_meds: tuple[str, ...]         # keys of ONE_TIME_MEDS given in the ED only
    inpatient_meds: tuple[str, ...]  # keys of INPATIENT_MEDS stopped before discharge
    follow_up: tuple[str, ...]       # SPECIALTIES keys
    ruled_out: tuple[str, ...]       # working diagnoses that were excluded (trap)


_X = Diagnosis
DIAGNOSES: tuple[Diagnosis, ...] = (
    _X("Community-acquired pneumonia", ("community-acquired pneumonia", "CAP", "community acquired PNA"), ("fever and productive cough", "SOB and cough x3 days"), ("doxycycline", "azithromycin", "amoxicillin"), ("ceftriaxone", "ipratropium-albuterol"), ("piperacillin-tazobactam",), ("primary care", "pulmonology"), ("pulmonary embolism", "CHF exacerbation")),
    _X("Acute decompensated heart failure", ("acute decompensated heart failure", "ADHF", "acute on chronic HF exacerbation"), ("DOE and leg swelling", "orthopnea and weight gain"), ("furosemide", "metoprolol succinate"), ("nitroglycerin",), ("IV furosemide",), ("cardiology", "primary care"), ("ACS", "pneumonia")),
    _X("COPD exacerbation", ("COPD exacerbation", "AECOPD", "acute exacerbation of COPD"), ("worsening SOB and wheezing",), ("prednisone", "azithromycin", "tiotropium"), ("methylprednisolone", "ipratropium-albuterol"), ("IV methylprednisolone",), ("pulmonology", "primary care"), ("pneumonia", "pulmonary embolism")),
    _X("Urinary tract infection", ("urinary tract infection", "UTI", "acute cystitis"), ("dysuria and frequency", "confusion and dysuria"), ("nitrofurantoin", "cephalexin"), ("ceftriaxone",), ("IV ceftriaxone",), ("primary care", "urology"), ("pyelonephritis",)),
    _X("Acute pyelonephritis", ("acute pyelonephritis", "pyelo", "pyelonephritis"), ("flank pain and fever",), ("cephalexin", "amoxicillin-clavulanate"), ("ceftriaxone", "ketorolac"), ("IV ceftriaxone",), ("primary care", "urology"), ("nephrolithiasis",)),
    _X("Cellulitis", ("cellulitis", "LLE cellulitis", "cellulitis of the right leg"), ("leg redness and swelling",), ("cephalexin", "doxycycline"), ("ketorolac",), ("IV vancomycin",), ("primary care",), ("DVT", "abscess")),
    _X("Diabetic ketoacidosis", ("diabetic ketoacidosis", "DKA"), ("polyuria, vomiting and abdominal pain",), ("insulin glargine",), ("ondansetron", "potassium chloride"), ("insulin drip",), ("endocrinology", "primary care"), ("pancreatitis",)),
    _X("Acute kidney injury", ("acute kidney injury", "AKI", "prerenal AKI"), ("poor PO intake and weakness",), (), ("ondansetron",), ("IV fluids",), ("nephrology", "primary care"), ("obstructive uropathy",)),
    _X("Atrial fibrillation with rapid ventricular response", ("atrial fibrillation with rapid ventricular response", "AFib with RVR", "AF w/ RVR"), ("palpitations and lightheadedness",), ("metoprolol succinate", "apixaban"), ("diltiazem",), ("diltiazem drip", "heparin drip"), ("cardiology",), ("ACS", "thyrotoxicosis")),
    _X("Pulmonary embolism", ("pulmonary embolism", "PE", "acute PE"), ("pleuritic chest pain and SOB",), ("apixaban",), ("morphine",), ("heparin drip",), ("primary care", "hematology"), ("ACS", "pneumonia")),
    _X("Upper gastrointestinal bleed", ("upper gastrointestinal bleed", "UGIB", "upper GI bleed"), ("melena and dizziness", "coffee-ground emesis"), ("pantoprazole",), ("ondansetron",), ("IV pantoprazole drip",), ("gastroenterology",), ("lower GI bleed",)),
    _X("Non-ST-elevation myocardial infarction", ("non-ST-elevation myocardial infarction", "NSTEMI"), ("substernal chest pressure",), ("atorvastatin", "metoprolol succinate", "clopidogrel"), ("nitroglycerin", "morphine"), ("heparin drip",), ("cardiology",), ("aortic dissection", "PE")),
    _X("Gout flare", ("gout flare", "acute gout", "acute gouty arthritis"), ("painful swollen left knee", "R great toe pain"), ("colchicine", "prednisone"), ("ketorolac",), (), ("rheumatology", "primary care"), ("septic arthritis",)),
    _X("Acute low back pain", ("acute low back pain", "acute lumbar strain", "mechanical LBP"), ("severe low back pain after lifting",), ("acetaminophen",), ("ketorolac", "morphine"), (), ("primary care", "physical therapy"), ("cauda equina syndrome", "epidural abscess")),
    _X("Acute gastritis", ("acute gastritis", "gastritis"), ("epigastric pain and nausea",), ("pantoprazole",), ("ondansetron",), ("IV pantoprazole drip",), ("gastroenterology", "primary care"), ("ACS", "pancreatitis")),
    _X("Clostridioides difficile colitis", ("Clostridioides difficile colitis", "C. diff colitis", "CDI"), ("watery diarrhea x5 days",), ("fidaxomicin",), ("ondansetron",), ("IV fluids",), ("infectious disease", "primary care"), ("ischemic colitis",)),
    _X("Small bowel obstruction", ("small bowel obstruction", "SBO", "partial SBO"), ("abdominal distension and vomiting",), (), ("ondansetron", "morphine"), ("IV fluids",), ("general surgery",), ("volvulus",)),
    _X("Hyponatremia", ("hyponatremia", "symptomatic hyponatremia"), ("confusion and falls",), (), ("ondansetron",), ("IV fluids",), ("primary care", "nephrology"), ("stroke",)),
)
DIAGNOSIS_BY_NAME: dict[str, Diagnosis] = {d.name: d for d in DIAGNOSES}

# one-time doses in the ED and inpatient-only therapy: named in notes, never discharge meds
ONE_TIME_MEDS: dict[str, str] = {
    "ceftriaxone": "ceftriaxone 1 g IV", "ipratropium-albuterol": "a DuoNeb (ipratropium-albuterol) treatment",
    "nitroglycerin": "nitroglycerin 0.4 mg SL", "methylprednisolone": "methylprednisolone 125 mg IV",
    "ketorolac": "ketorolac 30 mg IV", "ondansetron": "ondansetron 4 mg IV",
    "potassium chloride": "potassium chloride 40 mEq PO", "diltiazem": "diltiazem 10 mg IV push",
    "morphine": "morphine 4 mg IV",
}
ONE_TIME_AVOID: dict[str, str] = {"ketorolac": "aspirin", "morphine": "morphine"}
INPATIENT_MEDS: dict[str, str] = {
    "piperacillin-tazobactam": "IV piperacillin-tazobactam", "IV furosemide": "IV furosemide diuresis",
    "IV methylprednisolone": "IV methylprednisolone", "IV ceftriaxone": "IV ceftriaxone",
    "IV vancomycin": "IV vancomycin", "insulin drip": "an insulin drip", "IV fluids": "IV fluids",
    "diltiazem drip": "a diltiazem drip", "heparin drip": "a heparin drip",
    "IV pantoprazole drip": "an IV pantoprazole drip",
}
INPATIENT_AVOID: dict[str, str] = {"piperacillin-tazobactam": "penicillin"}

# allergen canonical -> note spellings; reaction canonical -> note spellings
ALLERGENS: dict[str, tuple[str, ...]] = {
    "penicillin": ("penicillin", "PCN", "penicillins"),
    "sulfa": ("sulfa", "sulfa drugs", "sulfonamides"),
    "codeine": ("codeine",),
    "aspirin": ("aspirin", "ASA"),
    "morphine": ("morphine",),
    "latex": ("latex",),
    "iodinated contrast": ("IV contrast", "iodinated contrast", "contrast dye"),
    "erythromycin": ("erythromycin",),
    "lisinopril": ("lisinopril",),
    "vancomycin": ("vancomycin", "vanc"),
    "ceftriaxone": ("ceftriaxone", "Rocephin (ceftriaxone)"),
}
# allergies that can be discovered during the stay (a reaction to something given inpatient)
NEW_ALLERGENS: tuple[str, ...] = ("vancomycin", "ceftriaxone", "morphine", "iodinated contrast")
REACTIONS: dict[str, tuple[str, ...]] = {
    "rash": ("rash", "skin rash"),
    "hives": ("hives", "urticaria"),
    "anaphylaxis": ("anaphylaxis", "anaphylactic reaction"),
    "angioedema": ("angioedema",),
    "itching": ("itching", "pruritus"),
    "unknown reaction": ("unknown reaction", "reaction unknown", "unk rxn"),
}
# ACE-inhibitor allergy is angioedema in practice; other allergens take any reaction
ALLERGEN_REACTIONS: dict[str, tuple[str, ...]] = {"lisinopril": ("angioedema",)}

SPECIALTIES: dict[str, tuple[str, ...]] = {
    "primary care": ("PCP", "primary care", "primary care provider", "primary care physician"),
    "pulmonology": ("pulmonology", "pulm clinic", "pulmonary clinic"),
    "cardiology": ("cardiology", "cards", "cardiology clinic"),
    "urology": ("urology", "uro clinic"),
    "endocrinology": ("endocrinology", "endo", "the diabetes clinic (endocrinology)"),
    "nephrology": ("nephrology", "renal clinic (nephrology)"),
    "hematology": ("hematology", "heme clinic"),
    "gastroenterology": ("gastroenterology", "GI", "GI clinic"),
    "rheumatology": ("rheumatology", "rheum"),
    "physical therapy": ("physical therapy", "outpatient PT"),
    "infectious disease": ("infectious disease", "ID clinic"),
    "general surgery": ("general surgery", "surgery clinic"),
}
INTERVALS: dict[str, tuple[str, ...]] = {
    "3 days": ("3 days", "3d", "three days"),
    "1 week": ("1 week", "1 wk", "one week"),
    "2 weeks": ("2 weeks", "2 wks", "two weeks"),
    "4 weeks": ("4 weeks", "4 wks", "four weeks"),
}

# why a home drug gets stopped; "{other}" is filled for interaction stops
STOP_REASONS: dict[str, tuple[str, ...]] = {
    "metformin": ("AKI", "IV contrast", "lactic acidosis risk"),
    "lisinopril": ("AKI", "hyperkalemia", "hypotension"),
    "losartan": ("AKI", "hypotension"),
    "amlodipine": ("hypotension", "leg edema"),
    "hydrochlorothiazide": ("hyponatremia", "AKI"),
    "furosemide": ("AKI", "volume depletion"),
    "metoprolol succinate": ("bradycardia", "hypotension"),
    "aspirin": ("GI bleeding",),
    "gabapentin": ("sedation", "dizziness and falls"),
    "tamsulosin": ("orthostatic hypotension",),
    "apixaban": ("GI bleeding",),
    "escitalopram": ("hyponatremia",),
    "acetaminophen": ("no longer needed",),
    "omeprazole": ("duplicate PPI therapy",),
}

PRIOR_DX: tuple[str, ...] = (
    "pneumonia in 2019", "DVT in 2015 (completed 6 mo of anticoagulation)", "UTI last year",
    "cholecystectomy 2012", "appendectomy as a child", "kidney stones 2017", "C. diff in 2020",
    "gout flare 2 years ago", "remote PE (2014)", "R hip fracture s/p ORIF 2018",
)
PAST_MEDS: tuple[tuple[str, str], ...] = (
    ("lisinopril", "cough"), ("simvastatin", "myalgias"), ("glipizide", "hypoglycemia"),
    ("paroxetine", "sexual side effects"), ("warfarin", "DVT treatment completed"),
    ("allopurinol", "no further gout flares"), ("prednisone", "taper completed"), ("naproxen", "dyspepsia"),
    ("ciprofloxacin", "course completed"), ("amiodarone", "thyroid abnormalities"),
)
FAMILY_HX: tuple[str, ...] = (
    "father with CAD", "mother with breast cancer", "brother with DM2", "sister with lupus",
    "mother with HTN", "noncontributory",
)
SOCIAL_HX: tuple[str, ...] = (
    "Lives with spouse, independent in ADLs.", "Lives alone; daughter nearby.",
    "Former smoker (30 pack-years), quit 2010.", "Denies EtOH or drug use.",
    "Retired teacher, walks daily.", "Drinks 1-2 beers/week, no tobacco.",
)
