"""Scorers, registered by name. Each maps (generated text, suite item) to per-example metrics
in [0, 1]; evaluation aggregates them per slice."""

from __future__ import annotations

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
