"""`python -m serving`: refusals (tampered bundle: exit 2; golden mismatch: exit 3) and a real
start with --skip-parity-probe that /v1/models and /ready report, then SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import httpx
import pytest

from serving.__main__ import EXIT_BUNDLE_REFUSED, EXIT_PARITY_REFUSED, main
from tests.conftest import REPO
from tests.serving.conftest import free_port, wait_ready
from tests.tamper import flip_byte


@pytest.mark.parametrize("victim", ["adapter/adapter_model.safetensors", "base_q/model.safetensors"])
def test_tampered_bundle_exits_2_naming_the_file(bundle_copy, served, victim):
    flip_byte(bundle_copy / victim)
    proc = subprocess.run([sys.executable, "-m", "serving", "--allow-unreleased", "--bundle", str(bundle_copy),
                           "--golden", str(served.golden_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXIT_BUNDLE_REFUSED, proc.stderr
    assert f"refusing to serve: bundle file '{victim}': sha256 mismatch" in proc.stderr


def test_missing_bundle_file_is_refused_before_weights(bundle_copy, served, no_weights, capsys):
    (bundle_copy / "tokenizer/tokenizer.json").unlink()
    assert main(["--allow-unreleased", "--bundle", str(bundle_copy), "--golden", str(served.golden_path)]) == EXIT_BUNDLE_REFUSED
    assert "'tokenizer/tokenizer.json': missing" in capsys.readouterr().err


def test_missing_or_foreign_golden_exits_3_before_weights(served, tmp_path, no_weights, capsys):
    bundle = str(served.bundle.root)
    assert main(["--allow-unreleased", "--bundle", bundle, "--golden", str(tmp_path / "absent.json")]) == EXIT_PARITY_REFUSED
    assert "absent.json not found" in capsys.readouterr().err

    record = json.loads(served.golden_path.read_text())
    record["bundle_digest"] = "0" * 64
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps(record))
    assert main(["--allow-unreleased", "--bundle", bundle, "--golden", str(foreign)]) == EXIT_PARITY_REFUSED
    assert "is for bundle 0000000000000000" in capsys.readouterr().err


def test_golden_token_mismatch_exits_3_naming_prompt_and_position(served, tmp_path, capsys):
    record = json.loads(served.golden_path.read_text())
    prompt = record["prompts"][1]
    prompt["token_ids"][2] = (prompt["token_ids"][2] + 1) % len(served.engine.tokenizer)
    edited = tmp_path / "golden.json"
    edited.write_text(json.dumps(record))
    assert main(["--allow-unreleased", "--bundle", str(served.bundle.root), "--golden", str(edited)]) == EXIT_PARITY_REFUSED
    err = capsys.readouterr().err
    assert f"golden prompt {prompt['id']!r} (2/2): generated token ids differ at position 2" in err


def test_golden_logprob_drift_exits_3(served, tmp_path, capsys):
    record = json.loads(served.golden_path.read_text())
    record["prompts"][0]["logprobs"][1] += 0.01  # ten times the tolerance
    edited = tmp_path / "golden.json"
    edited.write_text(json.dumps(record))
    assert main(["--allow-unreleased", "--bundle", str(served.bundle.root), "--golden", str(edited)]) == EXIT_PARITY_REFUSED
    assert "(1/2): log-prob of token 1 differs by" in capsys.readouterr().err


def test_skip_parity_probe_serves_and_says_so(served, tmp_path):
    port = free_port()
    env = {**os.environ, "TAILGATE_API_KEY": ""}  # an empty key means no key
    proc = subprocess.Popen([sys.executable, "-m", "serving", "--allow-unreleased", "--bundle", str(served.bundle.root),
                             "--golden", str(tmp_path / "absent.json"), "--skip-parity-probe",
                             "--port", str(port)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        ready = wait_ready(proc, url, 120)
        assert ready.status_code == 200 and ready.json()["parity"] == {"status": "skipped"}
        [card] = httpx.get(f"{url}/v1/models").json()["data"]
        assert card["parity"] == {"status": "skipped"}
        assert card["bundle_digest"] == served.bundle.manifest.bundle_digest
        r = httpx.post(f"{url}/v1/completions", json={"model": card["id"], "prompt": "Hi", "max_tokens": 2},
                       timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 2
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    # SIGTERM is handled on the main thread (the engine loop's) and drains: a clean exit.
    assert proc.returncode == 0
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert any(e["msg"] == "parity_skipped" for e in events)
    assert any(e["msg"] == "request" and e.get("request_id") and e["path"] == "/v1/completions" for e in events)
    assert any(e["msg"] == "stopped" for e in events)


def test_allow_parity_mismatch_serves_and_reports_the_mismatch(served, tmp_path, monkeypatch):
    import serving.__main__ as entry

    record = json.loads(served.golden_path.read_text())
    record["prompts"][0]["logprobs"][1] += 0.01
    edited = tmp_path / "golden.json"
    edited.write_text(json.dumps(record))
    started = {}

    def no_server(app, state, host, port):
        started["state"] = state
        return 0

    monkeypatch.setattr(entry, "serve", no_server)
    assert main(["--allow-unreleased", "--bundle", str(served.bundle.root), "--golden", str(edited), "--allow-parity-mismatch"]) == 0
    parity = started["state"].model_card().parity
    assert parity["status"] == "mismatch_allowed" and "log-prob of token 1 differs" in parity["detail"]


def test_an_inexact_engine_gets_the_looser_logprob_tolerance(served):
    """Same drift (0.01 nats): refused for an exact engine, accepted for one that is not."""
    from serving.probe import INEXACT_LOGPROB_TOLERANCE_NATS, ParityError, load_golden, replay

    golden = load_golden(served.golden_path, served.bundle.manifest)
    golden.prompts[0].logprobs[1] += 0.01

    class Inexact:
        exact, name = False, "inexact"

        def __init__(self, engine):
            self.tokenizer, self._engine = engine.tokenizer, engine

        def generate(self, *a, **k):
            return self._engine.generate(*a, **k)

    with pytest.raises(ParityError, match="tolerance 0.001 for engine hf"):
        replay(served.engine, golden, served.bundle.manifest)
    report = replay(Inexact(served.engine), golden, served.bundle.manifest)
    assert report.status == "passed" and report.tolerance_nats == INEXACT_LOGPROB_TOLERANCE_NATS
    assert 0.009 < report.max_abs_logprob_diff < INEXACT_LOGPROB_TOLERANCE_NATS
