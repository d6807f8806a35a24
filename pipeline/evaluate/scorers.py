"""Scorers, registered by name. Each maps (generated text, suite item) to per-example metrics
in [0, 1]; evaluation aggregates them per slice."""

from __future__ import annotations

import re
from typing import Callable

from pipeline.synth import summary as fmt

Scorer = Callable[[str, dict], dict[str, float]]
SCORERS: dict[str, Scorer] = {}


def register(name: str):
    def deco(fn: Scorer) -> Scorer:
        SCORERS[name] = fn
        return fn
    return deco


def _gold(item: dict) -> fmt.Summary:
    gold = fmt.parse(item["messages"][-1]["content"])
    if gold is None:
        raise ValueError(f"eval item {item.get('id')} has a reference reply that is not a valid summary")
    return gold


@register("field_exact_match")
def field_exact_match(text: str, item: dict) -> dict[str, float]:
    """Share of summary fields that match the reference exactly (after normalisation), each
    field's match, and whether the whole summary is right."""
    matches = fmt.compare(fmt.parse(text), _gold(item))
    out = {f"field_{k.replace('-', '_')}": float(v) for k, v in matches.items()}
    out["field_accuracy"] = sum(matches.values()) / len(matches)
    out["exact_match"] = float(all(matches.values()))
    return out


@register("format_validity")
def format_validity(text: str, item: dict) -> dict[str, float]:
    """1 when the output parses as a summary with every field in place."""
    return {"format_valid": float(fmt.parse(text) is not None)}


_DOSE_START = re.compile(r"\s(?=\d)|\s\(")  # where an item's name ends: a dose or a "(reaction)"
_REFUSALS = ("i'm sorry", "i am sorry", "i cannot", "i can't", "as an ai", "i'm unable", "i am unable")


def _list_items(text: str, label: str) -> list[str]:
    """Items of one list line, found leniently (anywhere, any case), so a summary that fails
    the strict format is still checked for what it claims."""
    items: list[str] = []
    for line in text.splitlines():
        head, sep, value = line.partition(":")
        if sep and head.strip().casefold() == label:
            items += [i.strip() for i in value.split(";") if i.strip()]
    return [i for i in items if i.casefold() not in ("none", "nkda", "no known drug allergies")]


def entity_name(item: str) -> str:
    """The drug or allergen an item names: the text before its dose or (reaction)."""
    return _DOSE_START.split(item.strip(), maxsplit=1)[0].strip().casefold()


def _spellings() -> dict[str, tuple[str, ...]]:
    """Canonical drug/allergen name -> every spelling a note may use for it (the summary task
    normalises "HCTZ" to "hydrochlorothiazide", so a canonical name absent from the note is not
    invented when one of its spellings is there)."""
    from pipeline.synth.vocab import ALLERGENS, DRUGS

    table = {name: (name, *drug.aliases) for name, drug in DRUGS.items()}
    for name, spellings in ALLERGENS.items():
        table[name] = tuple(dict.fromkeys((name, *table.get(name, ()), *spellings)))
    return {k: tuple(v.casefold() for v in vs) for k, vs in table.items()}


_SPELLINGS: dict[str, tuple[str, ...]] = {}


@register("hallucinated_entities")
def hallucinated_entities(text: str, item: dict) -> dict[str, float]:
    """The safety tail: 1 when the output lists a medication or allergen that the note never
    mentions under any spelling (an invented drug on a discharge list is worse than a missed
    field)."""
    if not _SPELLINGS:
        _SPELLINGS.update(_spellings())
    note = item["messages"][1]["content"].casefold()
    names = [entity_name(i) for label in ("medications", "allergies") for i in _list_items(text, label)]
    invented = [n for n in names if n and not any(s in note for s in _SPELLINGS.get(n, (n,)))]
    return {"hallucination": float(bool(invented))}


@register("empty_or_refusal")
def empty_or_refusal(text: str, item: dict) -> dict[str, float]:
    """1 when the model answered nothing, or declined instead of summarising."""
    t = text.strip().casefold()
    return {"empty_or_refusal": float(not t or t.startswith(_REFUSALS))}


def _prf(pred: frozenset[str], gold: frozenset[str]) -> tuple[float, float, float]:
    """Precision, recall, F1 of predicted items against gold items. An empty prediction is
    precise only when nothing was due; an empty gold list is recalled only by saying nothing."""
    tp, fp, fn = len(pred & gold), len(pred - gold), len(gold - pred)
    p = tp / (tp + fp) if tp + fp else float(fn == 0)
    r = tp / (tp + fn) if tp + fn else float(fp == 0)
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


@register("list_f1")
def list_f1(text: str, item: dict) -> dict[str, float]:
    """Item-level precision/recall/F1 of the three list fields (medications, allergies,
    warnings), pooled per example, plus F1 per field. Lists are read leniently, so a summary
    that breaks the format still gets credit for the items it lists (format_validity counts
    the breakage)."""
    gold = _gold(item)
    pooled_pred: set[str] = set()
    pooled_gold: set[str] = set()
    out = {}
    for name in sorted(fmt.LIST_FIELDS):
        pred = frozenset(n for n in (fmt.normalize(i) for i in _list_items(text, fmt.LABELS[name].casefold())) if n)
        want = frozenset(fmt.normalize(i) for i in getattr(gold, name))
        out[f"f1_{name}"] = _prf(pred, want)[2]
        pooled_pred |= {f"{name}:{i}" for i in pred}
        pooled_gold |= {f"{name}:{i}" for i in want}
    out["list_precision"], out["list_recall"], out["list_f1"] = _prf(frozenset(pooled_pred), frozenset(pooled_gold))
    return out
