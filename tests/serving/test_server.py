"""`serve`, as `python -m serving` runs it: the engine loop on the calling (main) thread, HTTP
on its own thread, SIGTERM received on the main thread and forwarded to the drain."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time

import httpx
import pytest

from serving.app import create_app
from serving.server import serve
from serving.state import build_state
from tests.serving.conftest import _listening_socket

MESSAGES = [{"role": "user", "content": "Summarize: stable, discharged home."}]


def _wait_ready(url: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "server did not come up"
        time.sleep(0.05)


@pytest.mark.timeout(120)
def test_engine_runs_on_the_main_thread_and_sigterm_drains(served, request):
    assert threading.current_thread() is threading.main_thread()  # pytest runs tests on it
    on_main: list[bool] = []
    # Every forward pass of the model's decoder, whichever batching path calls it (the
    # invariant passes call the decoder directly, the padded ones through the causal LM).
    hook = served.engine.model.get_base_model().get_decoder().register_forward_pre_hook(
        lambda module, args: on_main.append(threading.current_thread() is threading.main_thread()))
    request.addfinalizer(hook.remove)
    state = build_state(served.engine, served.bundle.manifest, served.parity, max_batch=8, max_queue=64,
                        api_key=None, request_timeout_s=120)
    sock = _listening_socket()
    host, port = sock.getsockname()
    url = f"http://{host}:{port}"
    seen: dict = {}

    def client() -> None:
        try:
            _wait_ready(url)
            model = state.model_id
            # Long enough to still be running when the signal has been handled.
            body = {"model": model, "messages": MESSAGES, "max_tokens": 200, "stream": True}
            with httpx.Client(base_url=url, timeout=60) as c, \
                    c.stream("POST", "/v1/chat/completions", json=body) as s:
                lines = s.iter_lines()
                for line in lines:
                    if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                        break
                os.kill(os.getpid(), signal.SIGTERM)  # lands on the main thread, inside the engine loop
                seen["rest"] = [line for line in lines if line.startswith("data: ")]
        except BaseException as exc:  # reported by the main thread's assertions
            seen["error"] = exc
            os.kill(os.getpid(), signal.SIGTERM)  # never leave serve() waiting

    # A SIGTERM that arrives after serve() has put the previous handler back must not end pytest.
    stray: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda sig, frame: stray.append(sig))
    try:
        worker = threading.Thread(target=client)
        worker.start()
        code = serve(create_app(state), state, host, port, sockets=[sock])
        handler_after = signal.getsignal(signal.SIGTERM)
        worker.join(30)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert "error" not in seen, seen.get("error")
    assert code == 0
    assert on_main and all(on_main), "a forward pass ran off the main thread"
    rest = seen["rest"]
    assert len(rest) > 3, "the stream had ended before the signal; the drain was not exercised"
    assert rest[-1] == "data: [DONE]"
    last = json.loads(rest[-2][6:])
    assert "choices" in last, last  # an error event instead says why
    assert last["choices"][0]["finish_reason"] in ("length", "stop")  # not cut short
    assert not stray, "SIGTERM reached the handler serve() should have replaced"
    assert getattr(handler_after, "__name__", "") == "<lambda>", "serve() did not restore the previous handler"


@pytest.mark.timeout(60)
def test_a_port_in_use_exits_1_instead_of_hanging(served):
    state = build_state(served.engine, served.bundle.manifest, served.parity, max_batch=8, max_queue=64,
                        api_key=None, request_timeout_s=60)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        host, port = taken.getsockname()
        assert serve(create_app(state), state, host, port) == 1


@pytest.mark.timeout(60)
def test_sigterm_landing_on_another_thread_still_stops_an_idle_server(served):
    # The kernel may hand a process-wide SIGTERM to any thread that does not block it (the HTTP
    # thread, a torch worker). Python runs the handler on the main thread only, so an engine loop
    # blocked without a timeout would never see it: `kill` would leave the server up. Send the
    # signal to a helper thread on purpose, with nothing queued.
    state = build_state(served.engine, served.bundle.manifest, served.parity, max_batch=8, max_queue=64,
                        api_key=None, request_timeout_s=60)
    sock = _listening_socket()
    host, port = sock.getsockname()
    timings: dict[str, float] = {}

    def client() -> None:
        _wait_ready(f"http://{host}:{port}")
        time.sleep(0.2)  # let the engine loop go back to waiting for work
        timings["signalled"] = time.monotonic()
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)  # this thread, not the main one

    def watchdog() -> None:
        if not finished.wait(20):
            timings["rescued"] = time.monotonic()
            state.batcher.drain()  # wakes the loop so the test ends either way

    finished = threading.Event()
    stray: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda sig, frame: stray.append(sig))
    try:
        threading.Thread(target=client, daemon=True).start()
        threading.Thread(target=watchdog, daemon=True).start()
        code = serve(create_app(state), state, host, port, sockets=[sock])
        finished.set()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert "rescued" not in timings, "the engine loop never woke to run the SIGTERM handler"
    assert code == 0 and not stray
    assert time.monotonic() - timings["signalled"] < 5
