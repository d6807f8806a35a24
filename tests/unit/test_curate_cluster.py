"""curate on datatrove (pipeline/curate/cluster.py): the cluster path decides exactly as the stage.

The local executor runs the map on several tasks over several files (hostile inputs, duplicates
planted across shards), then the reduce; compared with the in-process curate() on the same
input: the map drops exactly the records the stage rejects for a reason that needs no other
record, with the same reason, and the reduce writes the same bytes and the same report. The
Slurm executor cannot run here: its sbatch scripts are built and checked without submitting.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import datatrove.executor.slurm as dt_slurm
import dill
import pytest

from pipeline.curate import curate
from pipeline.curate import validate as v
from pipeline.curate.cluster import (KEPT, QUARANTINE, SHARDS, CurateChecks, RawShardReader, SlurmOptions,
                                     build_executors, reduce_shards)
from pipeline.params import CurateParams
from pipeline.suites import load_all_suites
from tests.conftest import REPO, build_tiny_model_dir

HOSTILE = REPO / "tests/data/hostile"
GLOBAL_REASONS = {v.EXACT_DUPLICATE, v.NEAR_DUPLICATE}  # the only ones that depend on other records
OUTPUTS = ("train.jsonl", "val.jsonl", "quarantine.jsonl", "meta.json")
# As tests/data/hostile/EXPECTED.json: the tiny tokenizer needs the longer context; the hostile
# inputs are meant to be mostly rejected, so the quarantine limits only warn or pass
PARAMS = CurateParams(raw_glob=["*.jsonl", "*.jsonl.gz", "*.csv"], max_seq_len_tokens=4096,
                      max_quarantine_fraction=1.0, on_slice_loss="warn")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _shard_summaries(map_dir: Path, kind: str) -> list[dict]:
    out = []
    for f in sorted((map_dir / kind).glob("*.jsonl.gz")):
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            out += [json.loads(line) for line in fh]
    return out


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tok") / "tiny")


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory) -> Path:
    """Hostile files, default notes in two files, and copies planted in another file than their
    original (so the global checks must see across shards)."""
    raw = tmp_path_factory.mktemp("raw")
    for f in HOSTILE.iterdir():
        if f.suffix in (".jsonl", ".csv"):
            shutil.copy(f, raw / f.name)
    lines = (REPO / "data/raw/discharge_notes.jsonl").read_bytes().splitlines()[:240]
    clean = [line for line in lines if _usable(line)]
    (raw / "notes_a.jsonl").write_bytes(b"\n".join(lines[:120]) + b"\n")
    first = json.loads(clean[0])
    near = json.loads(clean[1])
    near["messages"][1]["content"] = near["messages"][1]["content"].replace(" ", "  ", 1)
    eval_item = load_all_suites(REPO / "eval_suites")[0].items()[0]
    planted = [json.dumps(first).encode(), json.dumps(near).encode(),
               json.dumps({"messages": [*eval_item.messages,
                                        {"role": "assistant", "content": eval_item.reference}]}).encode()]
    (raw / "notes_b.jsonl").write_bytes(b"\n".join(lines[120:] + planted) + b"\n\n")
    huge = b'{"messages": [{"role": "user", "content": "' + b"x" * (2 << 20) + b'"}]}'
    (raw / "huge_line.jsonl").write_bytes(clean[2] + b"\n" + huge + b"\n" + clean[3] + b"\n")
    noise = hashlib.sha256(b"seed").hexdigest().encode() * 8000
    packed = gzip.compress(clean[4] + b"\n" + b'{"messages": "' + noise + b'"}\n', mtime=0)
    (raw / "truncated.jsonl.gz").write_bytes(packed[: len(packed) // 2])
    return raw


def _usable(line: bytes) -> bool:
    try:
        v.to_record(v.parse_line(line))
        return True
    except v.Rejected:
        return False


@pytest.fixture(scope="module")
def both(raw_dir, tokenizer_dir, tmp_path_factory):
    """The in-process stage and the cluster path (local executor, 3 tasks on 2 workers)."""
    tmp = tmp_path_factory.mktemp("cluster")
    ref_report = curate(PARAMS, raw_dir, REPO / "eval_suites", tokenizer_dir, tmp / "ref")
    mapper, reducer = build_executors("local", PARAMS, raw_dir, REPO / "eval_suites", tokenizer_dir, tmp / "work",
                                      tmp / "out", tmp / "report.json", tasks=3, workers=2)
    reducer.run()
    return {"tmp": tmp, "ref_report": ref_report, "report": json.loads((tmp / "report.json").read_text())}


def _reasons(out: Path) -> dict[tuple[str, int], str]:
    return {(q["source"], q["line"]): q["reason"] for q in _jsonl(out / "quarantine.jsonl")}


def test_map_drops_what_the_stage_rejects_alone_with_the_same_reason(both):
    tmp = both["tmp"]
    stage_quarantine = _reasons(tmp / "ref")
    dropped = {(s["source"], s["line"]): s["reason"] for s in _shard_summaries(tmp / "work/map", QUARANTINE)}
    forwarded = {(s["source"], s["line"]) for s in _shard_summaries(tmp / "work/map", KEPT)}
    assert dropped == {k: r for k, r in stage_quarantine.items() if r not in GLOBAL_REASONS}
    assert not dropped.keys() & forwarded
    assert len(dropped) + len(forwarded) == both["ref_report"]["input_lines"]
    # survivors = the stage's kept records plus its global rejections
    assert {k for k, r in stage_quarantine.items() if r in GLOBAL_REASONS} <= forwarded
    assert len(forwarded) == both["ref_report"]["kept"] + sum(both["ref_report"]["reasons"][r] for r in GLOBAL_REASONS)
    # the input had every kind of stateless rejection the hostile set plants, in several files
    assert {"line_too_long", "unreadable_file", "bad_json", "eval_contamination"} <= set(dropped.values())
    assert len({source for source, _ in dropped}) >= 4


def test_reduce_writes_the_stages_bytes_and_report(both):
    tmp = both["tmp"]
    for name in OUTPUTS:
        assert (tmp / "out" / name).read_bytes() == (tmp / "ref" / name).read_bytes(), name
    assert both["report"] == both["ref_report"]
    # and the page and plots people read, as the stage writes them
    assert "## Checks, in order" in (tmp / "report.md").read_text()
    assert (tmp / "plots/curate_lengths.png").stat().st_size > 0
    manifests = sorted((tmp / "work/map" / SHARDS).glob("*.json"))
    assert [json.loads(m.read_text())["rank"] for m in manifests] == [0, 1, 2]


def test_duplicates_across_shards_are_caught(both, raw_dir):
    """notes_b.jsonl's last three lines copy records of other files: the reduce sees across shards."""
    where = _reasons(both["tmp"] / "out")
    n = sum(1 for line in (raw_dir / "notes_b.jsonl").read_bytes().splitlines() if line.strip())
    last = [where[("notes_b.jsonl", line)] for line in range(n - 2, n + 1)]
    assert last == [v.EXACT_DUPLICATE, v.NEAR_DUPLICATE, v.EVAL_CONTAMINATION]
    # the readers' repairs add up over the shards (notes_b ends in a blank line; malformed.jsonl has a BOM)
    assert both["report"]["blank_lines"] >= 1 and both["report"]["repairs"]["bom_stripped"] >= 1


