"""curate: every input line is accounted for, each defect caught by the right reason."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from pipeline.curate import QuarantineTooLarge, curate
from pipeline.params import CurateParams
from tests.conftest import REPO


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def curated_default(tiny_pipeline, tmp_path_factory):
    out = tmp_path_factory.mktemp("curated")
    # The tiny BPE spends more tokens per character than the real one; a longer limit keeps
    # ordinary notes in while the planted over-long ones (12k+ characters) stay out.
    params = CurateParams(max_seq_len_tokens=4096, max_quarantine_fraction=0.5)
    report = curate(params, REPO / "data/raw", REPO / "eval_suites", tiny_pipeline["base"], out / "curated")
    return report, out / "curated"


def test_every_line_is_accounted_for(curated_default):
    report, out = curated_default
    n_in = sum(1 for line in (REPO / "data/raw/discharge_notes.jsonl").read_bytes().splitlines() if line.strip())
    train, val, quarantine = (_lines(out / f"{n}.jsonl") for n in ("train", "val", "quarantine"))
    assert report["input_lines"] == n_in == len(train) + len(val) + len(quarantine)
    assert sum(report["reasons"].values()) == len(quarantine) == report["rejected"]
    assert all(q["reason"] and q["line"] >= 1 and q["source"] for q in quarantine)


def test_planted_defects_are_caught_by_the_right_reason(curated_default):
    _report, out = curated_default
    defects = json.loads((REPO / "data/raw/defects.json").read_text())["defects"]
    by_line = {q["line"]: q["reason"] for q in _lines(out / "quarantine.jsonl")}
    expected = {"exact_duplicate": {"exact_duplicate"}, "eval_copy": {"eval_contamination"},
                "over_long": {"too_long"},
                "malformed": {"bad_json", "not_object", "bad_messages", "bad_message", "unknown_role",
                              "missing_assistant", "empty_content"}}
    for d in defects:
        if d["kind"] == "exact_duplicate":
            # Streaming dedup keeps whichever copy comes first; the other one is quarantined.
            source_line = int(re.search(r"line (\d+)", d["detail"]).group(1))
            got = [by_line.get(d["line"]), by_line.get(source_line)]
            assert got.count("exact_duplicate") == 1, d
        elif d["kind"] in expected:
            assert by_line.get(d["line"]) in expected[d["kind"]], d


def test_no_eval_item_reaches_training(curated_default):
    _report, out = curated_default
    eval_users = {json.loads(line)["messages"][1]["content"]
                  for line in (REPO / "eval_suites/discharge/data/test.jsonl").read_text().splitlines()}
    for split in ("train", "val"):
        for rec in _lines(out / f"{split}.jsonl"):
            assert rec["messages"][1]["content"] not in eval_users


def test_output_is_deterministic(tiny_pipeline, tmp_path):
    params = CurateParams(max_seq_len_tokens=4096, max_quarantine_fraction=0.9)
    for run in ("a", "b"):
        curate(params, tiny_pipeline["raw"], REPO / "eval_suites", tiny_pipeline["base"], tmp_path / run)
    for name in ("train.jsonl", "val.jsonl", "quarantine.jsonl", "meta.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_hostile_lines_are_quarantined_not_crashing(tiny_pipeline, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    good = (REPO / "data/raw/discharge_notes.jsonl").read_bytes().splitlines()[0]
    hostile = [
        b"\xef\xbb\xbf" + good,                          # BOM on the first line: accepted
        b"\xff\xfe not utf-8 \xc3\x28",                  # invalid UTF-8
        b'{"messages": [{"role": "user", "content": "a\\u0000b"}, {"role": "assistant", "content": "x"}]}',
        b"[1, 2, 3]",
        b'{"messages": "not a list"}',
        b'{"messages": [{"role": "user", "content": 5}]}',
        b'{"messages": [{"role": "user", "content": "hi"}]}',
        b"{" * 10_000,
        b'{"messages": [{"role": "user", "content": "' + b"x" * 200_000 + b'"}, {"role": "assistant", "content": "y"}]}',
    ]
    (raw / "hostile.jsonl").write_bytes(b"\n".join(hostile) + b"\n")
    params = CurateParams(max_seq_len_tokens=4096, max_quarantine_fraction=0.95)
    report = curate(params, raw, REPO / "eval_suites", tiny_pipeline["base"], tmp_path / "out")
    assert report["input_lines"] == len(hostile)
    assert report["kept"] == 1
    reasons = Counter(q["reason"] for q in _lines(tmp_path / "out/quarantine.jsonl"))
    assert reasons["non_utf8"] == 1 and reasons["bad_message"] == 2 and reasons["not_object"] == 1
    assert reasons["bad_messages"] == 1 and reasons["missing_assistant"] == 1 and reasons["bad_json"] == 1
    assert reasons["too_long"] == 1


def test_too_large_a_quarantine_fails_the_stage_with_the_report(tiny_pipeline, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "bad.jsonl").write_text("not json\n" * 9 + (REPO / "data/raw/discharge_notes.jsonl").read_text().splitlines()[0] + "\n")
    with pytest.raises(QuarantineTooLarge) as err:
        curate(CurateParams(max_seq_len_tokens=4096, max_quarantine_fraction=0.5), raw, REPO / "eval_suites",
               tiny_pipeline["base"], tmp_path / "out")
    assert err.value.report["reasons"]["bad_json"] == 9
