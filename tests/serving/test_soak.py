"""The soak benchmark, run short: the real `python -m benchmarks.soak` against a tiny release,
every kind of request in the mix sent, and each of its verdicts backed by what it counted."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks.soak import page
from pipeline.release.build import release
from tests.conftest import REPO
from tests.releases import make_evidence, release_params


@pytest.fixture(scope="module")
def tiny_release(tiny_pipeline, served, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("soak-release")
    params = release_params(tmp)
    evidence = make_evidence(tiny_pipeline["bundle"], tmp / "reports", golden=served.golden_path)
    release(params, tiny_pipeline["bundle"], evidence["eval"], evidence["gate"], evidence["golden"],
            tmp / "artifacts/release")
    return params, tmp / "artifacts/release"


@pytest.mark.slow
def test_a_one_minute_soak_passes_with_every_kind_of_request(tiny_release, tmp_path):
    params, root = tiny_release
    out = tmp_path / "soak.json"
    run = subprocess.run([sys.executable, "-m", "benchmarks.soak", "--release", str(root), "--minutes", "1",
                          "--sample-s", "5", "--baseline-minutes", "0.25", "--max-tokens", "8",
                          f"--server-arg=--public-key={params.signing.public_key}", "--server-arg=--require-signature",
                          "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.exists(), run.stdout + run.stderr
    result = json.loads(out.read_text())
    assert run.returncode == 0 and result["passed"], (result.get("checks"), result.get("problems"), run.stderr[-3000:])
    stats = result["stats"]
    for kind in ("chat", "stream", "completion", "disconnect"):
        assert stats.get(f"{kind}:200", 0) > 0, stats
    assert stats.get("oversize:400", 0) > 0 and stats.get("malformed:400", 0) > 0, stats
    assert not [k for k in stats if k.endswith(":error") or k.split(":")[-1].startswith("5")], stats
    assert stats["greedy_equal"] == sum(stats.get(f"{k}:200", 0) for k in ("chat", "stream", "completion"))
    assert result["end_metrics"] == {"queue_depth": 0.0, "in_flight": 0.0, "server_5xx": 0.0}
    assert len(result["samples"]) >= 12 and result["samples"][-1]["t_s"] >= 60  # every 5 s for a minute
    assert abs(result["rss_end_mib"] - result["rss_baseline_mib"]) <= 0.10 * result["rss_baseline_mib"]
    assert result["server_exit_code"] == 0 and result["parity"] == "passed"
    rows, lines = page(result)  # what RESULTS.md shows for it
    assert [r[3] for r in rows] == ["pass"] * 4 and f"{result['client_5xx']}" == rows[0][1] == "0"
