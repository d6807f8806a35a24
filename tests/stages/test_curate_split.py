"""curate's validation split keeps every slice in validation (issue 24, point 15).

The split is a per-record hash draw (val below val_fraction). At the default 3% a small slice
usually draws no validation record, so the validation loss said nothing about the tail. Now a
slice left short takes its lowest-draw training records, up to min_val_records_per_slice and
never more than half of its kept records; slices the draw already serves keep their split.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from pipeline.curate import curate
from pipeline.curate.checks import val_draw
from pipeline.curate.render import render_markdown
from pipeline.curate.validate import to_record
from pipeline.params import CurateParams
from tests.conftest import build_tiny_model_dir

SIZES = {"big": 200, "small": 6, "pair": 2, "single": 1}
SEED = 20261123


def _words(rng: random.Random, n: int) -> str:
    return " ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(4, 9)))
                    for _ in range(n))


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("split")
    rng = random.Random(5)  # a draw that gives the big slice 9 validation records, small and pair none
    records = [{"id": f"{name}{i}", "slice": name, "prompt": _words(rng, 30), "completion": _words(rng, 10)}
               for name, n in SIZES.items() for i in range(n)]
    rng.shuffle(records)
    (tmp / "raw").mkdir()
    (tmp / "raw/r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    suite = tmp / "suites/s"
    suite.mkdir(parents=True)
    (suite / "suite.yaml").write_text("name: s\nversion: 1\ndata: items.jsonl\nheadline_metric: exact_match\n"
                                      "scorers: [exact_match]\ngenerate_task: s_gen\n")
    (suite / "items.jsonl").write_text(json.dumps({"id": "e0", "slice": "x", "prompt": _words(rng, 30),
                                                   "completion": "y"}) + "\n")
    draws = {r["id"]: val_draw(to_record(r).messages, SEED) for r in records}
    return {"raw": tmp / "raw", "suites": tmp / "suites", "tok": build_tiny_model_dir(tmp / "tok"),
            "records": records, "draws": draws}


def _params(**kw) -> CurateParams:
    return CurateParams(min_seq_len_tokens=1, max_seq_len_tokens=4096, workers=1, seed=SEED, **kw)


def _val_ids(out: Path) -> set[str]:
    return {r["id"] for r in _lines(out / "val.jsonl")}


def _drawn(task, fraction: float = 0.03) -> set[str]:
    return {rid for rid, d in task["draws"].items() if d < fraction}


def test_a_small_slice_gets_validation_records_the_others_keep_their_split(task, tmp_path):
    drawn = _drawn(task)
    by_slice = Counter(rid.rstrip("0123456789") for rid in drawn)
    assert by_slice["small"] == by_slice["pair"] == 0 and by_slice["big"] >= 1  # the draw leaves the tails out
    out = tmp_path / "out"
    report = curate(_params(), task["raw"], task["suites"], task["tok"], out)
    val = _val_ids(out)
    small = sorted((d, rid) for rid, d in task["draws"].items() if rid.startswith("small"))
    assert val == drawn | {small[0][1], "pair0" if task["draws"]["pair0"] < task["draws"]["pair1"] else "pair1"}
    v = report["validation"]
    assert v["slices"]["small"] == {"kept": 6, "val": 1, "drawn": 0, "topped_up": 1}
    assert v["slices"]["big"]["topped_up"] == 0 and v["slices"]["big"]["val"] == by_slice["big"]
    assert v["slices_without_val"] == ["single"]  # one record: it stays in training
    # the files, the per-slice table and the split summary agree
    counted = Counter(r["slice"] for r in _lines(out / "val.jsonl"))
    assert {n: s["val"] for n, s in v["slices"].items() if s["val"]} == dict(counted)
    assert {n: s["val"] for n, s in report["slices"].items() if s["val"]} == dict(counted)
    assert report["splits"]["val"]["total"] == len(val) == v["drawn"] + v["topped_up"]
    assert "topped up: pair +1, small +1." in render_markdown(report)


def test_the_top_up_takes_the_lowest_draws_and_never_more_than_half(task, tmp_path):
    out = tmp_path / "out"
    report = curate(_params(min_val_records_per_slice=5), task["raw"], task["suites"], task["tok"], out)
    val = _val_ids(out)
    small = [rid for _, rid in sorted((d, rid) for rid, d in task["draws"].items() if rid.startswith("small"))]
    assert {rid for rid in val if rid.startswith("small")} == set(small[:3])  # half of 6, not 5
    big = [rid for _, rid in sorted((d, rid) for rid, d in task["draws"].items() if rid.startswith("big"))]
    assert {rid for rid in val if rid.startswith("big")} == set(big[:max(5, len(_drawn(task) & set(big)))])
    assert report["validation"]["slices"]["pair"]["val"] == 1 and report["validation"]["slices"]["single"]["val"] == 0


def test_no_minimum_is_the_draw_alone_and_val_fraction_0_is_no_validation(task, tmp_path):
    curate(_params(min_val_records_per_slice=0), task["raw"], task["suites"], task["tok"], tmp_path / "a")
    assert _val_ids(tmp_path / "a") == _drawn(task)
    report = curate(_params(val_fraction=0.0), task["raw"], task["suites"], task["tok"], tmp_path / "b")
    assert _val_ids(tmp_path / "b") == set() and report["validation"]["min_val_records_per_slice"] == 0
    assert len(_lines(tmp_path / "b/train.jsonl")) == sum(SIZES.values())


def test_the_split_is_the_same_for_any_worker_count_and_run(task, tmp_path):
    for name, workers in (("one", 1), ("two", 2), ("again", 1)):
        curate(_params().model_copy(update={"workers": workers}), task["raw"], task["suites"], task["tok"],
               tmp_path / name)
    for split in ("train", "val"):
        first = (tmp_path / "one" / f"{split}.jsonl").read_bytes()
        assert first == (tmp_path / "two" / f"{split}.jsonl").read_bytes() == \
            (tmp_path / "again" / f"{split}.jsonl").read_bytes()
    # input order within each file, as before
    order = {r["id"]: i for i, r in enumerate(task["records"])}
    for split in ("train", "val"):
        ids = [r["id"] for r in _lines(tmp_path / "one" / f"{split}.jsonl")]
        assert ids == sorted(ids, key=order.__getitem__)
