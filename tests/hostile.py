"""tests/data/hostile, completed with the files its EXPECTED.json lists as generated at test time."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path

from tests.conftest import REPO

HOSTILE = REPO / "tests/data/hostile"
RAW = REPO / "data/raw/discharge_notes.jsonl"


def expected() -> dict:
    return json.loads((HOSTILE / "EXPECTED.json").read_text())


def expected_outcomes() -> dict[tuple[str, int], str]:
    """(file, line) -> "kept" or the one quarantine reason that line must get."""
    spec = expected()
    return {(name, e["line"]): e["expect"] for group in ("files", "generated")
            for name, entries in spec[group].items() for e in entries}


def make_hostile_dir(raw: Path) -> Path:
    """Copy the committed hostile files into `raw` and add the generated ones: a 10 MB line
    between two clean records, and a gzip file cut in half mid-record."""
    raw.mkdir(parents=True, exist_ok=True)
    for f in HOSTILE.iterdir():
        if f.name != "EXPECTED.json":
            shutil.copy(f, raw / f.name)
    planted = {d["line"] for d in json.loads((RAW.parent / "defects.json").read_text())["defects"]}
    clean = [json.dumps({"messages": json.loads(line)["messages"]}).encode()
             for n, line in enumerate(RAW.read_bytes().splitlines()[:100], 1) if n not in planted][:45]
    huge = b'{"messages": [{"role": "user", "content": "' + b"x" * (10 << 20) + b'"}]}'
    (raw / "huge_line.jsonl").write_bytes(clean[40] + b"\n" + huge + b"\r\n" + clean[41] + b"\n")
    noise = hashlib.sha256(b"seed").hexdigest().encode() * 8000  # incompressible enough to truncate mid-line
    packed = gzip.compress(clean[42] + b"\n" + b'{"messages": "' + noise + b'"}\n', mtime=0)
    (raw / "truncated.jsonl.gz").write_bytes(packed[: len(packed) // 2])
    return raw
