"""Readers: line limits at the byte, BOMs anywhere, gzip, CSV rows that do not fit the header."""

from __future__ import annotations

import gzip

import pytest

from pipeline.curate.readers import Reader, match_files

LIMIT = 1024
BOM = b"\xef\xbb\xbf"
NO_NEWLINES = bytes(b for b in range(256) if b not in b"\r\n")  # every other byte value, invalid UTF-8 included


@pytest.mark.parametrize("data, expected", [
    (b"a" * LIMIT + b"\n", [LIMIT]),                   # exactly at the limit
    (b"a" * LIMIT + b"\r\n", [LIMIT]),                 # the line ending does not count
    (b"a" * LIMIT, [LIMIT]),                           # last line without a newline
    (BOM + b"a" * LIMIT + b"\n", [LIMIT]),             # nor does a BOM
    (b"a" * (LIMIT + 1), ["line_too_long"]),
    (b"a" * (LIMIT + 1) + b"\r\n", ["line_too_long"]),
    (b"a" * (5 * LIMIT) + b"\r\nb\n", ["line_too_long", 1]),
    (b"x\n\n   \n" + BOM + b"y\r\n" + BOM + b"\n", [1, 1]),  # blank lines skipped; a BOM-only line is blank
])
def test_line_limit_is_exact_and_blank_lines_are_no_records(tmp_path, data, expected):
    path = tmp_path / "f.jsonl"
    path.write_bytes(data)
    got = [i.reject[0] if i.reject else len(i.raw) for i in Reader(LIMIT).read([path])]
    assert got == expected


def test_too_long_lines_keep_size_hash_and_prefix(tmp_path):
    import hashlib

    body = NO_NEWLINES * 40
    path = tmp_path / "f.jsonl"
    path.write_bytes(BOM + body + b"\r\nnext\n")
    reader = Reader(LIMIT)
    first, second = reader.read([path])
    q = first.raw_fields()
    assert q["raw_bytes"] == len(body) and q["raw_sha256"] == hashlib.sha256(body).hexdigest()
    assert q["raw_prefix"] == body[:4096].decode("utf-8", errors="replace") and "raw" not in q
    assert (second.line, second.raw) == (2, b"next") and reader.bom_stripped == 1


def test_gzip_and_truncated_gzip(tmp_path):
    (tmp_path / "ok.jsonl.gz").write_bytes(gzip.compress(b"a\nb\n", mtime=0))
    packed = gzip.compress(b"a\n" + NO_NEWLINES * 4000, mtime=0)
    (tmp_path / "cut.jsonl.gz").write_bytes(packed[: len(packed) // 2])
    items = list(Reader(LIMIT).read(match_files(tmp_path, "*.jsonl.gz")))
    assert [(i.source, i.line, i.raw, i.reject and i.reject[0]) for i in items] == [
        ("cut.jsonl.gz", 1, b"a", None), ("cut.jsonl.gz", 2, None, "unreadable_file"),
        ("ok.jsonl.gz", 1, b"a", None), ("ok.jsonl.gz", 2, b"b", None)]


def test_csv_rows_keep_their_numbers_and_cells_stay_text(tmp_path):
    (tmp_path / "t.csv").write_text('prompt,completion\n"multi\nline",NA\nbad,row,extra\n42,\n', encoding="utf-8")
    items = list(Reader(LIMIT).read([tmp_path / "t.csv"]))
    assert [(i.line, i.reject and i.reject[0]) for i in items] == [(1, None), (2, "bad_row"), (3, None)]
    assert items[0].row == {"prompt": "multi\nline", "completion": "NA"}   # "NA" is text, not a missing value
    assert items[2].row == {"prompt": "42", "completion": ""}             # numbers stay strings
    assert items[1].raw_fields() == {"raw": '["bad", "row", "extra"]'}


def test_unsupported_and_missing_files_are_clear_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="unsupported file type"):
        match_files(tmp_path, "*")
    with pytest.raises(FileNotFoundError, match="no raw files match"):
        match_files(tmp_path, ["*.jsonl", "*.parquet"])
