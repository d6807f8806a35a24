"""Real servers for the serving tests: the tiny bundle, a real engine, uvicorn on a free port.

One engine and one golden file per session (the engine serializes its batches with a lock,
so several servers can share it); each test module starts the servers it needs with
`start_server` and they stop when the module ends.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.conftest import REPO

GOLDEN_PROMPTS = 2
GOLDEN_MAX_NEW_TOKENS = 4  # enough to compare token ids and log-probs; cheap on 2 cores


@dataclass
class Served:
    """What the serving tests share: the verified bundle, its engine, the golden file and the
    parity report the probe gave for it."""

    bundle: object
    engine: object
    golden_path: Path
    parity: object


@pytest.fixture(scope="session")
def served(tiny_pipeline, tmp_path_factory) -> Served:
    from pipeline.bundle.verify import verify_bundle
    from pipeline.engines.hf import HFEngine
    from pipeline.evaluate import golden_outputs
    from pipeline.evaluate.run import default_system_prompt
    from pipeline.suites import load_suite
    from serving.probe import load_golden, replay

    bundle = verify_bundle(tiny_pipeline["bundle"])
    engine = HFEngine.from_bundle(bundle)
    suite = load_suite(REPO / "eval_suites/discharge")
    system, _ = default_system_prompt(suite, bundle.manifest)
    prompts = golden_outputs(engine, suite.items(), system, GOLDEN_PROMPTS, GOLDEN_MAX_NEW_TOKENS)
    golden_path = tmp_path_factory.mktemp("golden") / "golden.json"
    from pipeline.platform import detect

    golden_path.write_text(json.dumps({"bundle_digest": bundle.manifest.bundle_digest, "engine": engine.name,
                                       "platform": detect(engine.model).as_record(), "prompts": prompts}),
                           encoding="utf-8")
    parity = replay(engine, load_golden(golden_path, bundle.manifest), bundle.manifest)
    return Served(bundle=bundle, engine=engine, golden_path=golden_path, parity=parity)


@pytest.fixture
def no_weights(monkeypatch):
    """Tripwire: fail the test if an engine is built (the refusal must come before weights)."""
    from pipeline.engines.hf import HFEngine

    def refuse(*_args, **_kwargs):
        raise AssertionError("an engine was built before the refusal")

    monkeypatch.setattr(HFEngine, "from_bundle", refuse)


@dataclass
class RunningServer:
    url: str
    state: object  # serving.state.ServingState
    server: object  # serving.server.DrainingServer
    thread: threading.Thread

    def stop(self, timeout_s: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)


# A server process binds the port it is given after this process picked it. Ports asked of the
# kernel (bind to 0) come from its ephemeral range, where two pytest-xdist workers may be handed
# the same closed port in that window; each worker draws instead from its own block below that
# range (the kernel's default starts at 32768), so no two workers can pick alike.
PORT_BLOCK, PORT_BASE = 1000, 20000


def free_port() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    low = PORT_BASE + PORT_BLOCK * (index % 12)
    for port in random.Random().sample(range(low, low + PORT_BLOCK), PORT_BLOCK):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # held by a server of this worker's, or by another program
            return port
    raise RuntimeError(f"no free port in {low}-{low + PORT_BLOCK - 1}")


@contextmanager
def serving_process(args: list[str], port: int, cwd: str | Path | None = None):
    """`python -m serving ARGS --port PORT` in its own process, without an API key; yields
    (process, base URL). Leaving the block sends SIGTERM (the server drains) and waits; a server
    still running after a failure is killed. The caller asserts on the exit code."""
    proc = subprocess.Popen([sys.executable, "-m", "serving", *args, "--port", str(port)], cwd=cwd,
                            env={**os.environ, "TAILGATE_API_KEY": ""}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        yield proc, f"http://127.0.0.1:{port}"
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def wait_ready(proc, url: str, timeout_s: float = 120.0):
    """Poll `python -m serving` in `proc` until /ready answers; fail with its stderr if it exits."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, proc.stderr.read()
        try:
            return httpx.get(f"{url}/ready", timeout=2)
        except httpx.TransportError:
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.2)


def _listening_socket() -> socket.socket:
    # Bound here and handed to uvicorn, so no other process can take the port in between.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def run_server(served: Served, *, parity: object | None = None, max_batch: int = 8, max_queue: int = 64,
               api_key: str | None = None, request_timeout_s: float = 60.0) -> RunningServer:
    from serving.app import create_app
    from serving.server import build_server
    from serving.state import build_state

    state = build_state(served.engine, served.bundle.manifest, parity or served.parity, max_batch=max_batch,
                        max_queue=max_queue, api_key=api_key, request_timeout_s=request_timeout_s)
    sock = _listening_socket()
    host, port = sock.getsockname()
    server = build_server(create_app(state), state, host, port)
    # Both loops on threads here (pytest owns the main thread); `python -m serving` runs the
    # engine loop on its main thread, which test_cli exercises.
    state.batcher.start()
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://{host}:{port}"
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    return RunningServer(url=url, state=state, server=server, thread=thread)


@pytest.fixture(scope="module")
def start_server(served) -> Iterator[Callable[..., RunningServer]]:
    """Start servers on the shared engine; all of them stop when the module ends."""
    running: list[RunningServer] = []

    def start(served_as: Served | None = None, **kwargs) -> RunningServer:
        srv = run_server(served_as or served, **kwargs)
        running.append(srv)
        return srv

    yield start
    for srv in running:
        srv.stop()


# One server per test module that asks for it (module scope), with the clients the API tests use.
@pytest.fixture(scope="module")
def api(start_server):
    return start_server()


@pytest.fixture(scope="module")
def model(api) -> str:
    return api.state.model_id


@pytest.fixture(scope="module")
def client(api):
    import httpx

    with httpx.Client(base_url=api.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def oai(api):
    import openai

    return openai.OpenAI(base_url=f"{api.url}/v1", api_key="not-needed", max_retries=0, timeout=60)
