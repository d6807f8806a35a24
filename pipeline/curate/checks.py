"""The per-record work that needs no other record: run in worker processes, one batch at a time.

Schema validation, PII scrubbing, the quality heuristics, the token length under the chat
template (one fast-tokenizer call per batch) and, for records that pass those, what the
stateful checks in pipeline/curate/process.py will need: the content digest, the eval items
the record contains and its MinHash. Each result is a small picklable summary, so the stateful
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
from pipeline.curate.dedup import MinHasher, content_digest
from pipeline.curate.lengths import TemplateLengths
from pipeline.curate.pii import DEFAULT_PATTERNS, Scrubber
from pipeline.curate.readers import Item
from pipeline.curate.text import Grams, normalise, word_hashes
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
    split: str | None = None                       # "train" or "val", should the record be kept
    leaks: list[tuple[str, float]] = field(default_factory=list)  # eval items contained, best first
    minhash: np.ndarray | None = None              # MinHash values (near-dup enabled)


def split_of(messages: list[dict], seed: int, val_fraction: float) -> str:
    """Deterministic split from content alone: a record never changes split when others change.

    Keyed on the whitespace- and case-normalised content, as since the first release, so a
    record keeps its split across versions of the filters too.
    """
    key = json.dumps([[m["role"], normalise(m["content"])] for m in messages], ensure_ascii=False)
    h = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big")
    return "val" if h / 2**64 < val_fraction else "train"


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
        for c, grams in ready:
            if c.quality or c.template or not (p.min_seq_len_tokens <= c.n_tokens <= p.max_seq_len_tokens):
                continue  # rejected before the checks that would use these
            c.digest = content_digest(c.record.messages)
            c.split = split_of(c.record.messages, p.seed, p.val_fraction)
            c.leaks = self.eval_index.leaks(grams.all(p.decontam.ngram))
            if self.minhasher is not None and not c.leaks:
                c.minhash = self.minhasher.values(grams.all(p.near_dup.ngram))
        return [c for c, _ in out]

    def _prepare(self, item: Item) -> tuple[Checked, Grams | None]:
        obj = None
        try:
            if item.reject is not None:
                raise v.Rejected(*item.reject)
            obj = v.parse_line(item.raw) if item.raw is not None else item.row
            record = v.to_record(obj, self.p.format, self.p.system, tabular=item.raw is None)
        except v.Rejected as rej:
            return Checked(rejected=(rej.reason, rej.detail), slice=v.slice_hint(obj)), None
        counts = None
        if self.scrubber is not None:
            counts = Counter()
            messages = [{"role": m["role"], "content": self.scrubber.scrub(m["content"], counts)}
                        for m in record.messages]
            if counts:
                record = record._replace(messages=messages)
        grams = Grams([word_hashes(m["content"]) for m in record.messages])
        verdict = quality.check(record.messages, grams, self.p.quality)
        return Checked(record=record, pii=counts or None, quality=verdict), grams


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
