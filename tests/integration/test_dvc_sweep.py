"""A queued sweep over LoRA rank and learning rate through real DVC experiments (tiny model).

`dvc exp run --queue` needs a git repository, so the project here is one: the committed
baseline is trained once, then a 2 x 2 grid is queued, run by DVC's queue workers in their
own workspaces, and compared with `dvc exp show`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, build_tiny_model_dir, small_raw, tiny_params

pytestmark = pytest.mark.slow

GIT_ENV = {"GIT_AUTHOR_NAME": "tailgate-test", "GIT_AUTHOR_EMAIL": "test@localhost",
           "GIT_COMMITTER_NAME": "tailgate-test", "GIT_COMMITTER_EMAIL": "test@localhost"}


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **GIT_ENV, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1"}
    out = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"{args}: {out.stdout[-3000:]}{out.stderr[-3000:]}"
    return out


def _run_queue(cwd: Path, dvc: str, workers: int, expected: int, timeout_s: float = 900) -> None:
    """`dvc exp run --run-all -j N`, waiting for the queue rather than for the command alone: DVC's
    celery worker sometimes stays up after the queue is done, and the command with it
    (treeverse/dvc#10398, #10428; seen here with every experiment already succeeded). Once
    `dvc queue status` shows every experiment succeeded and the command has had a grace period,
    the workers are stopped; a failed experiment, or none finishing in time, fails the test."""
    env = {**os.environ, **GIT_ENV, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1"}
    # The command's output goes to a file, not a pipe: the process DVC leaves behind to start its
    # workers inherits the command's stdout and can outlive it, and a pipe it holds open would
    # block reading the output to its end (seen here: the queue done, the test waiting forever).
    log_path = cwd.parent / "queue-run.log"
    with open(log_path, "w", encoding="utf-8") as log_file:
        proc = subprocess.Popen([dvc, "exp", "run", "--run-all", "-j", str(workers)], cwd=cwd, env=env,
                                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        deadline, done_at = time.monotonic() + timeout_s, None
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(5)
            status = subprocess.run([dvc, "queue", "status"], cwd=cwd, env=env, capture_output=True,
                                    text=True).stdout
            assert "Failed" not in status, status
            if status.count("Success") >= expected:
                done_at = done_at or time.monotonic()
                if time.monotonic() - done_at > 30:  # the hang: everything ran, the worker did not exit
                    subprocess.run([dvc, "queue", "stop", "--kill"], cwd=cwd, env=env, capture_output=True)
                    break
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the command and whatever it started in its session
            proc.wait()
    out = log_path.read_text(encoding="utf-8")
    assert done_at is not None or proc.returncode == 0, f"the queue did not finish: {out[-3000:]}"


def _experiments(shown: list) -> dict[str, dict]:
    """name -> {params: train section, metrics: reports/metrics/train.json} from `dvc exp show --json`."""
    out = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            data = exp["revs"][0]["data"]
            out[exp["name"]] = {"params": data["params"]["params.yaml"]["data"]["train"],
                                "metrics": data["metrics"]["reports/metrics/train.json"]["data"]}
    return out


def test_a_queued_sweep_over_rank_and_learning_rate_runs_and_compares(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    for name in ("stages", "pipeline", "serving", "eval_suites"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    small_raw(root / "data/raw", n=40)
    build_tiny_model_dir(root / "tiny_hf")
    tiny_params(root, curate={"max_seq_len_tokens": 4096})
    dvc = str(Path(sys.executable).parent / "dvc")
    _run(root, "git", "init", "-q")
    _run(root, dvc, "init", "-q")
    _run(root, dvc, "config", "core.analytics", "false")
    _run(root, dvc, "repro", "train")  # the baseline; queued runs reuse base/quantize/curate from the cache
    _run(root, "git", "add", "-A")
    _run(root, "git", "commit", "-qm", "baseline")
    baseline_metrics = (root / "reports/metrics/train.json").read_text()

    queued = _run(root, dvc, "exp", "run", "--queue", "train",
                  "-S", "train.lora_r=4,8", "-S", "train.learning_rate=0.001,0.004")
    assert queued.stdout.count("Queued experiment") == 4
    _run_queue(root, dvc, workers=2, expected=4)

    exps = _experiments(json.loads(_run(root, dvc, "exp", "show", "--json").stdout))
    grid = {(e["params"]["lora_r"], e["params"]["learning_rate"]) for e in exps.values()}
    assert grid == {(4, 0.001), (4, 0.004), (8, 0.001), (8, 0.004)}
    for e in exps.values():  # everything but the two swept values stays pinned
        assert e["params"]["max_steps"] == 4 and e["params"]["seed"] == 1234
        assert e["metrics"]["final_val_loss"] is not None
    # the runs really differ: another rank or learning rate is another trajectory
    assert len({round(e["metrics"]["final_val_loss"], 6) for e in exps.values()}) == 4
    # the sweep ran beside the workspace, not in it
    assert (root / "reports/metrics/train.json").read_text() == baseline_metrics
    table = _run(root, dvc, "exp", "show", "--no-pager", "--csv", "--drop", ".*",
                 "--keep", "Experiment|train.lora_r|train.learning_rate|final_val_loss").stdout
    assert table.count("\n") >= 5 and "final_val_loss" in table.splitlines()[0]