def test_reduce_refuses_a_partial_or_mismatched_map(both, tokenizer_dir, tmp_path):
    work = tmp_path / "map"
    shutil.copytree(both["tmp"] / "work/map", work)
    args = (work, REPO / "eval_suites", tokenizer_dir, tmp_path / "out")
    with pytest.raises(RuntimeError, match="other curate params"):
        reduce_shards(PARAMS.model_copy(update={"val_fraction": 0.5}), *args)
    kept = sorted((work / KEPT).glob("*.jsonl.gz"))[0]
    with gzip.open(kept, "rt") as f:
        lines = f.readlines()
    with gzip.open(kept, "wt") as f:
        f.writelines(lines[:-1])  # a shard that lost a record
    with pytest.raises(RuntimeError, match="readers counted"):
        reduce_shards(PARAMS, *args)
    assert not (tmp_path / "out").exists()  # nothing published
    (work / SHARDS / "00001.json").unlink()
    with pytest.raises(RuntimeError, match="map incomplete"):
        reduce_shards(PARAMS, *args)


def test_slurm_scripts_are_built_without_submitting(tmp_path, monkeypatch, tokenizer_dir):
    launched: list[tuple[str, tuple]] = []

    def fake_launch(script, job_id_retriever, *args):
        launched.append((script, args))
        return str(100 + len(launched))

    monkeypatch.setattr(dt_slurm, "launch_slurm_job", fake_launch)
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    opts = SlurmOptions(partition="cpu", time="01:30:00", env_command="source /opt/tailgate/.venv/bin/activate",
                        reduce_mem_gb=24, sbatch_args={"account": "data-team"})
    mapper, reducer = build_executors("slurm", PARAMS, tmp_path / "raw", REPO / "eval_suites", tokenizer_dir,
                                      tmp_path / "work", tmp_path / "out", tmp_path / "report.json", tasks=64,
                                      workers=16, slurm=opts)
    args = mapper.get_sbatch_args(64)
    assert {k: args[k] for k in ("partition", "time", "array", "cpus-per-task", "mem-per-cpu", "job-name",
                                  "account")} == {
        "partition": "cpu", "time": "01:30:00", "array": "0-63%16", "cpus-per-task": 1, "mem-per-cpu": "2G",
        "job-name": "tailgate-curate-map", "account": "data-team"}
    assert "qos" not in args  # datatrove's default "normal" is not every cluster's

    reducer.run()  # outside a Slurm task: launches the map, then the reduce depending on it
    scripts = [s for s, _ in launched]
    assert len(launched) == 4  # map array, its stats merge, reduce, its stats merge
    map_script, (reduce_script, reduce_args) = scripts[0], launched[2]
    assert "#SBATCH --array=0-63%16" in map_script and "#SBATCH --partition=cpu" in map_script
    assert "source /opt/tailgate/.venv/bin/activate" in map_script
    assert f"launch_pickled_pipeline {tmp_path / 'work/logs/map/executor.pik'}" in map_script
    assert "#SBATCH --array=0-0" in reduce_script and "#SBATCH --mem-per-cpu=24G" in reduce_script
    assert "#SBATCH --job-name=tailgate-curate-reduce" in reduce_script
    assert "--dependency=afterok:101" in reduce_args  # the map's job id

    # what the Slurm tasks will load: the steps, unpickled, without a loaded tokenizer
    with open(tmp_path / "work/logs/map/executor.pik", "rb") as f:
        shipped = dill.load(f)
    assert [type(s) for s in shipped.pipeline[:2]] == [RawShardReader, CurateChecks]
    assert shipped.pipeline[1]._checker is None and shipped.world_size == 64
    assert CurateParams.model_validate(shipped.pipeline[1].params) == PARAMS


