"""The discharge suite's own scorers: the five-line summary's fields, its lists, and the
safety tail (a drug or allergen the note never mentions).

Named in suite.yaml as `scorers:<function>`. Each takes (generated text, EvalItem) and returns
per-item numbers in [0, 1]; `@scorer` declares each output once, as a Metric: per-item
correctness (what quantization flips are counted on), lower-is-better, or neither.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

from pipeline.evaluate.scoring import Metric, load_module, scorer

fmt = load_module(Path(__file__).with_name("summary_format.py"))  # this suite's answer format
SPELLINGS = Path(__file__).with_name("data") / "spellings.json"


def _gold(item) -> fmt.Summary:
    gold = fmt.parse(item.reference)
    if gold is None:
        raise ValueError(f"eval item {item.id} has a reference reply that is not a valid summary")
    return gold


@scorer(Metric("field_accuracy"), Metric("exact_match"), *(Metric(f"field_{f}", correctness=True) for f in fmt.FIELDS))
def field_exact_match(text: str, item) -> dict[str, float]:
    """Share of summary fields that match the reference exactly (after normalisation), each
    field's match (the correctness values), and whether the whole summary is right."""
    matches = fmt.compare(fmt.parse(text), _gold(item))
    out = {f"field_{k}": float(v) for k, v in matches.items()}
    out["field_accuracy"] = sum(matches.values()) / len(matches)
    out["exact_match"] = float(all(matches.values()))
    return out


@scorer(Metric("format_valid"))  # not a correctness value: flips are counted per field
def format_validity(text: str, item) -> dict[str, float]:
    """1 when the output parses as a summary with every field in place."""
    return {"format_valid": float(fmt.parse(text) is not None)}


_DOSE_START = re.compile(r"\s(?=\d)|\s\(")  # where an item's name ends: a dose or a "(reaction)"


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


@lru_cache(maxsize=1)
def _spellings() -> dict[str, tuple[str, ...]]:
    """Canonical name -> every spelling a note may use (written by the data generator)."""
    return {k: tuple(v) for k, v in json.loads(SPELLINGS.read_text(encoding="utf-8")).items()}


@scorer(Metric("hallucination", lower_is_better=True))
def hallucinated_entities(text: str, item) -> dict[str, float]:
    """The safety tail: 1 when the output lists a medication or allergen that the note never
    mentions under any spelling (an invented drug on a discharge list is worse than a missed
    field)."""
    spellings = _spellings()
    note = item.prompt.casefold()
    names = [entity_name(i) for label in ("medications", "allergies") for i in _list_items(text, label)]
    invented = [n for n in names if n and not any(s in note for s in spellings.get(n, (n,)))]
    return {"hallucination": float(bool(invented))}


def _prf(pred: frozenset[str], gold: frozenset[str]) -> tuple[float, float, float]:
    """Precision, recall, F1 of predicted items against gold items. An empty prediction is
    precise only when nothing was due; an empty gold list is recalled only by saying nothing."""
    tp, fp, fn = len(pred & gold), len(pred - gold), len(gold - pred)
    p = tp / (tp + fp) if tp + fp else float(fn == 0)
    r = tp / (tp + fn) if tp + fn else float(fp == 0)
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


@scorer(*(Metric(m) for m in ("list_precision", "list_recall", "list_f1", *(f"f1_{f}" for f in sorted(fmt.LIST_FIELDS)))))
def list_f1(text: str, item) -> dict[str, float]:
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
