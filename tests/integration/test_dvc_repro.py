"""The whole chain through real DVC on the tiny model: repro, no-op repro, failing gate.

One module-scoped fixture builds the project and runs the first `dvc repro`; each test reads
only what that fixture built, and the test that changes params and reruns does so on its own
copy of the reproduced project, so every test passes alone (`-k`) and in any order.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.release import Registry, open_release
from tests.conftest import REPO, build_tiny_model_dir, small_raw, tiny_params
from tests.hostile import expected, expected_outcomes, make_hostile_dir

pytestmark = pytest.mark.slow


def _dvc(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    return subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    """A tiny project after its first `dvc repro`: (root, params path, registry, the run).

    Tests read it and never change it; one that needs to change it works on a copy
    (`_copy_project`)."""
    root = tmp_path_factory.mktemp("project")
    for name in ("stages", "pipeline", "serving", "eval_suites"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    small_raw(root / "data/raw", n=40)
    build_tiny_model_dir(root / "tiny_hf")
    # the release stage's replay under load has its own tests (tests/serving/test_release_serving.py,
    # the triage example); here it would only add a server start to every repro of the chain
    params_path = tiny_params(root, curate={"max_seq_len_tokens": 4096}, release={"replay": {"enabled": False}})
    registry = tmp_path_factory.mktemp("registry")
    assert _dvc(root, "init", "--no-scm", "-q").returncode == 0
    _dvc(root, "config", "core.analytics", "false")
    assert _dvc(root, "remote", "add", "releases", str(registry)).returncode == 0
    run = _dvc(root, "repro")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return root, params_path, registry, run


def _copy_project(src: Path, registry: Path, dest: Path) -> tuple[Path, Path]:
    """A reproduced project and its registry copied to dest, the copy's remote pointed at the
    copied registry: a test may change and rerun it without touching the fixture's project."""
    root = dest / "project"
    # .dvc/tmp is DVC's state (inode/mtime caches, locks) of the source tree: the copy builds its own
    shutil.copytree(src, root, symlinks=True, ignore=lambda d, names: ["tmp"] if Path(d) == src / ".dvc" else [])
    shutil.copytree(registry, dest / "registry", symlinks=True)
    assert _dvc(root, "remote", "modify", "releases", "url", str(dest / "registry")).returncode == 0
    return root, root / "params.yaml"


def test_repro_runs_every_stage_and_the_gate_passes(reproduced):
    root, _, _, run = reproduced
    for stage in ("base", "quantize", "curate", "train", "bundle", "evaluate", "gate", "release"):
        assert f"Running stage '{stage}'" in run.stdout
    assert "## Checks, in order" in (root / "reports/curate.md").read_text()
    gate = json.loads((root / "reports/gate.json").read_text())
    manifest = json.loads((root / "artifacts/bundle/manifest.json").read_text())
    assert gate["passed"] and gate["bundle_digest"] == manifest["bundle_digest"]
    assert json.loads((root / "reports/eval.json").read_text())["bundle_digest"] == manifest["bundle_digest"]

    # the run ends with a signed release in the registry, which opens from a fresh pull
    released = json.loads((root / "reports/release.json").read_text())
    assert released["record"]["bundle_digest"] == manifest["bundle_digest"]
    registry = Registry.from_name_or_url("releases", root)
    assert [p.bundle_digest for p in registry.list()] == [manifest["bundle_digest"]]
    fresh = registry.pull(manifest["bundle_digest"], root.parent / "fresh" / manifest["bundle_digest"])
    opened = open_release(fresh, public_key=root / ".tailgate/signing/release.pub", require_signature=True)
    assert opened.signature == "verified"

    before = (root / "reports/gate.json").read_bytes()
    again = _dvc(root, "repro")
    # nothing is stale but the gate, which asks the registry on every repro (dvc.yaml: always_changed);
    # its decision is the same bytes (the bundle's own release is never its baseline), so release does not rerun
    assert again.returncode == 0 and re.findall(r"Running stage '([^']+)'", again.stdout) == ["gate"]
    assert (root / "reports/gate.json").read_bytes() == before
    assert json.loads(before)["baseline"]["note"].startswith("no previous release: no regression check")

    metrics = _dvc(root, "metrics", "show", "--json")
    assert metrics.returncode == 0
    shown = json.loads(metrics.stdout)
    assert any("reports/metrics/gate.json" in str(v) for v in shown.values())
    eval_metrics = json.loads((root / "reports/metrics/eval.json").read_text())
    assert {"delta_nll_p99", "flip_rate", "worst_slice_drop"} <= set(eval_metrics["damage"])

    # every declared plot renders, the two-column damage plots included
    plots = _dvc(root, "plots", "show", "--json")
    assert plots.returncode == 0, plots.stderr[-2000:]
    rendered = json.loads(plots.stdout)
    assert not rendered.get("errors"), rendered["errors"]
    for name in ("curate_lengths", "reports/plots/curate_lengths.png", "nll_quantiles", "length_buckets",
                 "reports/plots/eval_slices.csv", "reports/plots/train_loss.csv", "reports/plots/nll_cdf.png"):
        assert rendered["data"].get(name), (name, sorted(rendered["data"]))


