"""The checks, in order, each with its reason code; the stateless part on worker processes.

validate -> PII scrub -> quality heuristics -> length under the chat template -> exact dup ->
decontamination (n-grams and exact prompts) -> near dup. The order gives each bad record its most specific reason: a
copy of an eval item with one word changed is eval_contamination, not near_duplicate; a
record that differs from another only in a scrubbed phone number is an exact duplicate.

Everything a record's verdict needs from itself alone runs in pipeline/curate/checks.py, in
batches, on `workers` processes (tokenization and the Python heuristics together are about
1 ms per 2 KB record, too much for one core at the benchmark's 100,000 records). This
process then takes the results in input order and applies what depends on the records
before: exact and near duplicates. The outcome is the same for any number of workers
(tests/stages/test_curate.py compares 1 and 2).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from array import array
from collections import Counter, deque
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Iterable, Iterator, NamedTuple

from pipeline.curate import validate as v
from pipeline.curate.checks import Checked, RecordChecker, check_in_worker, init_worker, make_scrubber
from pipeline.curate.decontam import EvalIndex
from pipeline.curate.dedup import ExactDedup, NearDedup
from pipeline.curate.limits import NO_SLICE
from pipeline.curate.readers import Item
from pipeline.params import CurateParams

log = logging.getLogger(__name__)

# A batch closes at this many records or raw bytes, whichever comes first: enough records for one
# tokenizer call and one round trip to a worker to pay off, few enough bytes that memory stays
# bounded with huge records (at most 2 batches per worker are in flight).
BATCH_RECORDS = 256
BATCH_BYTES = 8 << 20


class Outcome(NamedTuple):
    item: Item
    record: v.Record | None        # the (scrubbed) record when kept
    rejected: v.Rejected | None
    split: str | None              # "train" or "val" by the record's hash draw (run.py may move it to val)
    slice: str                     # the record's slice, NO_SLICE when rejected before it could be read
    draw: float | None = None      # that draw, for a kept record (pipeline/curate/split.py)


def batches(items: Iterable[Item]) -> Iterator[list[Item]]:
    batch: list[Item] = []
    size = 0
    for item in items:
        batch.append(item)
        size += len(item.raw) if item.raw is not None else 0
        if len(batch) >= BATCH_RECORDS or size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def worker_count(requested: int) -> int:
    if requested:
        return requested
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use, not the machine's
    except AttributeError:
        return os.cpu_count() or 1


def content_rejection(c: Checked, p: CurateParams) -> v.Rejected | None:
    """The first of quality, template and length (under the chat template) that a validated
    record fails, or None."""
    if c.quality:
        return v.Rejected(*c.quality)
    if c.template:
        return v.Rejected(*c.template)
    n = c.n_tokens
    if n < p.min_seq_len_tokens:
        return v.Rejected(v.TOO_SHORT, f"{n} tokens < min_seq_len_tokens {p.min_seq_len_tokens}")
    if n > p.max_seq_len_tokens:
        return v.Rejected(v.TOO_LONG, f"{n} tokens > max_seq_len_tokens {p.max_seq_len_tokens}")
    return None


def leaked_refs(c: Checked) -> list[str]:
    """Every eval item the record leaks, exact prompt matches first, each once."""
    return list(dict.fromkeys([*c.prompt_leaks, *(ref for ref, _ in c.leaks)]))


def contamination_rejection(c: Checked, p: CurateParams, index: EvalIndex) -> v.Rejected | None:
    """eval_contamination when the record contains eval items, else None; the detail names the
    items (suite/id), their slices and how each was found."""
    if not (c.leaks or c.prompt_leaks):
        return None
    how: dict[str, list[str]] = {ref: ["its prompt, exactly"] for ref in c.prompt_leaks}
    for ref, share in c.leaks:
        how.setdefault(ref, []).append(f"{share:.0%} of its {p.decontam.ngram}-grams")
    refs = leaked_refs(c)
    named = ", ".join(f"{index.describe(ref)}: {' and '.join(how[ref])}" for ref in refs[:3])
    more = f" and {len(refs) - 3} more" if len(refs) > 3 else ""
    return v.Rejected(v.EVAL_CONTAMINATION, f"contains eval item(s) {named}{more}")


class Curator:
    """Applies the checks in order and keeps what the report needs (counts, examples, lengths,
    clusters, leaks)."""

    def __init__(self, params: CurateParams, tokenizer, eval_index: EvalIndex):
        self.p = params
        self.tokenizer = tokenizer
        self.eval_index = eval_index
        self.workers = worker_count(params.workers)
        self.exact = ExactDedup()
        self.near = NearDedup(params.near_dup) if params.near_dup.enabled else None
        self.scrubber = make_scrubber(params)  # here too so that a bad pattern fails before any work
        self.reasons: Counter[str] = Counter()
        self.examples: dict[str, dict] = {}
        self.pii_counts: Counter[str] = Counter()
        self.pii_records = 0
        self.leaked: Counter[str] = Counter()          # eval item -> training records holding it
        self.leaked_by_prompt: set[str] = set()        # eval items found as a record's exact prompt
        self.leak_records: Counter[tuple[str, str]] = Counter()  # (suite, eval slice) -> records leaking it
        self.kept_refs: list[str] = []                 # "file:line" of each kept record, by kept index
        self.lengths_before = array("I")               # tokens of every record that reached tokenization
        self.lengths_after = array("I")                # tokens of every kept record

    def run(self, items: Iterable[Item]) -> Iterator[Outcome]:
        """Outcomes of all items, in input order."""
        for batch, checked in self._checked(batches(items)):
            for item, c in zip(batch, checked):
                yield self._decide(item, c)

    def _checked(self, batch_iter: Iterator[list[Item]]) -> Iterator[tuple[list[Item], list[Checked]]]:
        if self.workers == 1:
            checker = RecordChecker(self.p, self.tokenizer, self.eval_index)
            for batch in batch_iter:
                yield batch, checker.check_batch(batch)
            return
        # fork shares the loaded tokenizer and eval index with the workers instead of pickling them
        ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        with ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=init_worker,
                                 initargs=(self.p, self.tokenizer, self.eval_index)) as pool:
            pending: deque[tuple[list[Item], Future]] = deque()
            for batch in batch_iter:
                pending.append((batch, pool.submit(check_in_worker, batch)))
                if len(pending) >= 2 * self.workers:
                    done, job = pending.popleft()
                    yield done, job.result()
            while pending:
                done, job = pending.popleft()
                yield done, job.result()

    def _decide(self, item: Item, c: Checked) -> Outcome:
        slice_name = c.record.slice if c.record is not None else (c.slice or NO_SLICE)
        try:
            split = self._verdict(item, c)
        except v.Rejected as rej:
            self.reasons[rej.reason] += 1
            self.examples.setdefault(rej.reason, {"source": item.source, "line": item.line, "detail": rej.detail})
            return Outcome(item, None, rej, None, slice_name)
        return Outcome(item, c.record, None, split, slice_name, c.val_draw)

    def _verdict(self, item: Item, c: Checked) -> str:
        """The split of a kept record; raises Rejected with the first check it fails."""
        p = self.p
        if c.rejected:
            raise v.Rejected(*c.rejected)
        if c.pii:
            self.pii_counts.update(c.pii)
            self.pii_records += 1
        if c.n_tokens is not None:
            self.lengths_before.append(c.n_tokens)
        if (rej := content_rejection(c, p)) is not None:
            raise rej
        n = c.n_tokens
        if (first := self.exact.seen(c.digest)) is not None:
            raise v.Rejected(v.EXACT_DUPLICATE, f"same content as {self.kept_refs[first]}")
        if (rej := contamination_rejection(c, p, self.eval_index)) is not None:
            refs = leaked_refs(c)
            self.leaked.update(refs)
            self.leaked_by_prompt.update(c.prompt_leaks)
            self.leak_records.update({self.eval_index.where[ref] for ref in refs if ref in self.eval_index.where})
            raise rej
        sketch = None
        if self.near is not None:
            sketch = self.near.sketch(c.minhash)
            if (match := self.near.match(sketch)) is not None:
                rep, jaccard = match
                self.near.record_duplicate(rep, f"{item.source}:{item.line}", jaccard)
                raise v.Rejected(v.NEAR_DUPLICATE, f"estimated Jaccard {jaccard:.3f} (word {p.near_dup.ngram}-grams) "
                                 f"with kept record {self.kept_refs[rep]}")
        index = len(self.kept_refs)
        self.kept_refs.append(f"{item.source}:{item.line}")
        self.exact.add(c.digest, index)
        if sketch is not None:
            self.near.add(index, sketch)
        self.lengths_after.append(n)
        return c.split

    def replay(self, checked: Iterable[tuple[Item, Checked]]) -> Iterator[Outcome]:
        """Outcomes of items whose stateless checks ran elsewhere (the cluster tasks of
        pipeline/curate/cluster.py), given in input order: the same decisions as `run`."""
        for item, c in checked:
            yield self._decide(item, c)

    def leaks_per_eval_slice(self) -> dict:
        """suite -> eval slice -> items, how many leaked (and how many of those by exact prompt),
        training records quarantined for them, and items no check can detect."""
        out: dict[str, dict] = {}
        for suite, s in self.eval_index.stats["per_suite"].items():
            out[suite] = {name: {"items": sl["items"], "leaked_items": 0, "leaked_by_prompt": 0,
                                 "training_records": self.leak_records.get((suite, name), 0),
                                 "undetectable_items": sl["undetectable_items"]}
                          for name, sl in s["slices"].items()}
        for ref in self.leaked:
            if ref in self.eval_index.where:
                suite, name = self.eval_index.where[ref]
                out[suite][name]["leaked_items"] += 1
                out[suite][name]["leaked_by_prompt"] += ref in self.leaked_by_prompt
        return out

    def near_dup_summary(self) -> dict:
        return self.near.summary(self.kept_refs) if self.near is not None else {"enabled": False}

    def pii_summary(self) -> dict:
        kinds = self.scrubber.kinds if self.scrubber is not None else ()
        return {"enabled": self.scrubber is not None, "records_changed": self.pii_records,
                "replacements": {k: self.pii_counts.get(k, 0) for k in kinds}}
