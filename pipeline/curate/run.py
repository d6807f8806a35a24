"""Run curation end to end: read raw files, check every record, write the splits and the report.

curate() wires a Reader, a Curator (pipeline/curate/process.py) and the eval index together;
write_curated() writes train/val/quarantine/meta atomically and builds the report, and is shared
with the cluster path (pipeline/curate/cluster.py), which feeds it the outcomes of its shards.
"""


from __future__ import annotations

import hashlib
import json
import logging
from array import array
from collections import Counter
from pathlib import Path
from typing import Iterable

from tqdm import tqdm

from pipeline.curate import validate as v
from pipeline.curate.decontam import EvalIndex
from pipeline.curate.limits import SliceTally, enforce, slice_loss
from pipeline.curate.process import Curator, Outcome
from pipeline.curate.readers import Reader, match_files
from pipeline.curate.report import length_histogram, length_stats, stage_counts
from pipeline.curate.split import ValTopUp
from pipeline.files import atomic_dir, atomic_write_json, digest_json, sha256_file
from pipeline.params import CurateParams

log = logging.getLogger(__name__)


def _jsonl(obj: dict, **kw) -> str:
    line = json.dumps(obj, ensure_ascii=False, **kw)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate in a raw field: escape rather than fail the write
        line = json.dumps(obj, ensure_ascii=True, **kw)
    return line + "\n"


def curate(params: CurateParams, raw_dir: str | Path, suites_dir: str | Path, tokenizer_dir: str | Path,
           out_dir: str | Path) -> dict:
    from transformers import AutoTokenizer

    paths = match_files(Path(raw_dir), params.raw_glob)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=False)
    curator = Curator(params, tokenizer, EvalIndex.from_suites(params.decontam, Path(suites_dir)))
    reader = Reader(params.max_line_bytes)
    return write_curated(params, curator, curator.run(reader.read(paths)), [p.name for p in paths], reader,
                         tokenizer, out_dir)


def write_curated(params: CurateParams, curator: Curator, outcomes: Iterable[Outcome], input_files: list[str],
                  reader, tokenizer, out_dir: str | Path) -> dict:
    """Write the outcomes (every record read, in input order) as train/val/quarantine/meta under
    out_dir, atomically, and return the report. `reader` is read for its `blank_lines` and
    `bom_stripped` counts once the outcomes are exhausted (pipeline/curate/cluster.py passes the
    sums over its shards).

    Kept rows go to a scratch file first: which ones go to val is known only once every record
    is in (pipeline/curate/split.py tops up the slices the hash draw left short), and a second
    pass then writes train and val, each in input order."""
    slices: dict[str, Counter[str]] = {"train": Counter(), "val": Counter()}
    tally = SliceTally()
    topup = ValTopUp(params)
    n_records = 0
    drawn = bytearray()  # per kept record: 1 when the draw put it in val
    kept_slices = array("I")  # per kept record: its slice, as an index into slice_names
    slice_ids: dict[str, int] = {}
    with atomic_dir(out_dir) as tmp:
        scratch = tmp / "kept.part"
        with open(tmp / "quarantine.jsonl", "w", encoding="utf-8") as quarantine, \
                open(scratch, "w", encoding="utf-8") as kept:
            progress = tqdm(total=None, unit="rec", desc="curate", disable=None)
            for out in outcomes:
                n_records += 1
                if out.rejected is not None:
                    quarantine.write(_quarantine_line(out))
                    tally.add(out.slice, None, out.rejected.reason)
                else:
                    kept.write(_kept_line(out))
                    topup.add(len(drawn), out.record.slice, out.split, out.draw)
                    drawn.append(out.split == "val")
                    kept_slices.append(slice_ids.setdefault(out.record.slice, len(slice_ids)))
                progress.update()
            progress.close()
        promoted = topup.promotions()
        to_val = {i for idx in promoted.values() for i in idx}
        slice_names = sorted(slice_ids, key=slice_ids.__getitem__)
        with open(scratch, encoding="utf-8") as kept, open(tmp / "train.jsonl", "w", encoding="utf-8") as train, \
                open(tmp / "val.jsonl", "w", encoding="utf-8") as val:
            for i, line in enumerate(kept):
                split = "val" if drawn[i] or i in to_val else "train"
                (val if split == "val" else train).write(line)
                name = slice_names[kept_slices[i]]
                slices[split][name] += 1
                tally.add(name, split, None)
        scratch.unlink()
        digests = {name: sha256_file(tmp / f"{name}.jsonl") for name in ("train", "val")}
        meta = {"max_seq_len_tokens": params.max_seq_len_tokens, "digest": digest_json(digests),
                "files": digests, "tokenizer_chat_template_sha256": hashlib.sha256(
                    (tokenizer.chat_template or "").encode()).hexdigest()}
        atomic_write_json(tmp / "meta.json", meta)

    kept = sum(sum(c.values()) for c in slices.values())
    rejected = sum(curator.reasons.values())
    assert kept + rejected == n_records, "every input record must be accounted for"
    per_slice = tally.table(params)
    assert sum(s["input"] for s in per_slice.values()) == n_records, "every record counts in one slice"
    report = {
        "input_files": input_files,
        "input_lines": n_records,
        "blank_lines": reader.blank_lines,
        "kept": kept,
        "rejected": rejected,
        "quarantine_fraction": rejected / n_records if n_records else 0.0,
        "max_quarantine_fraction": params.max_quarantine_fraction,
        "reasons": {r: curator.reasons.get(r, 0) for r in v.REASONS},
        "stages": stage_counts(n_records, curator.reasons),
        "repairs": {"bom_stripped": reader.bom_stripped},
        "pii": curator.pii_summary(),
        "near_dup": curator.near_dup_summary(),
        "decontam": curator.eval_index.stats,
        "leaked_eval_items": dict(sorted(curator.leaked.items())),
        "leaks_per_eval_slice": curator.leaks_per_eval_slice(),
        "splits": {s: {"total": sum(c.values()), "slices": dict(sorted(c.items()))} for s, c in slices.items()},
        "validation": topup.summary(promoted),
        "slices": per_slice,
        "slice_loss": slice_loss(per_slice, params),
        "length_tokens": length_stats(curator.lengths_after),
        "length_histogram": length_histogram(curator.lengths_before, curator.lengths_after, params.max_seq_len_tokens),
        "min_seq_len_tokens": params.min_seq_len_tokens,
        "max_seq_len_tokens": params.max_seq_len_tokens,
        "examples": {r: curator.examples[r] for r in v.REASONS if r in curator.examples},
        "data_digest": meta["digest"],
    }
    enforce(report, params)  # raises CurationFailed, with the complete report for the stage to write
    return report


def _quarantine_line(out: Outcome) -> str:
    item = out.item
    return _jsonl({"source": item.source, "line": item.line, "reason": out.rejected.reason,
                   "detail": out.rejected.detail, **item.raw_fields()})


def _kept_line(out: Outcome) -> str:
    item, rec = out.item, out.record
    return _jsonl({"id": rec.id if rec.id is not None else f"{item.source}:{item.line}", "slice": rec.slice,
                   "messages": rec.messages}, sort_keys=True)