def test_a_failing_rule_fails_the_pipeline(reproduced, tmp_path):
    src, src_params, registry, _ = reproduced
    root, params_path = _copy_project(src, registry, tmp_path)
    assert params_path.read_bytes() == src_params.read_bytes()
    gate = json.loads((root / "reports/gate.json").read_text())
    assert gate["passed"]  # the copy starts from the passing run
    assert len(Registry.from_name_or_url("releases", root).list()) == 1
    params = yaml.safe_load(params_path.read_text())
    rule = next(r for r in params["gate"]["rules"] if r["metric"] == "overall.format_valid")
    rule["min"] = 1.0  # a random tiny model writes no valid summaries
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    run = _dvc(root, "repro")
    assert run.returncode != 0
    assert "Running stage 'gate'" in run.stdout and "Running stage 'train'" not in run.stdout
    assert "Running stage 'release'" not in run.stdout  # a failed gate releases nothing
    assert len(Registry.from_name_or_url("releases", root).list()) == 1
    gate = json.loads((root / "reports/gate.json").read_text())
    assert not gate["passed"] and gate["failed"] == ["overall.format_valid"]


def _project_copy(root: Path) -> None:
    for name in ("stages", "pipeline", "serving", "eval_suites"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    build_tiny_model_dir(root / "tiny_hf")


def test_dvc_repro_curate_over_hostile_inputs_accounts_for_every_line(tmp_path):
    """tests/data/hostile as a project's raw data, through `dvc repro curate` as a user runs it."""
    _project_copy(tmp_path)
    make_hostile_dir(tmp_path / "data/raw")
    spec = expected()["params"]
    tiny_params(tmp_path, curate={**spec, "raw_glob": [*spec["raw_glob"], "*.jsonl.gz"]})
    assert _dvc(tmp_path, "init", "--no-scm", "-q").returncode == 0
    run = _dvc(tmp_path, "repro", "curate")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Running stage 'curate'" in run.stdout and "Running stage 'train'" not in run.stdout
    got = {}
    for split in ("train", "val"):
        for line in (tmp_path / f"data/curated/{split}.jsonl").read_text().splitlines():
            source, n = json.loads(line)["id"].rsplit(":", 1)
            got[(source, int(n))] = "kept"
    for line in (tmp_path / "data/curated/quarantine.jsonl").read_text().splitlines():
        q = json.loads(line)
        got[(q["source"], q["line"])] = q["reason"]
    assert got == expected_outcomes()
    report = json.loads((tmp_path / "reports/curate.json").read_text())
    assert report["input_lines"] == len(got) and report["kept"] + report["rejected"] == len(got)
