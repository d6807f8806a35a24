"""Scorers: each one can tell a right answer from a wrong one."""

from __future__ import annotations

import json

import pytest

from pipeline.evaluate.scorers import SCORERS, entity_name
from tests.conftest import REPO

ITEMS = [json.loads(line) for line in (REPO / "eval_suites/discharge/data/test.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("item", ITEMS[::20])
def test_the_reference_scores_perfectly(item):
    ref = item["messages"][-1]["content"]
    assert SCORERS["field_exact_match"](ref, item)["field_accuracy"] == 1.0
    assert SCORERS["format_validity"](ref, item)["format_valid"] == 1.0
    assert SCORERS["hallucinated_entities"](ref, item)["hallucination"] == 0.0
    assert SCORERS["empty_or_refusal"](ref, item)["empty_or_refusal"] == 0.0
    assert SCORERS["list_f1"](ref, item)["list_f1"] == 1.0


def test_an_invented_drug_is_a_hallucination_even_in_a_broken_format():
    item = ITEMS[0]
    ref = item["messages"][-1]["content"]
    lines = ref.splitlines()
    lines[1] = lines[1] + "; zolpiclonazide 5 mg daily"
    assert SCORERS["hallucinated_entities"]("\n".join(lines), item)["hallucination"] == 1.0
    broken = "Medications: zolpiclonazide 5 mg daily\nwhatever"
    assert SCORERS["hallucinated_entities"](broken, item)["hallucination"] == 1.0
    wrong_field = SCORERS["field_exact_match"]("\n".join(lines), item)
    assert wrong_field["field_medications"] == 0.0 and wrong_field["field_diagnosis"] == 1.0


def test_empty_and_refusal():
    assert SCORERS["empty_or_refusal"]("   ", ITEMS[0])["empty_or_refusal"] == 1.0
    assert SCORERS["empty_or_refusal"]("I'm sorry, I cannot help with that.", ITEMS[0])["empty_or_refusal"] == 1.0
    assert SCORERS["format_validity"]("", ITEMS[0])["format_valid"] == 0.0


def test_entity_name_strips_dose_and_reaction():
    assert entity_name("metoprolol succinate 25 mg daily") == "metoprolol succinate"
    assert entity_name("Penicillin (hives)") == "penicillin"


def _with_meds(item: dict, meds: list[str]) -> str:
    lines = item["messages"][-1]["content"].splitlines()
    lines[1] = "Medications: " + ("; ".join(meds) if meds else "none")
    return "\n".join(lines)


def test_list_f1_counts_items_not_lines():
    from pipeline.synth import summary as fmt

    item = next(it for it in ITEMS if len(fmt.parse(it["messages"][-1]["content"]).medications) >= 2)
    gold = fmt.parse(item["messages"][-1]["content"])
    meds = list(gold.medications)
    others = sum(len(getattr(gold, f)) for f in ("allergies", "warnings"))
    # one medication missing: precision stays 1, recall drops by one item of the pooled lists
    missing = SCORERS["list_f1"](_with_meds(item, meds[1:]), item)
    total = len(meds) + others
    assert missing["list_precision"] == 1.0
    assert missing["list_recall"] == pytest.approx((total - 1) / total)
    assert missing["f1_medications"] == pytest.approx(2 * (len(meds) - 1) / (2 * len(meds) - 1))
    # one invented medication: recall stays 1, precision drops
    extra = SCORERS["list_f1"](_with_meds(item, meds + ["zolpiclonazide 5 mg daily"]), item)
    assert extra["list_recall"] == 1.0 and extra["list_precision"] == pytest.approx(total / (total + 1))
    # case and spacing do not matter; a repeated item is one item
    noisy = SCORERS["list_f1"](_with_meds(item, [m.upper() + "  " for m in meds] + [meds[0]]), item)
    assert noisy["list_f1"] == 1.0
    # saying "none" when medications were due recalls nothing of that field
    assert SCORERS["list_f1"](_with_meds(item, []), item)["f1_medications"] == 0.0
