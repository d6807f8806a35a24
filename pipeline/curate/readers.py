"""Streaming readers: raw files -> one item per record, with its source and line number.

JSONL (also gzip-compressed) is read as raw bytes, line by line with a length limit, so a
10 MB line costs at most `max_line_bytes` of memory: past the limit only a prefix, the byte
count and a sha256 are kept and the item is rejected as line_too_long. Parquet and CSV go
through the `datasets` library in streaming mode (batches, never the whole file); their
"line" is the row number (row index + 1). A UTF-8 byte-order mark at the start of any JSONL
line (concatenated exports carry one per part) is removed and counted as a repair.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from pipeline.curate.validate import BAD_ROW, LINE_TOO_LONG, UNREADABLE_FILE

log = logging.getLogger(__name__)

BOM = b"\xef\xbb\xbf"
RAW_PREFIX_BYTES = 4096            # what the quarantine keeps of an over-long line
_CHUNK_BYTES = 256 << 10           # read size while skipping the rest of an over-long line
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
TABULAR_SUFFIXES = (".parquet", ".csv")


@dataclass
class Item:
    """One record as read: raw bytes (JSONL) or a decoded row (tabular), or a reader-level rejection."""

    source: str
    line: int
    raw: bytes | None = None
    row: dict | None = None
    reject: tuple[str, str] | None = None       # (reason, detail) decided by the reader itself
    quarantine_raw: dict[str, Any] = field(default_factory=dict)  # what the quarantine keeps instead of `raw`

    def raw_fields(self) -> dict[str, Any]:
        if self.quarantine_raw:
            return self.quarantine_raw
        if self.raw is not None:
            return {"raw": self.raw.decode("utf-8", errors="replace")}
        return {"raw": json.dumps(self.row, ensure_ascii=False, default=str)}


def file_kind(path: Path) -> str:
    name = path.name.lower()
    for suffix in JSONL_SUFFIXES + TABULAR_SUFFIXES:
        if name.endswith(suffix):
            return suffix.split(".")[1]
    raise ValueError(f"{path}: unsupported file type; curate reads {', '.join(JSONL_SUFFIXES + TABULAR_SUFFIXES)}")


def match_files(raw_dir: Path, globs: str | list[str]) -> list[Path]:
    """Files under raw_dir matching any glob, sorted, each once; unsupported types are an error."""
    globs = [globs] if isinstance(globs, str) else globs
    paths = sorted({p for g in globs for p in raw_dir.glob(g) if p.is_file()})
    if not paths:
        raise FileNotFoundError(f"no raw files match {raw_dir}/{{{','.join(globs)}}}")
    for p in paths:
        file_kind(p)
    return paths


class Reader:
    """Yields every non-blank record of the given files, in order; counts what it repaired."""

    def __init__(self, max_line_bytes: int):
        self.max_line_bytes = max_line_bytes
        self.bom_stripped = 0
        self.blank_lines = 0

    def read(self, paths: list[Path]) -> Iterator[Item]:
        for path in paths:
            log.info("curate: reading %s", path.name)
            kind = file_kind(path)
            if kind == "jsonl":
                yield from self._jsonl(path)
            else:
                yield from self._tabular(path, kind)

    def _jsonl(self, path: Path) -> Iterator[Item]:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        lineno = 0  # the line being read (an error while reading it is reported on it)
        try:
            with opener(path, "rb") as f:
                # room for a BOM and a "\r\n" around a line of exactly max_line_bytes
                limit = self.max_line_bytes + len(BOM) + 2
                while True:
                    lineno += 1
                    if not (chunk := f.readline(limit)):
                        break
                    whole = chunk.endswith(b"\n") or len(chunk) < limit  # else: more of the line to come
                    raw = chunk.rstrip(b"\r\n").removeprefix(BOM)
                    if not whole or len(raw) > self.max_line_bytes:
                        yield self._too_long(path.name, lineno, chunk, f)
                        continue
                    if len(raw) < len(chunk.rstrip(b"\r\n")):
                        self.bom_stripped += 1
                    if not raw.strip():
                        self.blank_lines += 1
                        continue
                    yield Item(path.name, lineno, raw=raw)
        except (OSError, EOFError) as exc:  # a truncated or corrupt .gz, an I/O error
            yield Item(path.name, lineno, reject=(UNREADABLE_FILE, f"{type(exc).__name__}: {exc}; the rest of "
                                                      "the file was not read"), quarantine_raw={"raw": None})

    def _too_long(self, source: str, lineno: int, head: bytes, f) -> Item:
        """Consume the rest of an over-long line in bounded chunks; keep prefix, size and hash.

        Size and hash cover the line as every other line is taken: BOM and line ending excluded.
        """
        if head.startswith(BOM):
            head = head[len(BOM):]
            self.bom_stripped += 1
        digest, total, prefix, pending, chunk = hashlib.sha256(), 0, b"", b"", head
        while True:
            data = pending + chunk if pending else chunk
            last = not chunk or chunk.endswith(b"\n")
            # a "\r" may be the first half of a "\r\n" split across reads: hold it back
            kept = data.rstrip(b"\r\n") if last else data.rstrip(b"\r")
            pending = b"" if last else data[len(kept):]
            digest.update(kept)
            total += len(kept)
            if len(prefix) < RAW_PREFIX_BYTES:
                prefix += kept[:RAW_PREFIX_BYTES - len(prefix)]
            if last:
                break
            chunk = f.readline(_CHUNK_BYTES)
        return Item(source, lineno, reject=(LINE_TOO_LONG, f"{total} bytes > max_line_bytes {self.max_line_bytes}"),
                    quarantine_raw={"raw_prefix": prefix.decode("utf-8", errors="replace"), "raw_bytes": total,
                                    "raw_sha256": digest.hexdigest()})

    def _tabular(self, path: Path, kind: str) -> Iterator[Item]:
        from datasets import Features, Value, load_dataset

        kwargs: dict[str, Any] = {}
        bad_rows: list[list[str]] = []
        if kind == "csv":
            with open(path, newline="", encoding="utf-8", errors="replace") as f:
                header = next(csv.reader(f), [])
            sentinel = "\x00tailgate-bad-row:"

            def on_bad_line(fields: list[str]) -> list[str]:
                # Keep the row's place (row numbers stay right) and mark it for quarantine.
                bad_rows.append(fields)
                return [f"{sentinel}{len(bad_rows) - 1}"] + [""] * (len(header) - 1)

            # Every cell is text (no int/NaN guessing: "NA" or "42" is a reply like any other);
            # the python engine is the one that hands malformed rows to a callback.
            kwargs = dict(features=Features({c: Value("string") for c in header}), keep_default_na=False,
                          na_filter=False, engine="python", on_bad_lines=on_bad_line)
        row_no = 0
        try:
            ds = load_dataset(kind, data_files=str(path), split="train", streaming=True, **kwargs)
            for row in ds:
                row_no += 1
                first = next(iter(row.values()), None) if row else None
                if kind == "csv" and isinstance(first, str) and first.startswith(sentinel):
                    fields = bad_rows[int(first[len(sentinel):])]
                    yield Item(path.name, row_no, row=row, reject=(
                        BAD_ROW, f"{len(fields)} fields where the header has {len(header)}"),
                        quarantine_raw={"raw": json.dumps(fields, ensure_ascii=False)})
                    continue
                yield Item(path.name, row_no, row=row)
        except Exception as exc:  # noqa: BLE001 - any reader failure: keep it, explained, and go on
            yield Item(path.name, row_no + 1, reject=(UNREADABLE_FILE, f"{type(exc).__name__}: {str(exc)[:300]}; "
                                                      "the rest of the file was not read"),
                       quarantine_raw={"raw": None})
