"""`python -m serving.replay`: every golden item against a live server through the official
`openai` client, at concurrency, compared token for token.

The golden file here is made the way evaluation makes it (greedy, in batches) for a dozen suite
items; the server batches the concurrent requests continuously. With the batch-invariant engine
every item must come back identical, and a golden file that is wrong in one token must be
reported with that item and position.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO

ITEMS, MAX_NEW = 12, 6


@pytest.fixture(scope="module")
def golden(served, tmp_path_factory):
    from pipeline.evaluate import golden_outputs
    from pipeline.evaluate.run import default_system_prompt
    from pipeline.suites import load_suite

    suite = load_suite(REPO / "eval_suites/discharge")
    system, _ = default_system_prompt(suite, served.bundle.manifest)
    prompts = golden_outputs(served.engine, suite.items(), system, ITEMS, MAX_NEW)
    record = {"bundle_digest": served.bundle.manifest.bundle_digest, "engine": "hf", "prompts": prompts}
    path = tmp_path_factory.mktemp("replay") / "golden.json"
    path.write_text(json.dumps(record), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def server(start_server):
    return start_server(max_batch=8)


def test_every_item_replays_identically_at_concurrency(server, golden, tmp_path):
    from serving.replay import main

    out = tmp_path / "replay.json"
    assert main(["--golden", str(golden), "--base-url", f"{server.url}/v1", "--concurrency", "8",
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["items"] == ITEMS == result["identical"] and result["different"] == 0
    assert result["concurrency"] == 8 and result["prompt_ids_mismatched"] == 0
    assert all(i["identical"] and i["prompt_ids_match"] and i["first_difference"] is None for i in result["per_item"])


def test_a_different_token_is_reported_with_its_item_and_position(server, golden, tmp_path, capsys):
    from serving.replay import main

    record = json.loads(golden.read_text())
    target = next(g for g in record["prompts"] if len(g["token_ids"]) >= 3)
    target["token_ids"][2] = (target["token_ids"][2] + 1) % 100
    wrong = tmp_path / "golden.json"
    wrong.write_text(json.dumps(record))
    out = tmp_path / "replay.json"
    assert main(["--golden", str(wrong), "--base-url", f"{server.url}/v1", "--concurrency", "4",
                 "--out", str(out)]) == 1
    result = json.loads(out.read_text())
    assert result["different"] == 1 and result["identical"] == ITEMS - 1
    [bad] = [i for i in result["per_item"] if not i["identical"]]
    assert bad["id"] == target["id"] and bad["first_difference"] == 2
    assert f"{target['id']}" in capsys.readouterr().out


def test_golden_outputs_of_another_bundle_are_refused(server, golden, tmp_path, capsys):
    from serving.replay import main

    record = json.loads(golden.read_text())
    record["bundle_digest"] = "f" * 64
    other = tmp_path / "golden.json"
    other.write_text(json.dumps(record))
    assert main(["--golden", str(other), "--base-url", f"{server.url}/v1"]) == 2
    assert "serves bundle" in capsys.readouterr().err


def test_an_unreachable_server_is_exit_2(golden, capsys):
    from tests.serving.conftest import free_port
    from serving.replay import main

    assert main(["--golden", str(golden), "--base-url", f"http://127.0.0.1:{free_port()}/v1", "--timeout-s", "5"]) == 2
    assert "could not be asked" in capsys.readouterr().err


def test_first_difference():
    from serving.replay import first_difference

    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert first_difference([1, 2], [1, 2, 3]) == 2 and first_difference([1, 2, 3], [1]) == 1
    assert first_difference([], []) is None


def test_the_replay_report_is_shown_on_models_and_must_be_for_this_bundle(served, server, tmp_path):
    import httpx

    from serving.__main__ import _replay_report

    manifest = served.bundle.manifest
    path = tmp_path / "replay.json"
    path.write_text(json.dumps({"bundle_digest": manifest.bundle_digest, "items": 160, "identical": 160,
                                "different": 0, "concurrency": 8, "measured_at": "2026-12-03T00:00:00Z",
                                "load_avg_before": [1.0, 1.0, 1.0], "per_item": []}))
    summary = _replay_report(str(path), manifest)
    assert summary == {"items": 160, "identical": 160, "different": 0, "concurrency": 8,
                       "measured_at": "2026-12-03T00:00:00Z"}
    server.state.replay = summary
    try:
        card = httpx.get(f"{server.url}/v1/models").json()["data"][0]
        assert card["replay"] == summary and card["engine"]["batch_invariant"] is True
    finally:
        server.state.replay = None
    path.write_text(json.dumps({"bundle_digest": "0" * 64, "items": 1}))
    with pytest.raises(ValueError, match="is for bundle"):
        _replay_report(str(path), manifest)


def test_a_port_taken_before_the_server_binds_it_is_replaced(served, tiny_pipeline, monkeypatch):
    """`launched_server` (the release's replay, attestation) picks a free port and closes it
    before the server binds it; a port another process took in between makes the server exit,
    and another port is tried, a bounded number of times."""
    import socket

    import httpx

    import serving.replay as replay
    from serving.replay import ReplayError, launched_server

    args = ["--allow-unreleased", "--golden", str(served.golden_path)]
    real = replay._free_port
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        handed = iter([taken])
        monkeypatch.setattr(replay, "_free_port", lambda: next(handed, None) or real())
        with launched_server(str(tiny_pipeline["bundle"]), args) as url:
            assert f":{taken}/" not in url
            assert httpx.get(f"{url}/models", timeout=10).status_code == 200
        monkeypatch.setattr(replay, "BIND_ATTEMPTS", 1)
        handed = iter([taken])
        with pytest.raises(ReplayError, match="exited"):
            with launched_server(str(tiny_pipeline["bundle"]), args):
                pass
