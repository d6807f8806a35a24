"""train resumes after SIGKILL from the last complete checkpoint and ends with the same adapter."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from pipeline.files import hash_files
from pipeline.params import load_section
from pipeline.train import train
from pipeline.train.checkpoint import MARKER, WEIGHTS, Checkpoints
from tests.conftest import REPO

ADAPTER_FILES = ["adapter_model.safetensors", "adapter_config.json"]
# Runs the real stage script in a child that SIGKILLs itself in the middle of writing the
# checkpoint of step KILL_AT: after its files and marker are on disk, before the rename that
# publishes it. What survives is exactly what a kill at that instant leaves.
KILLER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    import pipeline.train.checkpoint as ck
    real_rename = os.rename
    def rename(src, dst):
        if str(dst).endswith("step-{kill_at:07d}"):
            os.kill(os.getpid(), signal.SIGKILL)
        real_rename(src, dst)
    ck.os.rename = rename
    from stages.train import main
    sys.exit(main(sys.argv[1:]))
""")


def _params(tmp: Path, base_params: Path, **train) -> Path:
    params = yaml.safe_load(base_params.read_text())
    params["train"].update({"max_steps": 10, "val_every_steps": 5, "checkpoint_every_steps": 2, "keep_checkpoints": 2,
                            **train})
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def _stage_args(tiny, tmp: Path, params: Path, out: str) -> list[str]:
    return ["--params", str(params), "--base-q", str(tiny["base_q"]), "--base", str(tiny["base"]),
            "--data", str(tiny["data"]), "--out", str(tmp / out), "--report", str(tmp / f"{out}.json"),
            "--plot", str(tmp / f"{out}.csv"), "--metrics", str(tmp / f"{out}-metrics.json"),
            "--checkpoints", str(tmp / "ckpt")]


