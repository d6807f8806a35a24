"""Decontamination: training records that contain an eval item are removed.

Word n-grams (13 by default, lm-eval's size; case-folded, punctuation dropped) of every eval
item's prompts and targets, kept as 64-bit hashes, never as text.

Two rules make the overlap mean "this record contains that item" rather than "this record
was written from the same template" (measured on the default data, where plain any-13-gram
overlap flags 1,000 of 1,000 clean records, and ignoring only the shared instruction still
flags 941):

1. Boilerplate is ignored: an n-gram found in more than `max_eval_item_share` of a suite's
   items, and in more than one (the instruction line, section headers, template phrases,
   filler) identifies no item of that suite. The share is taken per suite, not over all
   suites pooled, where a big suite dilutes a small one's template: filler shared by the 10
   long-input items of a new 40-item suite is in 25% of that suite's items but in only 5% of
   the 200 pooled with the default suite's 160, so pooled it looked item-specific and every
   training record padded with the same filler "contained" those items. An n-gram that is
   boilerplate in one suite still identifies the items of another suite, where it is rare.
2. A record leaks item X when it contains at least `min_overlap_fraction` of X's remaining
   n-grams. Verbatim copies contain all of them (1.0); the clean default records at most 0.20.

3. Exact prompts, whatever their length (`exact_prompt`): a record leaks item X when one of its
   user turns, or its opening user turns together, equal X's prompt (its user turns) up to case,
   whitespace and punctuation. A prompt of a few words (a label task's ticket, a short
   question) has no item-specific 13-gram at all: in one such task 138 of 200 items had none,
   and 81 of them sat verbatim in the training data. Prompts shared by more than
   `max_eval_item_share` of a suite's items (and by more than one) are boilerplate here too.
   Only equality counts: a short prompt *inside* a longer user turn is ordinary language.

Both sides use the user and assistant turns only (text.SIGNATURE_ROLES): a system turn is the
shared instruction, not the item, and a training record's system turn is not searched.

What this does not catch: a record that reuses only an eval *target*. The default targets are
short, templated five-line summaries, and clean records written for other notes share whole
targets with eval items (measured: overlap 1.0 of the target's n-grams for some clean
records), so a target-only match is not evidence of leakage here.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from pipeline.curate.text import SIGNATURE_ROLES, Grams, sequence_key, word_hashes
from pipeline.params import CurateDecontamParams

log = logging.getLogger(__name__)

_SCREEN_SLOTS = 1 << 24          # 16 MB of bools; with 30k eval n-grams 0.2% of lookups pass by chance
_SCREEN_MASK = np.uint64(_SCREEN_SLOTS - 1)
ONE_SUITE = "(all)"             # the suite name when the caller gives none
DEFAULT_SLICE = "default"       # an item's slice when the caller gives none


class EvalIndex:
    def __init__(self, p: CurateDecontamParams, items: list[tuple[str, list[str]]],
                 suites: Sequence[str] | None = None, prompts: Sequence[Sequence[str]] | None = None,
                 slices: Sequence[str] | None = None):
        """items: (reference "suite/id", [prompt and target texts]) of every eval item; suites: the
        suite of each item, which boilerplate is judged within (None: all one suite); prompts: the
        user turns of each item's prompt, matched exactly when p.exact_prompt (None: no exact
        matching); slices: each item's slice, for the per-slice counts (None: all one slice)."""
        self.p = p
        self.refs = [ref for ref, _ in items]
        grams = [_distinct_per_message([word_hashes(t) for t in texts], p.ngram) for _, texts in items]
        suite_of = list(suites) if suites is not None else [ONE_SUITE] * len(items)
        slice_of = list(slices) if slices is not None else [DEFAULT_SLICE] * len(items)
        assert len(suite_of) == len(items) == len(slice_of), "one suite and one slice per item"
        self.where = {ref: (suite_of[i], slice_of[i]) for i, ref in enumerate(self.refs)}
        members: dict[str, list[int]] = {}
        for i, name in enumerate(suite_of):
            members.setdefault(name, []).append(i)
        # Each item's grams are distinct, so an n-gram's count within a suite is its item count there.
        # At least two items: what one item alone holds identifies it, however small its suite (a
        # suite under 1 / max_eval_item_share items, 20 by default, would have nothing left to match).
        limit = {name: max(p.max_eval_item_share * len(idx), 1.0) for name, idx in members.items()}
        boiler = {name: _frequent([grams[i] for i in idx], limit[name]) for name, idx in members.items()}
        uniq = np.unique(_concat(grams))
        self.stats = {"ngram": p.ngram, "eval_items": len(items), "eval_ngrams": int(len(uniq)),
                      "boilerplate_ngrams": int(len(np.unique(_concat(list(boiler.values()))))),
                      "max_eval_item_share": p.max_eval_item_share, "min_overlap_fraction": p.min_overlap_fraction}
        # n-gram hash -> the item holding it (a tuple when several do), and a presence table over
        # the hashes' low bits that screens a record's n-grams in one vectorised lookup, so only
        # the few that may be eval n-grams become Python ints for the exact dict lookup (turning
        # all ~350 of a record's 64-bit hashes into Python ints alone cost ~17 us).
        self.owner: dict[int, int | tuple[int, ...]] = {}
        self.screen = np.zeros(_SCREEN_SLOTS, dtype=bool)
        sizes = np.zeros(len(items), dtype=np.int64)
        boiler_sets = {name: set(b.tolist()) for name, b in boiler.items()}
        for i, g in enumerate(grams):
            ignored = boiler_sets[suite_of[i]]
            kept = [h for h in g.tolist() if h not in ignored]
            sizes[i] = len(kept)
            self.screen[np.asarray(kept, dtype=np.uint64) & _SCREEN_MASK] = True
            for h in kept:
                prev = self.owner.get(h)
                self.owner[h] = i if prev is None else (*((prev,) if isinstance(prev, int) else prev), i)
        self.sizes = sizes
        self.prompt_owner, keyed, boiler_prompts = self._prompt_keys(prompts, suite_of, members, limit)
        ngram_blind = sizes == 0
        blind = ngram_blind & ~keyed  # neither an item-specific n-gram nor an exact prompt to match
        self.stats["exact_prompt"] = {"enabled": prompts is not None and p.exact_prompt,
                                      "prompts": len(self.prompt_owner),
                                      "boilerplate_prompts": sum(boiler_prompts.values())}
        self.stats["items_without_item_ngrams"] = int(ngram_blind.sum())
        self.stats["undetectable_items"] = int(blind.sum())
        self.stats["per_suite"] = {}
        for name, idx in sorted(members.items()):
            per_slice: dict[str, dict] = {}
            for i in idx:
                s = per_slice.setdefault(slice_of[i], {"items": 0, "undetectable_items": 0})
                s["items"] += 1
                s["undetectable_items"] += int(blind[i])
            self.stats["per_suite"][name] = {
                "items": len(idx), "boilerplate_ngrams": int(len(boiler[name])),
                "boilerplate_prompts": boiler_prompts.get(name, 0),
                "items_without_item_ngrams": int(ngram_blind[idx].sum()),
                "undetectable_items": int(blind[idx].sum()), "slices": dict(sorted(per_slice.items()))}
        for name, s in self.stats["per_suite"].items():
            if s["undetectable_items"]:
                log.warning("decontam: %d of %d eval items of suite %s have neither an item-specific %d-gram nor "
                            "an item-specific prompt (curate.decontam.exact_prompt); a leak of those cannot be "
                            "detected", s["undetectable_items"], s["items"], name, p.ngram)

    def _prompt_keys(self, prompts, suite_of, members, limit):
        """(normalised prompt key -> items, which items have a key, boilerplate prompts per suite)."""
        keyed = np.zeros(len(self.refs), dtype=bool)
        if prompts is None or not self.p.exact_prompt:
            return {}, keyed, {}
        assert len(prompts) == len(self.refs), "one prompt per item"
        keys = [sequence_key(np.concatenate([word_hashes(t) for t in turns])) if turns else None for turns in prompts]
        boiler: dict[str, int] = {}
        owner: dict[int, tuple[int, ...]] = {}
        for name, idx in members.items():
            held: dict[int, list[int]] = {}
            for i in idx:
                if keys[i] is not None:
                    held.setdefault(keys[i], []).append(i)
            for key, holders in held.items():
                if len(holders) > limit[name]:  # the same prompt for many items: it names none of them
                    boiler[name] = boiler.get(name, 0) + 1
                    continue
                owner[key] = (*owner.get(key, ()), *holders)
                keyed[holders] = True
        return owner, keyed, boiler

    @classmethod
    def from_suites(cls, p: CurateDecontamParams, suites_dir: Path) -> "EvalIndex":
        from pipeline.suites import load_all_suites

        if not Path(suites_dir).is_dir():  # a mistyped path must not quietly switch decontamination off
            raise FileNotFoundError(f"eval suites directory {suites_dir} not found; decontamination reads every suite")
        items, suites, prompts, slices = [], [], [], []
        for suite in load_all_suites(suites_dir):
            for item in suite.items():
                # the prompt's own turns (a multi-turn prompt's earlier replies too; the system turn
                # is shared instruction, not the item) and the reference answer
                texts = [m["content"] for m in item.messages if m["role"] in SIGNATURE_ROLES]
                items.append((f"{suite.name}/{item.id}", [*texts, item.reference]))
                suites.append(suite.name)
                prompts.append([m["content"] for m in item.messages if m["role"] == "user"])
                slices.append(item.slice)
        return cls(p, items, suites, prompts, slices)

    def prompt_leaks(self, keys: Iterable[int]) -> list[str]:
        """Eval items whose prompt has one of these keys (text.sequence_key of a record's user
        turns), sorted."""
        found = {i for k in keys for i in self.prompt_owner.get(k, ())}
        return sorted(self.refs[i] for i in found)

    def describe(self, ref: str) -> str:
        """"suite/id (slice s)": what a quarantine detail names."""
        return f"{ref} (slice {self.where[ref][1]})" if ref in self.where else ref

    def leaks(self, record_grams: np.ndarray) -> list[tuple[str, float]]:
        """Eval items the record contains, as (reference, share of the item's n-grams found), best
        first. `record_grams` may repeat an n-gram; each counts once."""
        maybe = record_grams[self.screen[record_grams & _SCREEN_MASK]]
        if not len(maybe):
            return []
        counts: Counter[int] = Counter()
        for h in set(maybe.tolist()):
            o = self.owner.get(h)
            if o is not None:
                counts.update((o,) if isinstance(o, int) else o)
        found = [(self.refs[i], n / self.sizes[i]) for i, n in counts.items()
                 if n / self.sizes[i] >= self.p.min_overlap_fraction]
        return sorted(found, key=lambda x: (-x[1], x[0]))


def _distinct_per_message(word_hs: list[np.ndarray], n: int) -> np.ndarray:
    """An eval item's distinct n-grams, none crossing from its prompt into its target."""
    parts = [g for g in Grams(word_hs).per_message(n) if len(g)]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.uint64)


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.uint64)


def _frequent(grams: list[np.ndarray], limit: float) -> np.ndarray:
    """The n-grams held by more than `limit` of the given items (each item's grams distinct)."""
    uniq, df = np.unique(_concat(grams), return_counts=True)
    return uniq[df > limit]