def test_unknown_executor_and_missing_slurm_options_are_refused(tmp_path, tokenizer_dir):
    common = (PARAMS, tmp_path, REPO / "eval_suites", tokenizer_dir, tmp_path / "w", tmp_path / "o", tmp_path / "r")
    with pytest.raises(ValueError, match="local or slurm"):
        build_executors("ray", *common, tasks=2)
    with pytest.raises(ValueError, match="SlurmOptions"):
        build_executors("slurm", *common, tasks=2)


def test_example_script_runs_the_local_executor(both, raw_dir, tokenizer_dir, tmp_path):
    """examples/cluster/curate_datatrove.py, as a user runs it, gives the stage's outputs."""
    import yaml

    spec = importlib.util.spec_from_file_location("curate_datatrove", REPO / "examples/cluster/curate_datatrove.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"curate": PARAMS.model_dump(mode="json")}))
    assert example.main(["--executor", "local", "--params", str(params), "--raw", str(raw_dir),
                         "--tokenizer", str(tokenizer_dir), "--work-dir", str(tmp_path / "work"),
                         "--out", str(tmp_path / "out"), "--report", str(tmp_path / "report.json"),
                         "--tasks", "2", "--workers", "1"]) == 0
    for name in OUTPUTS:
        assert (tmp_path / "out" / name).read_bytes() == (both["tmp"] / "ref" / name).read_bytes(), name
