"""curate protects the tails: per-slice counts that add up, and a slice the filters strip fails
the stage by name, with the reason that took it and the param that controls that reason.

A small task built here: a `common` slice of distinct records and a `tail` slice most of
whose records are near copies of one another (as long inputs padded with the same filler
are), plus two eval suites. The whole run loses under a fifth of its records, within
max_quarantine_fraction, so only the per-slice limit notices that the tail lost 60%.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from pathlib import Path

import pytest

from pipeline.curate import NO_SLICE, QuarantineTooLarge, SliceLimitUnknown, SliceLossTooLarge, curate
from pipeline.params import CurateParams
from tests.conftest import build_tiny_model_dir

SYSTEM = "You answer questions about the text."
N_COMMON, N_TAIL, N_TAIL_COPIES = 30, 10, 7


def _words(rng: random.Random, n: int) -> str:
    # invented words: no two records share a 5-gram by chance, none repeats itself
    return " ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(4, 9)))
                    for _ in range(n))


def _chat(user: str, reply: str, slice_name: str, rid: str) -> dict:
    return {"id": rid, "slice": slice_name, "messages": [{"role": "system", "content": SYSTEM},
                                                         {"role": "user", "content": user},
                                                         {"role": "assistant", "content": reply}]}


def _suite(root: Path, name: str, items: list[dict]) -> None:
    root.mkdir(parents=True)
    (root / "suite.yaml").write_text(f"name: {name}\nversion: 1\ndata: items.jsonl\nheadline_metric: exact_match\n"
                                     f"scorers: [exact_match]\ngenerate_task: {name}_gen\n")
    (root / "items.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items))


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> dict:
    """Raw records, two suites and the tiny tokenizer; raw line -> slice (None: unreadable)."""
    tmp = tmp_path_factory.mktemp("slices")
    rng = random.Random(7)
    lines: list[tuple[str, str | None]] = []
    for i in range(N_COMMON):
        lines.append((json.dumps(_chat(_words(rng, 60), _words(rng, 20), "common", f"c{i}")), "common"))
    # the tail's shared padding and answer: its near copies differ in their last two words
    filler, answer = _words(rng, 80), _words(rng, 20)
    for i in range(N_TAIL):
        copy = i < N_TAIL_COPIES
        user, reply = (f"{filler} {_words(rng, 2)}", answer) if copy else (_words(rng, 80), _words(rng, 20))
        lines.append((json.dumps(_chat(user, reply, "tail", f"t{i}")), "tail"))
    lines.append(("this line is not json", None))                              # no slice to charge
    lines.append((json.dumps({"slice": "common", "messages": [{"role": "user", "content": "q"}]}), "common"))
    raw = tmp / "raw"
    raw.mkdir()
    (raw / "task.jsonl").write_text("".join(text + "\n" for text, _ in lines))
    suites = tmp / "suites"
    _suite(suites / "alpha", "alpha", [{"id": f"a{i}", "slice": "x", "prompt": _words(rng, 40),
                                        "completion": _words(rng, 5)} for i in range(12)])
    _suite(suites / "beta", "beta", [_chat(_words(rng, 40), _words(rng, 5), "y", f"b{i}") for i in range(5)])
    return {"raw": raw, "suites": suites, "tok": build_tiny_model_dir(tmp / "tok"),
            "slice_of_line": {n: s for n, (_, s) in enumerate(lines, start=1)}}


def _params(**kw) -> CurateParams:
    return CurateParams(max_seq_len_tokens=4096, workers=1, **kw)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_a_stripped_slice_fails_the_stage_naming_slice_reason_and_param(task, tmp_path):
    with pytest.raises(SliceLossTooLarge) as err:
        curate(_params(), task["raw"], task["suites"], task["tok"], tmp_path / "out")
    msg = str(err.value)
    lost = N_TAIL_COPIES - 1  # streaming dedup keeps the first copy
    assert f"slice 'tail' lost {lost} of its {N_TAIL} records ({lost / N_TAIL:.1%})" in msg
    assert "most by near_duplicate" in msg and "curate.near_dup.threshold" in msg
    assert "curate.max_slice_loss_fraction" in msg and "curate.on_slice_loss" in msg
    assert "'common'" not in msg  # lost 1 of 31: under the limit
    report = err.value.report
    assert report["quarantine_fraction"] < report["max_quarantine_fraction"]  # the global share saw nothing
    (flag,) = report["slice_loss"]["flagged"]
    assert flag["slice"] == "tail" and flag["reason"] == "near_duplicate" and flag["reason_count"] == lost


def test_warn_keeps_the_run_and_flags_the_slice(task, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        report = curate(_params(on_slice_loss="warn"), task["raw"], task["suites"], task["tok"], tmp_path / "out")
    sl = report["slice_loss"]
    assert sl["on_slice_loss"] == "warn" and sl["max_slice_loss_fraction"] == 0.5
    assert [f["slice"] for f in sl["flagged"]] == ["tail"] and sl["worst_slice"] == "tail"
    assert any("slice 'tail'" in r.getMessage() and "near_duplicate" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "out/train.jsonl").exists()


def test_per_slice_counts_add_up_to_the_input_and_match_the_files(task, tmp_path):
    out = tmp_path / "out"
    report = curate(_params(on_slice_loss="warn"), task["raw"], task["suites"], task["tok"], out)
    slices = report["slices"]
    for name, s in slices.items():
        assert s["kept"] + s["quarantined"] == s["input"] and s["train"] + s["val"] == s["kept"], name
        assert sum(s["reasons"].values()) == s["quarantined"], name
    assert sum(s["input"] for s in slices.values()) == report["input_lines"]
    assert sum(s["kept"] for s in slices.values()) == report["kept"]
    # against the files: kept rows carry their slice, quarantined ones their raw line
    for split in ("train", "val"):
        assert Counter(r["slice"] for r in _lines(out / f"{split}.jsonl")) == \
            {n: s[split] for n, s in slices.items() if s[split]}
    where = task["slice_of_line"]
    lost: dict[str, Counter] = {}
    for q in _lines(out / "quarantine.jsonl"):
        lost.setdefault(where[q["line"]] or NO_SLICE, Counter())[q["reason"]] += 1
    assert lost == {n: Counter(s["reasons"]) for n, s in slices.items() if s["quarantined"]}
    # a malformed record whose slice is readable counts against its slice; unreadable ones do not
    assert slices["common"]["reasons"]["missing_assistant"] == 1 and slices[NO_SLICE]["reasons"] == {"bad_json": 1}
    assert slices["common"]["input"] == N_COMMON + 1 and slices["tail"]["input"] == N_TAIL
    assert report["slice_loss"]["not_judged"] == NO_SLICE


def test_a_too_large_quarantine_names_the_dominant_reason_and_its_param(task, tmp_path):
    with pytest.raises(QuarantineTooLarge) as err:
        curate(_params(max_quarantine_fraction=0.1), task["raw"], task["suites"], task["tok"], tmp_path / "out")
    msg = str(err.value)
    assert "exceeds curate.max_quarantine_fraction" in msg
    assert "most by near_duplicate (6), controlled by curate.near_dup.threshold" in msg
    assert "slice 'tail'" in msg  # the slice failure is reported with it, not hidden behind it


def test_the_stage_exits_1_and_writes_the_report_with_the_flagged_slice(task, tmp_path):
    from stages.curate import main

    params = tmp_path / "params.yaml"
    params.write_text("curate:\n  max_seq_len_tokens: 4096\n  workers: 1\n")
    reports = tmp_path / "reports"
    rc = main(["--params", str(params), "--raw", str(task["raw"]), "--suites", str(task["suites"]),
               "--tokenizer", str(task["tok"]), "--out", str(tmp_path / "out"),
               "--report", str(reports / "curate.json"), "--metrics", str(reports / "metrics.json")])
    assert rc == 1
    report = json.loads((reports / "curate.json").read_text())
    assert [f["slice"] for f in report["slice_loss"]["flagged"]] == ["tail"]
    md = (reports / "curate.md").read_text()
    assert "## Per slice" in md and "**FAILED**: slice `tail` lost 6 of 10 (60.0%)" in md
    assert "| tail | 10 |" in md and f"| {NO_SLICE} | 1 |" in md
    assert not (reports / "metrics.json").exists()


def test_a_slice_at_the_limit_passes(task, tmp_path):
    report = curate(_params(max_slice_loss_fraction=0.6), task["raw"], task["suites"], task["tok"],
                    tmp_path / "out")  # "more than" the limit fails; exactly at it does not
    assert report["slice_loss"]["flagged"] == [] and report["slice_loss"]["worst_loss_fraction"] == 0.6


def test_per_slice_limits_protect_a_tail_at_0_and_let_a_templated_slice_lose_more(task, tmp_path):
    limits = {"*": 0.5, "tail": 0.7, "common": 0.0}
    with pytest.raises(SliceLossTooLarge) as err:
        curate(_params(max_slice_loss_fraction=limits), task["raw"], task["suites"], task["tok"], tmp_path / "out")
    msg = str(err.value)
    # common lost its one malformed record: over its 0; tail lost 60%, under its own 0.7
    assert "slice 'common' lost 1 of its 31 records (3.2%), over its curate.max_slice_loss_fraction 0" in msg
    assert "'tail'" not in msg
    report = err.value.report
    assert [(f["slice"], f["limit"]) for f in report["slice_loss"]["flagged"]] == [("common", 0.0)]
    assert {n: s["max_loss_fraction"] for n, s in report["slices"].items()} == \
        {"common": 0.0, "tail": 0.7, NO_SLICE: None}
    assert report["slice_loss"]["max_slice_loss_fraction"] == {"*": 0.5, "common": 0.0, "tail": 0.7}
    # a slice the mapping does not name takes `*`; without `*`, the documented 0.5
    ok = curate(_params(max_slice_loss_fraction={"tail": 0.6}), task["raw"], task["suites"], task["tok"],
                tmp_path / "ok")
    assert ok["slice_loss"]["flagged"] == [] and ok["slices"]["common"]["max_loss_fraction"] == 0.5
    with pytest.raises(SliceLossTooLarge, match="slice 'tail'"):
        curate(_params(max_slice_loss_fraction={"*": 0.55}), task["raw"], task["suites"], task["tok"], tmp_path / "x")


def test_a_limit_for_a_slice_the_input_lacks_fails_even_with_warn(task, tmp_path):
    with pytest.raises(SliceLimitUnknown) as err:
        curate(_params(max_slice_loss_fraction={"*": 0.9, "tial": 0.0}, on_slice_loss="warn"), task["raw"],
               task["suites"], task["tok"], tmp_path / "out")
    assert "names slice 'tial', which no input record has (slices: common, tail)" in str(err.value)
    assert err.value.report["slice_loss"]["unknown_slices"] == ["tial"]


def test_the_stage_reads_per_slice_limits_from_params_yaml_and_shows_them(task, tmp_path):
    from stages.curate import main

    params = tmp_path / "params.yaml"
    params.write_text("curate:\n  max_seq_len_tokens: 4096\n  workers: 1\n"
                      "  max_slice_loss_fraction: {'*': 0.5, tail: 0.75}\n")
    reports = tmp_path / "reports"
    rc = main(["--params", str(params), "--raw", str(task["raw"]), "--suites", str(task["suites"]),
               "--tokenizer", str(task["tok"]), "--out", str(tmp_path / "out"),
               "--report", str(reports / "curate.json"), "--metrics", str(reports / "metrics.json")])
    assert rc == 0
    md = (reports / "curate.md").read_text()
    assert "| tail | 10 |" in md and md.count("| 75% |") == 1 and "Slice loss limits per slice" in md
