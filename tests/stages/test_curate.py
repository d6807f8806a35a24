"""curate: every input record is accounted for, each defect caught by the right reason."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tracemalloc
from collections import Counter
from pathlib import Path

import pytest

from pipeline.curate import QuarantineTooLarge, curate
from pipeline.curate.readers import Reader
from pipeline.params import CurateParams
from tests.conftest import REPO, build_tiny_model_dir, small_raw
from tests.hostile import make_hostile_dir

HOSTILE = REPO / "tests/data/hostile"
RAW = REPO / "data/raw/discharge_notes.jsonl"


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _where(out: Path) -> dict[tuple[str, int], str]:
    """(file, line) -> "kept" or the quarantine reason, for every record curate wrote."""
    got: dict[tuple[str, int], str] = {}
    for split in ("train", "val"):
        for rec in _lines(out / f"{split}.jsonl"):
            source, line = rec["id"].rsplit(":", 1)  # records without an id are named file:line
            got[(source, int(line))] = "kept"
    for q in _lines(out / "quarantine.jsonl"):
        assert (q["source"], q["line"]) not in got, q
        got[(q["source"], q["line"])] = q["reason"]
    return got


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    """The tiny offline tokenizer and chat template (no model needed for curation)."""
    return build_tiny_model_dir(tmp_path_factory.mktemp("tok") / "tiny")


@pytest.fixture(scope="module")
def curated_default(tokenizer_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("curated")
    # The tiny BPE spends more tokens per character than the real one; a longer limit keeps
    # ordinary notes in while the planted over-long ones (12k+ characters) stay out.
    params = CurateParams(max_seq_len_tokens=4096, max_quarantine_fraction=0.5)
    report = curate(params, REPO / "data/raw", REPO / "eval_suites", tokenizer_dir, out / "curated")
    return report, out / "curated"


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory) -> Path:
    """tests/data/hostile plus the files EXPECTED.json says the test generates."""
    return make_hostile_dir(tmp_path_factory.mktemp("hostile"))


def test_every_line_is_accounted_for(curated_default):
    report, out = curated_default
    n_in = sum(1 for line in RAW.read_bytes().splitlines() if line.strip())
    train, val, quarantine = (_lines(out / f"{n}.jsonl") for n in ("train", "val", "quarantine"))
    assert report["input_lines"] == n_in == len(train) + len(val) + len(quarantine)
    assert sum(report["reasons"].values()) == len(quarantine) == report["rejected"]
    assert all(q["reason"] and q["line"] >= 1 and q["source"] and "raw" in q for q in quarantine)


def test_planted_defects_are_caught_by_the_right_reason(curated_default):
    _report, out = curated_default
    defects = {d["line"]: d for d in json.loads((REPO / "data/raw/defects.json").read_text())["defects"]}
    by_line = {q["line"]: q for q in _lines(out / "quarantine.jsonl")}
    expected = {"eval_copy": {"eval_contamination"}, "over_long": {"too_long"},
                "malformed": {"bad_json", "not_object", "bad_messages", "bad_message", "unknown_role",
                              "missing_assistant", "empty_content"},
                "repetitive": {"repetitive"}, "symbol_soup": {"symbol_ratio"}, "copied_prompt": {"copied_prompt"},
                "too_short": {"too_short"}}
    partners = set()
    for d in defects.values():
        if d["kind"] in ("exact_duplicate", "near_duplicate"):
            # Streaming dedup keeps whichever copy comes first; the other one is quarantined,
            # its detail naming the one kept.
            source_line = int(re.search(r"line (\d+)", d["detail"]).group(1))
            pair = {d["line"], source_line}
            dropped = [line for line in pair if line in by_line]
            assert len(dropped) == 1 and by_line[dropped[0]]["reason"] == d["kind"], d
            assert f"discharge_notes.jsonl:{(pair - set(dropped)).pop()}" in by_line[dropped[0]]["detail"]
            partners |= pair
        elif d["kind"] == "pii":
            assert d["line"] not in by_line, d  # kept, scrubbed (tests/stages/test_curate_default.py)
        else:
            assert by_line[d["line"]]["reason"] in expected[d["kind"]], d
    # no clean record is touched, except the first-read copy of a planted duplicate
    assert all(line in defects or line in partners for line in by_line)


def test_report_counts_add_up_and_name_what_was_found(curated_default):
    report, _out = curated_default
    stages = report["stages"]
    assert stages[0]["in"] == report["input_lines"] and stages[-1]["out"] == report["kept"]
    for before, after in zip(stages, stages[1:]):
        assert after["in"] == before["out"]
    for s in stages:
        assert s["in"] - s["out"] == sum(s["rejected"].values())
    near = report["near_dup"]
    assert near["clusters"] == 30 and near["cluster_sizes"] == {"2": 30} and len(near["examples"]) == 3
    defects = json.loads((REPO / "data/raw/defects.json").read_text())["defects"]
    leaked = {"discharge/" + re.search(r"ev-\d+", d["detail"]).group(0) for d in defects if d["kind"] == "eval_copy"}
    assert set(report["leaked_eval_items"]) == leaked
    assert set(report["examples"]) == {r for r, n in report["reasons"].items() if n}
    hist = report["length_histogram"]
    assert sum(hist["after"]) == report["kept"] and len(hist["edges"]) == len(hist["before"]) + 1
    tokenized = ("repetitive", "symbol_ratio", "copied_prompt", "too_short", "too_long", "exact_duplicate",
                 "near_duplicate", "eval_contamination")  # the reasons seen here
    assert sum(hist["before"]) == report["kept"] + sum(report["reasons"][r] for r in tokenized)
    planted_pii = Counter()
    for d in defects:
        planted_pii.update(d.get("pii", {}))
    assert report["repairs"] == {"bom_stripped": 0} and report["pii"]["replacements"] == planted_pii


def test_no_eval_item_reaches_training(curated_default):
    _report, out = curated_default
    eval_users = {json.loads(line)["messages"][1]["content"]
                  for line in (REPO / "eval_suites/discharge/data/test.jsonl").read_text().splitlines()}
    for split in ("train", "val"):
        for rec in _lines(out / f"{split}.jsonl"):
            assert rec["messages"][1]["content"] not in eval_users


def test_hostile_inputs_each_end_with_exactly_the_expected_reason(tokenizer_dir, hostile_dir, tmp_path):
    spec = json.loads((HOSTILE / "EXPECTED.json").read_text())
    params = CurateParams(**{**spec["params"], "raw_glob": [*spec["params"]["raw_glob"], "*.jsonl.gz"]})
    report = curate(params, hostile_dir, REPO / "eval_suites", tokenizer_dir, tmp_path / "out")
    got = _where(tmp_path / "out")
    expected = {(name, e["line"]): e["expect"] for group in ("files", "generated")
                for name, entries in spec[group].items() for e in entries}
    assert got == expected
    assert report["input_lines"] == len(expected) and report["repairs"] == {"bom_stripped": 2}
    assert report["blank_lines"] == 2
    # every record counts in one slice; the unreadable ones in the bucket no slice limit judges
    assert sum(s["input"] for s in report["slices"].values()) == report["input_lines"]
    assert report["slices"]["(none)"]["kept"] == 0 and report["slice_loss"]["not_judged"] == "(none)"
    assert report["pii"]["replacements"] == {"email": 2, "phone": 2, "mrn": 2, "dob": 2, "national_id": 2}
    huge = next(q for q in _lines(tmp_path / "out/quarantine.jsonl") if q["reason"] == "line_too_long")
    content = (hostile_dir / "huge_line.jsonl").read_bytes().splitlines()[1].rstrip(b"\r")
    assert "raw" not in huge and huge["raw_bytes"] == len(content) > 10 << 20
    assert huge["raw_sha256"] == hashlib.sha256(content).hexdigest() and len(huge["raw_prefix"]) == 4096
    kept = {r["id"]: r for split in ("train", "val") for r in _lines(tmp_path / f"out/{split}.jsonl")}
    assert "[PHONE]" in kept["crafted.jsonl:12"]["messages"][1]["content"]


def test_a_10mb_line_is_never_held_in_memory_whole(tmp_path):
    path = tmp_path / "big.jsonl"
    with open(path, "wb") as f:
        f.write(b'{"messages": "' + b"y" * (10 << 20) + b'"}\n{"next": 1}\n')
    tracemalloc.start()
    items = [(i.line, i.reject[0] if i.reject else None) for i in Reader(max_line_bytes=64 << 10).read([path])]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert items == [(1, "line_too_long"), (2, None)]
    assert peak < 2 << 20, f"peak {peak} bytes while reading a 10 MB line"


def test_parquet_rows_are_records_numbered_from_one(tokenizer_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = tmp_path / "raw"
    raw.mkdir()
    recs = [json.loads(line) for line in RAW.read_bytes().splitlines()[50:53]]
    table = pa.Table.from_pylist([
        {"messages": recs[0]["messages"], "prompt": None, "completion": None, "slice": "common"},
        {"messages": None, "prompt": recs[1]["messages"][1]["content"], "completion": recs[1]["messages"][2]["content"],
         "slice": None},
        {"messages": None, "prompt": recs[2]["messages"][1]["content"], "completion": None, "slice": None},
    ])
    pq.write_table(table, raw / "rows.parquet", row_group_size=2)
    params = CurateParams(raw_glob="*.parquet", max_seq_len_tokens=4096, max_quarantine_fraction=1.0,
                          system="You write structured hospital discharge summaries.")
    curate(params, raw, REPO / "eval_suites", tokenizer_dir, tmp_path / "out")
    assert _where(tmp_path / "out") == {("rows.parquet", 1): "kept", ("rows.parquet", 2): "kept",
                                        ("rows.parquet", 3): "missing_assistant"}
    kept = {r["id"]: r for split in ("train", "val") for r in _lines(tmp_path / f"out/{split}.jsonl")}
    assert kept["rows.parquet:2"]["messages"] == recs[1]["messages"]  # system turn from params


def test_output_is_deterministic_and_independent_of_workers(tokenizer_dir, hostile_dir, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(hostile_dir, raw)
    small_raw(raw, n=120)
    params = {"raw_glob": ["*.jsonl", "*.csv", "*.jsonl.gz"], "max_seq_len_tokens": 4096,
              "max_quarantine_fraction": 1.0, "on_slice_loss": "warn"}
    reports = {}
    for run, workers in (("a", 2), ("b", 2), ("c", 1)):
        reports[run] = curate(CurateParams(**params, workers=workers), raw, REPO / "eval_suites", tokenizer_dir,
                              tmp_path / run)
    for name in ("train.jsonl", "val.jsonl", "quarantine.jsonl", "meta.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes() \
            == (tmp_path / "c" / name).read_bytes(), name
    assert json.dumps(reports["a"]) == json.dumps(reports["b"]) == json.dumps(reports["c"])


def test_too_large_a_quarantine_fails_the_stage_with_the_report(tokenizer_dir, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "bad.jsonl").write_text("not json\n" * 9 + RAW.read_text().splitlines()[0] + "\n")
    with pytest.raises(QuarantineTooLarge) as err:
        curate(CurateParams(max_seq_len_tokens=4096, max_quarantine_fraction=0.5), raw, REPO / "eval_suites",
               tokenizer_dir, tmp_path / "out")
    assert err.value.report["reasons"]["bad_json"] == 9


def test_stage_script_exits_1_and_still_writes_the_report(tokenizer_dir, tmp_path):
    from stages.curate import main

    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "bad.jsonl").write_text("not json\n" * 3 + RAW.read_text().splitlines()[0] + "\n")
    params = tmp_path / "params.yaml"
    params.write_text("curate:\n  max_seq_len_tokens: 4096\n  max_quarantine_fraction: 0.5\n  workers: 1\n")
    rc = main(["--params", str(params), "--raw", str(raw), "--suites", str(REPO / "eval_suites"),
               "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "out"),
               "--report", str(tmp_path / "curate.json"), "--metrics", str(tmp_path / "metrics.json")])
    assert rc == 1
    assert json.loads((tmp_path / "curate.json").read_text())["reasons"]["bad_json"] == 3
    assert Counter(q["reason"] for q in _lines(tmp_path / "out/quarantine.jsonl")) == {"bad_json": 3}
