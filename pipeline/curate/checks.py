"""The per-record work that needs no other record: run in worker processes, one batch at a time.

Schema validation, PII scrubbing, the quality heuristics, the token length under the chat
template (one fast-tokenizer call per batch) and, for records that pass those, what the
stateful checks in pipeline/curate/process.py will need: the content digest, the eval items
the record contains (by n-grams and by exact prompt) and its MinHash. The last two are computed
on the user and assistant turns only (text.SIGNATURE_ROLES). Each result is a small picklable summary, so the stateful
pass (dedup, decisions, writing) stays a cheap loop in the main process while the expensive
part uses every core.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from pipeline.curate import quality
from pipeline.curate import validate as v
from pipeline.curate.decontam import EvalIndex
from pipeline.curate.dedup import MinHasher, content_digest, shingles
from pipeline.curate.lengths import TemplateLengths
from pipeline.curate.pii import DEFAULT_PATTERNS, Scrubber
from pipeline.curate.readers import Item
from pipeline.curate.text import SIGNATURE_ROLES, Grams, normalise, sequence_key, word_hashes
from pipeline.params import CurateParams


@dataclass(slots=True)
class Checked:
    """What the stateless checks found for one item; `rejected` ends its way at once."""

    rejected: tuple[str, str] | None = None        # (reason, detail) from reading or validation
    # the slice of a record that validation rejected after reading it (say, no assistant turn), so
    # that the loss counts against its slice; None when the record never got that far
    slice: str | None = None
    record: v.Record | None = None                 # validated and scrubbed
    pii: Counter | None = None                     # replacements per type in this record
    quality: tuple[str, str] | None = None         # first failing heuristic
    n_tokens: int | None = None                    # length under the chat template
    template: tuple[str, str] | None = None        # bad_template
    digest: bytes | None = None                    # exact-dedup key (records that pass the length check)
    split: str | None = None                       # "train" or "val" by the hash draw, should the record be kept
    val_draw: float | None = None                  # that draw in [0, 1): val below val_fraction; ranks top-ups
    leaks: list[tuple[str, float]] = field(default_factory=list)  # eval items contained, best first
    prompt_leaks: list[str] = field(default_factory=list)          # eval items whose prompt is a user turn
    minhash: np.ndarray | None = None              # MinHash values (near-dup enabled)


def val_draw(messages: list[dict], seed: int) -> float:
    """A record's draw in [0, 1) from its content alone: a record never changes draw when others
    change. Keyed on the whitespace- and case-normalised content, as since the first release, so
    a record keeps its split across versions of the filters too."""
    key = json.dumps([[m["role"], normalise(m["content"])] for m in messages], ensure_ascii=False)
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big") / 2**64


def split_of(messages: list[dict], seed: int, val_fraction: float) -> str:
    """The split the draw alone gives (run.py then tops up slices left short of validation)."""
    return "val" if val_draw(messages, seed) < val_fraction else "train"


@dataclass(slots=True)
class Signature:
    """What the cross-record checks compare: the signature turns' n-grams and texts, and the keys
    of the record's user turns (each turn, and the opening turns together)."""

    grams: Grams
    turns: list[str]
    prompt_keys: set[int]


def signature(messages: list[dict], word_hs: list[np.ndarray]) -> Grams:
    """The word n-grams of the user and assistant turns (text.SIGNATURE_ROLES)."""
    return Grams([h for m, h in zip(messages, word_hs) if m["role"] in SIGNATURE_ROLES])


def prompt_keys(messages: list[dict], word_hs: list[np.ndarray]) -> set[int]:
    """text.sequence_key of every user turn and of the user turns up to each one: an eval prompt
    of one turn matches any user turn, a multi-turn one the conversation's opening user turns."""
    keys: set[int] = set()
    opening: list[np.ndarray] = []
    for m, h in zip(messages, word_hs):
        if m["role"] != "user":
            continue
        opening.append(h)
        for k in (sequence_key(h), sequence_key(np.concatenate(opening))):
            if k is not None:
                keys.add(k)
    return keys


