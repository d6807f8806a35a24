"""curate stage: raw chat JSONL -> validated, deduplicated, decontaminated train/val splits.

Reads: params `curate`; raw JSONL files; every eval suite's items (for decontamination); the
base tokenizer and chat template (for lengths under the template).
Writes: `data/curated/train.jsonl`, `val.jsonl`, `quarantine.jsonl` (every rejected line with
source file, line number, reason code and detail), `meta.json` (context length, digests) and
the report dict (counts per reason, per slice, per split).

Nothing is dropped silently: every input line ends up in exactly one of train, val or
quarantine, and the report's counts add up to the number of input lines.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Iterator

from pipeline.chat import ChatFormatError, encode_example, stop_token_ids
from pipeline.curate import validate as v
from pipeline.files import atomic_dir, atomic_write_json, digest_json, sha256_file
from pipeline.params import CurateParams

log = logging.getLogger(__name__)

EXAMPLES_PER_REASON = 1


def read_raw_lines(paths: list[Path]) -> Iterator[tuple[str, int, bytes]]:
    """(file name, 1-based line number, raw bytes) for every non-blank line, streamed."""
    for path in paths:
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                raw = raw.rstrip(b"\r\n")
                if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]  # a UTF-8 BOM on the first line is an encoding marker, not data
                if raw.strip():
                    yield path.name, lineno, raw


def eval_keys(suites_dir: Path) -> dict[str, str]:
    """Normalised user prompts and reference replies of every eval suite -> the item's id."""
    from pipeline.suites import load_all_suites

    keys: dict[str, str] = {}
    for suite in load_all_suites(suites_dir):
        for item in suite.items():
            ref = f"{suite.name}/{item['id']}"
            for m in item["messages"]:
                if m["role"] in ("user", "assistant"):
                    keys.setdefault(v.normalise(m["content"]), ref)
    return keys


def _split_of(record_key: str, seed: int, val_fraction: float) -> str:
    """Deterministic split from content alone: a record never changes split when others change."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:{record_key}".encode()).digest()[:8], "big")
    return "val" if h / 2**64 < val_fraction else "train"


def curate(params: CurateParams, raw_dir: str | Path, suites_dir: str | Path, tokenizer_dir: str | Path,
           out_dir: str | Path) -> dict:
    from transformers import AutoTokenizer

    raw_dir = Path(raw_dir)
    paths = sorted(raw_dir.glob(params.raw_glob))
    if not paths:
        raise FileNotFoundError(f"no raw files match {raw_dir}/{params.raw_glob}")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=False)
    stops = stop_token_ids(tokenizer)
    contaminants = eval_keys(Path(suites_dir))

    seen: dict[str, str] = {}  # content key -> "file:line" of the first occurrence
    reasons: Counter[str] = Counter()
    slices: dict[str, Counter[str]] = {"train": Counter(), "val": Counter()}
    examples: dict[str, dict] = {}
    leaked: Counter[str] = Counter()
    lengths: list[int] = []
    n_lines = 0
    with atomic_dir(out_dir) as tmp:
        files = {name: open(tmp / f"{name}.jsonl", "w", encoding="utf-8") for name in ("train", "val", "quarantine")}
        try:
            for source, lineno, raw in read_raw_lines(paths):
                n_lines += 1
                where = f"{source}:{lineno}"
                try:
                    record = v.parse_line(raw)
                    messages = record["messages"]
                    key = v.content_key(messages)
                    if key in seen:
                        raise v.Rejected(v.EXACT_DUPLICATE, f"same content as {seen[key]}")
                    seen[key] = where
                    hits = {contaminants[k] for m in messages if (k := v.normalise(m["content"])) in contaminants}
                    if hits:
                        leaked.update(hits)
                        raise v.Rejected(v.EVAL_CONTAMINATION, f"matches eval item(s) {', '.join(sorted(hits))}")
                    try:
                        ids, _labels, _ = encode_example(tokenizer, messages, stops)
                    except ChatFormatError as exc:
                        raise v.Rejected(v.BAD_TEMPLATE, str(exc)) from None
                    if len(ids) > params.max_seq_len_tokens:
                        raise v.Rejected(v.TOO_LONG, f"{len(ids)} tokens > max_seq_len_tokens {params.max_seq_len_tokens}")
                except v.Rejected as rej:
                    reasons[rej.reason] += 1
                    entry = {"source": source, "line": lineno, "reason": rej.reason, "detail": rej.detail,
                             "raw": raw.decode("utf-8", errors="replace")}
                    files["quarantine"].write(json.dumps(entry, ensure_ascii=False) + "\n")
                    examples.setdefault(rej.reason, {k: entry[k] for k in ("source", "line", "detail")})
                    continue
                split = _split_of(key, params.seed, params.val_fraction)
                out = {"id": record.get("id", where), "slice": record.get("slice", "default"),
                       "messages": [{"role": m["role"], "content": m["content"]} for m in messages]}
                files[split].write(json.dumps(out, ensure_ascii=False, sort_keys=True) + "\n")
                slices[split][out["slice"]] += 1
                lengths.append(len(ids))
        finally:
            for f in files.values():
                f.close()
        digests = {name: sha256_file(tmp / f"{name}.jsonl") for name in ("train", "val")}
        meta = {"max_seq_len_tokens": params.max_seq_len_tokens, "digest": digest_json(digests),
                "files": digests, "tokenizer_chat_template_sha256": hashlib.sha256(
                    (tokenizer.chat_template or "").encode()).hexdigest()}
        atomic_write_json(tmp / "meta.json", meta)

    kept = sum(sum(c.values()) for c in slices.values())
    rejected = sum(reasons.values())
    assert kept + rejected == n_lines, "every input line must be accounted for"
    lengths.sort()
    report = {
        "input_files": [p.name for p in paths],
        "input_lines": n_lines,
        "kept": kept,
        "rejected": rejected,
        "quarantine_fraction": rejected / n_lines if n_lines else 0.0,
        "reasons": {r: reasons.get(r, 0) for r in v.REASONS},
        "splits": {s: {"total": sum(c.values()), "slices": dict(sorted(c.items()))} for s, c in slices.items()},
        "leaked_eval_items": dict(sorted(leaked.items())),
        "length_tokens": {"min": lengths[0], "p50": lengths[len(lengths) // 2], "max": lengths[-1]} if lengths else {},
        "max_seq_len_tokens": params.max_seq_len_tokens,
        "examples": examples,
        "data_digest": meta["digest"],
    }
    if report["quarantine_fraction"] > params.max_quarantine_fraction:
        raise QuarantineTooLarge(report)
    return report


class QuarantineTooLarge(ValueError):
    def __init__(self, report: dict):
        self.report = report
        super().__init__(f"{report['rejected']} of {report['input_lines']} lines quarantined "
                         f"({report['quarantine_fraction']:.1%}) exceeds max_quarantine_fraction; "
                         f"reasons: { {k: n for k, n in report['reasons'].items() if n} }")