def _run(args: list[str], kill_at: int | None = None) -> subprocess.CompletedProcess:
    code = ["-m", "stages.train"] if kill_at is None else ["-c", KILLER.format(repo=str(REPO), kill_at=kill_at)]
    return subprocess.run([sys.executable, *code, *args], cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def interrupted(tiny_pipeline, tmp_path_factory) -> Path:
    """One run of the stage SIGKILLed while publishing step 6's checkpoint (a fresh child costs
    seconds of imports, so the tests below share it and each resumes a copy of what it left)."""
    tmp = tmp_path_factory.mktemp("interrupted")
    params = _params(tmp, tiny_pipeline["params"])
    killed = _run(_stage_args(tiny_pipeline, tmp, params, "out"), kill_at=6)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (tmp / "out").exists()  # no adapter from a dead run
    return tmp


def _resumable(tiny, interrupted: Path, tmp: Path) -> tuple[Path, list[str]]:
    """This test's own copy of the interrupted run's params and checkpoints, and the stage
    arguments that rerun it."""
    shutil.copy(interrupted / "params.yaml", tmp / "params.yaml")
    shutil.copytree(interrupted / "ckpt", tmp / "ckpt")
    return tmp / "params.yaml", _stage_args(tiny, tmp, tmp / "params.yaml", "out")


def test_sigkill_then_rerun_resumes_and_matches_an_uninterrupted_run(tiny_pipeline, interrupted, tmp_path):
    params, args = _resumable(tiny_pipeline, interrupted, tmp_path)
    [run_dir] = (tmp_path / "ckpt").iterdir()
    names = sorted(p.name for p in run_dir.iterdir())
    assert names[1:] == ["step-0000002", "step-0000004"] and names[0].startswith(".tmp-step-0000006"), names

    again = _run(args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming from" in again.stderr and "step 4 of 10" in again.stderr
    assert "removing incomplete checkpoint" in again.stderr  # the half-published step 6
    assert not (tmp_path / "ckpt").exists()  # a finished run leaves no checkpoints behind

    (tmp_path / "whole").mkdir()
    whole_params = _params(tmp_path / "whole", tiny_pipeline["params"])
    whole = _run(_stage_args(tiny_pipeline, tmp_path / "whole", whole_params, "out"))
    assert whole.returncode == 0 and "resuming" not in whole.stderr, whole.stderr[-2000:]
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["resumed_from_step"] == 4 and [s["step"] for s in report["steps"]] == list(range(1, 11))
    whole_report = json.loads((tmp_path / "whole/out.json").read_text())
    assert whole_report["resumed_from_step"] is None
    assert [s["loss"] for s in report["steps"]] == [s["loss"] for s in whole_report["steps"]]
    assert hash_files(tmp_path / "out", ADAPTER_FILES) == hash_files(tmp_path / "whole/out", ADAPTER_FILES)


def test_a_corrupt_checkpoint_is_skipped_for_the_previous_one(tiny_pipeline, interrupted, tmp_path):
    _, args = _resumable(tiny_pipeline, interrupted, tmp_path)
    [run_dir] = (tmp_path / "ckpt").iterdir()
    weights = run_dir / "step-0000004" / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte: the marker's sha256 no longer matches
    weights.write_bytes(bytes(data))
    again = _run(args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "does not match its recorded sha256" in again.stderr and "step 2 of 10" in again.stderr
    assert json.loads((tmp_path / "out.json").read_text())["resumed_from_step"] == 2


def test_another_configuration_never_resumes_these_checkpoints(tiny_pipeline, interrupted, tmp_path):
    _resumable(tiny_pipeline, interrupted, tmp_path)
    (tmp_path / "other").mkdir()
    other = _params(tmp_path / "other", tiny_pipeline["params"], learning_rate=3e-3)
    report = train(load_section("train", other), tiny_pipeline["base_q"], tiny_pipeline["base"], tiny_pipeline["data"],
                   tmp_path / "other_out", tmp_path / "ckpt")
    assert report["resumed_from_step"] is None
    # the interrupted configuration's checkpoints are still there for its own rerun
    assert any((d / "step-0000004" / MARKER).is_file() for d in (tmp_path / "ckpt").iterdir())


def test_checkpoint_settings_are_not_part_of_the_key(tiny_pipeline, interrupted, tmp_path):
    """Writing checkpoints more or less often, or another memory budget, does not change what
    training computes."""
    params, args = _resumable(tiny_pipeline, interrupted, tmp_path)
    p = yaml.safe_load(params.read_text())
    p["train"].update(checkpoint_every_steps=3, keep_checkpoints=5, memory_budget_gb=64)
    params.write_text(yaml.safe_dump(p, sort_keys=False))
    again = _run(args)
    assert again.returncode == 0 and "step 4 of 10" in again.stderr, again.stderr[-2000:]


def test_early_stopping_stops_after_patience_validations(tiny_pipeline, tmp_path):
    params = load_section("train", _params(tmp_path, tiny_pipeline["params"], val_every_steps=1,
                                           early_stopping_patience=1, learning_rate=0.5, max_steps=30))
    report = train(params, tiny_pipeline["base_q"], tiny_pipeline["base"], tiny_pipeline["data"], tmp_path / "out")
    vals = [v["val_loss"] for v in report["val"]]
    assert report["stopped_early"] and len(report["steps"]) < 30
    assert vals[-1] >= min(vals[:-1])  # it stopped on a validation that did not improve
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("keep", [1, 3])
def test_only_the_newest_complete_checkpoints_are_kept(tmp_path, keep):
    import torch

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    ck = Checkpoints(tmp_path, "k" * 64, keep=keep)
    for step in (2, 4, 6, 8):
        ck.save(step, model, opt, {"micro_batches": step})
    kept = sorted(p.name for p in ck.dir.iterdir())
    assert kept == [f"step-{s:07d}" for s in (2, 4, 6, 8)[-keep:]]
    assert Checkpoints.load(ck.latest(), model, opt)["micro_batches"] == 8
    os.remove(ck.latest() / MARKER)  # a checkpoint without its marker is never loaded
    assert ck.latest() is None or ck.latest().name != "step-0000008"
