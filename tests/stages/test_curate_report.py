"""The curate report for people: markdown page, length histograms (CSV, PNG), written even on failure."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from pipeline.curate import curate
from pipeline.curate.render import LENGTHS_CSV, LENGTHS_PNG, REASON_TEXT, render_markdown, write_reports
from pipeline.params import CurateParams
from tests.conftest import REPO, build_tiny_model_dir

HOSTILE = REPO / "tests/data/hostile"
SECRET = "zq.planted.secret@example.org"  # in a rejected record: must never reach a committed report


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    tok = build_tiny_model_dir(tmp / "tiny")
    raw = tmp / "raw"
    shutil.copytree(HOSTILE, raw, ignore=shutil.ignore_patterns("EXPECTED.json"))
    with open(raw / "secret.jsonl", "w", encoding="utf-8") as f:  # a bad record carrying PII
        f.write(json.dumps({"messages": [{"role": "user", "content": f"mail {SECRET} now"}]}) + "\n")
    expected = json.loads((HOSTILE / "EXPECTED.json").read_text())["params"]
    params = CurateParams(**expected)
    report = curate(params, raw, REPO / "eval_suites", tok, tmp / "out")
    write_reports(report, tmp / "reports/curate.json", tmp / "reports/metrics.json", tmp / "reports/plots")
    return report, tmp / "reports"


def test_every_rejection_reason_has_a_row_with_its_count_and_an_example(curated):
    report, out = curated
    md = (out / "curate.md").read_text()
    rejected = {r: n for r, n in report["reasons"].items() if n}
    assert len(rejected) >= 8, rejected  # the hostile set exercises most reasons
    for reason, n in rejected.items():
        ex = report["examples"][reason]
        row = next(line for line in md.splitlines() if line.startswith(f"| `{reason}` |"))
        assert f"| {n} |" in row and f"{ex['source']}:{ex['line']}" in row and REASON_TEXT[reason] in row
    assert f"**quarantined {report['rejected']:,}**" in md and f"**Kept {report['kept']:,}**" in md
    for s in report["stages"]:  # the checks table matches the counts
        assert f"| {s['stage']} | {s['in']:,} | {s['out']:,} |" in md
    for name, s in report["slices"].items():  # and the per-slice table
        assert f"| {name} | {s['input']:,} | {s['train']:,} | {s['val']:,} | {s['quarantined']:,} |" in md
    for f in report["slice_loss"]["flagged"]:  # EXPECTED.json's params warn: flagged, not failed
        assert f"**WARNING**: slice `{f['slice']}` lost {f['quarantined']} of {f['input']}" in md


def test_histograms_account_for_every_tokenized_and_every_kept_record(curated):
    report, out = curated
    rows = list(csv.DictReader(open(out / "plots" / LENGTHS_CSV)))
    before, after = sum(int(r["before"]) for r in rows), sum(int(r["after"]) for r in rows)
    assert after == report["kept"] > 0
    # every valid record that renders under the template: the kept ones plus those the later checks rejected
    later = sum(n for s in report["stages"] if s["stage"] in ("quality", "length", "exact_dedup", "decontam",
                                                             "near_dedup") for n in s["rejected"].values())
    assert before == report["kept"] + later - report["reasons"]["bad_template"]
    assert all(int(r["after"]) <= int(r["before"]) for r in rows)
    png = (out / "plots" / LENGTHS_PNG).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert f"](plots/{LENGTHS_PNG})" in (out / "curate.md").read_text()  # the link resolves from the page


def test_reports_name_records_by_place_never_by_text(curated):
    _report, out = curated
    for name in ("curate.md", "curate.json", "metrics.json", f"plots/{LENGTHS_CSV}"):
        assert SECRET not in (out / name).read_text(), name


def test_markdown_renders_when_checks_are_off_and_nothing_is_rejected():
    minimal = {"input_files": ["a.jsonl"], "input_lines": 2, "blank_lines": 0, "kept": 2, "rejected": 0,
               "quarantine_fraction": 0.0, "reasons": dict.fromkeys(REASON_TEXT, 0),
               "stages": [{"stage": "read", "in": 2, "out": 2, "rejected": {}}],
               "repairs": {"bom_stripped": 0}, "pii": {"enabled": False}, "near_dup": {"enabled": False},
               "decontam": {"ngram": 13, "eval_items": 0}, "leaked_eval_items": {},
               "splits": {"train": {"total": 2}, "val": {"total": 0}}, "length_tokens": {},
               "min_seq_len_tokens": 64, "max_seq_len_tokens": 1024, "examples": {}, "data_digest": "0" * 64}
    md = render_markdown(minimal)
    assert "nothing rejected" in md and "**off**" in md and "Near-duplicates: **off**" in md


def test_the_failing_stage_still_writes_the_page_and_plots(tmp_path):
    from stages.curate import main

    tok = build_tiny_model_dir(tmp_path / "tiny")
    raw = tmp_path / "raw"
    raw.mkdir()
    good = (REPO / "data/raw/discharge_notes.jsonl").read_text().splitlines()[0]
    (raw / "bad.jsonl").write_text("not json\n" * 3 + good + "\n")
    params = tmp_path / "params.yaml"
    params.write_text("curate:\n  max_seq_len_tokens: 4096\n  max_quarantine_fraction: 0.5\n  workers: 1\n")
    reports = tmp_path / "reports"
    rc = main(["--params", str(params), "--raw", str(raw), "--suites", str(REPO / "eval_suites"),
               "--tokenizer", str(tok), "--out", str(tmp_path / "out"),
               "--report", str(reports / "curate.json"), "--metrics", str(reports / "metrics.json")])
    assert rc == 1
    md = (reports / "curate.md").read_text()
    assert "**quarantined 3**" in md and "| `bad_json` | 3 |" in md
    assert (reports / "plots" / LENGTHS_PNG).is_file()  # default: plots/ beside the report
    assert not (reports / "metrics.json").exists()  # a failed stage publishes no metrics
