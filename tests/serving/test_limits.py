"""Admission and shutdown over a real server: API key, full queue (429) and client disconnects,
request timeout (504), and draining (503 for new work while admitted work finishes)."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import openai
import pytest

KEY = "test-key-0123456789"
AUTH = {"authorization": f"Bearer {KEY}"}
MESSAGES = [{"role": "user", "content": "Summarize: stable, discharged home."}]


@pytest.fixture(scope="module")
def guarded(start_server):
    """One request runs, one may wait; an API key is required. (With a larger batch a second
    request joins the running batch at once instead of waiting.)"""
    return start_server(max_batch=1, max_queue=1, api_key=KEY)


def gauge(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics", headers=AUTH).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def first_content(lines) -> str:
    """Read SSE lines until the first one carrying generated text."""
    for line in lines:
        if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
            return line
    raise AssertionError("stream ended without content")


def test_api_key_is_required_when_set(guarded):
    model = guarded.state.model_id
    with httpx.Client(base_url=guarded.url, timeout=30) as c:
        body = {"model": model, "messages": MESSAGES, "max_tokens": 1}
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": KEY}):
            r = c.post("/v1/chat/completions", json=body, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert c.get("/v1/models").status_code == 401
        assert c.get("/metrics").status_code == 401
        # Liveness and readiness stay open for orchestrators.
        assert c.get("/health").status_code == 200 and c.get("/ready").status_code == 200
        assert c.post("/v1/chat/completions", json=body, headers=AUTH).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{guarded.url}/v1", api_key="wrong", max_retries=0).models.list()
    good = openai.OpenAI(base_url=f"{guarded.url}/v1", api_key=KEY, max_retries=0)
    assert good.models.list().data[0].id == model


def test_full_queue_is_429_and_a_disconnect_cancels_the_row(guarded):
    model = guarded.state.model_id
    long_request = {"model": model, "messages": MESSAGES, "max_tokens": 900, "stream": True}
    waiting: dict[str, httpx.Response] = {}
    with httpx.Client(base_url=guarded.url, timeout=60, headers=AUTH) as c:
        tokens_before = gauge(c, "tailgate_generated_tokens_total")
        with c.stream("POST", "/v1/chat/completions", json=long_request) as running:
            # Keep the line iterator referenced: dropping it closes httpx's connection, which
            # the server (rightly) takes for a disconnect.
            lines = running.iter_lines()
            first_content(lines)  # the long request is in the engine now

            def queued() -> None:
                with httpx.Client(base_url=guarded.url, timeout=60, headers=AUTH) as c2:
                    waiting["r"] = c2.post("/v1/chat/completions",
                                           json={"model": model, "messages": MESSAGES, "max_tokens": 2})

            t = threading.Thread(target=queued)
            t.start()
            deadline = time.monotonic() + 10
            while gauge(c, "tailgate_queue_depth") < 1:
                assert time.monotonic() < deadline, "second request never queued"
                time.sleep(0.02)
            full = c.post("/v1/chat/completions", json={"model": model, "messages": MESSAGES, "max_tokens": 1})
            assert full.status_code == 429
            assert full.json()["error"]["code"] == "queue_full" and full.headers["retry-after"] == "1"
        # Leaving the block closed the stream: the server must cancel that row, or the queued
        # request would wait for all 900 tokens.
        t.join(30)
        assert waiting["r"].status_code == 200
        generated = gauge(c, "tailgate_generated_tokens_total") - tokens_before
        assert generated < 900, f"the abandoned request kept generating ({generated} tokens)"
        assert gauge(c, "tailgate_queue_depth") == 0


def test_request_timeout_is_504(start_server):
    srv = start_server(request_timeout_s=0.5)
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        r = c.post("/v1/chat/completions", json={"model": srv.state.model_id, "messages": MESSAGES,
                                                 "max_tokens": 900})
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"


def test_sigterm_drains_new_work_is_503_admitted_work_finishes(start_server):
    srv = start_server()
    model = srv.state.model_id
    request = {"model": model, "messages": MESSAGES, "max_tokens": 24, "stream": True}
    with httpx.Client(base_url=srv.url, timeout=60) as c, c.stream("POST", "/v1/chat/completions", json=request) as s:
        lines = s.iter_lines()
        first_content(lines)
        # The first thing the SIGTERM handler does; checked before uvicorn closes its listener.
        srv.state.batcher.drain()
        with httpx.Client(base_url=srv.url, timeout=30) as other:
            assert other.get("/ready").status_code == 503
            refused = other.post("/v1/chat/completions", json={**request, "stream": False})
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "draining"
        srv.server.handle_exit(signal.SIGTERM, None)
        rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]"
    assert json.loads(rest[-2][6:])["choices"][0]["finish_reason"] in ("length", "stop")  # not cut short
    srv.thread.join(30)
    assert not srv.thread.is_alive(), "server did not stop after draining"