def make_scrubber(params: CurateParams) -> Scrubber | None:
    """The configured scrubber (defaults, replaced by `patterns`, plus `extra_patterns`)."""
    if not params.pii.enabled:
        return None
    base = params.pii.patterns if params.pii.patterns is not None else DEFAULT_PATTERNS
    return Scrubber.from_patterns({**base, **params.pii.extra_patterns})


class RecordChecker:
    def __init__(self, params: CurateParams, tokenizer, eval_index: EvalIndex):
        self.p = params
        self.lengths = TemplateLengths(tokenizer)
        self.eval_index = eval_index
        self.scrubber = make_scrubber(params)
        self.minhasher = MinHasher(params.near_dup) if params.near_dup.enabled else None

    def check_batch(self, items: list[Item]) -> list[Checked]:
        out = [self._prepare(item) for item in items]
        ready = [(c, g) for c, g in out if c.record is not None]
        for (c, _), n in zip(ready, self.lengths.measure([c.record.messages for c, _ in ready])):
            if isinstance(n, v.Rejected):
                c.template = (n.reason, n.detail)
            else:
                c.n_tokens = n
        p = self.p
        for c, sig in ready:
            if c.quality or c.template or not (p.min_seq_len_tokens <= c.n_tokens <= p.max_seq_len_tokens):
                continue  # rejected before the checks that would use these
            c.digest = content_digest(c.record.messages)
            c.val_draw = val_draw(c.record.messages, p.seed)
            c.split = "val" if c.val_draw < p.val_fraction else "train"
            c.leaks = self.eval_index.leaks(sig.grams.all(p.decontam.ngram))
            c.prompt_leaks = self.eval_index.prompt_leaks(sig.prompt_keys)
            if self.minhasher is not None and not (c.leaks or c.prompt_leaks):
                c.minhash = self.minhasher.values(shingles(sig.grams, p.near_dup.ngram, sig.turns))
        return [c for c, _ in out]

    def _prepare(self, item: Item) -> tuple[Checked, Signature | None]:
        obj = None
        try:
            if item.reject is not None:
                raise v.Rejected(*item.reject)
            obj = v.parse_line(item.raw) if item.raw is not None else item.row
            record = v.to_record(obj, self.p.format, self.p.system, tabular=item.raw is None)
        except v.Rejected as rej:
            return Checked(rejected=(rej.reason, rej.detail), slice=v.slice_hint(obj)), None
        counts = None
        unscrubbed = record
        if self.scrubber is not None:
            counts = Counter()
            messages = [{"role": m["role"], "content": self.scrubber.scrub(m["content"], counts)}
                        for m in record.messages]
            if counts:
                record = record._replace(messages=messages)
        word_hs = [word_hashes(m["content"]) for m in record.messages]
        verdict = quality.check(record.messages, Grams(word_hs), self.p.quality)
        keys = prompt_keys(record.messages, word_hs)
        if record is not unscrubbed:  # a copied eval prompt with an identifier in it matches as it was copied
            keys |= prompt_keys(unscrubbed.messages, [word_hashes(m["content"]) if m["role"] == "user" else None
                                                      for m in unscrubbed.messages])
        turns = [m["content"] for m in record.messages if m["role"] in SIGNATURE_ROLES]
        sig = Signature(signature(record.messages, word_hs), turns, keys)
        return Checked(record=record, pii=counts or None, quality=verdict), sig


# ---------------------------------------------------------------- worker processes

_worker: RecordChecker | None = None


def init_worker(params: CurateParams, tokenizer, eval_index: EvalIndex) -> None:
    global _worker
    # One tokenizer thread per worker process: the processes already fill the cores, and the
    # Rust thread pool on top of them only adds contention.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker = RecordChecker(params, tokenizer, eval_index)


def check_in_worker(items: list[Item]) -> list[Checked]:
    assert _worker is not None, "init_worker did not run in this process"
    return _worker.check_batch(items)
