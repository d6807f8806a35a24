"""Running the app: HTTP on a thread, the engine loop on the main thread, one drain for both.

Why the engine gets the main thread: torch's CPU kernels run on an OpenMP thread team, and on
this 2-core machine one 32-token `engine.generate` measured 1.6-2.1 s on the main thread and
3.5 s on another thread (a batch of 8: 4.0-4.4 s against 6.1 s); setting the thread count on
the worker or changing OpenMP's wait policy did not close the gap. The event loop only parses requests and moves tokens, so it is the
one that can live on a worker thread.

Uvicorn, on SIGTERM or SIGINT, closes its listening sockets, waits for open requests to finish
and only then runs the app's shutdown. Signal handlers can only be installed on the main
thread, so `serve` installs them there and forwards them to the server on its thread. The
kernel may still deliver the signal to another thread, which only flags it for the main one;
every wait on the main thread is therefore timed (`IDLE_WAKE_S`), or `kill` could leave an idle
server up until its next request.
`DrainingServer` also flips the batcher to draining at the signal itself, so during that wait
/ready already answers 503 (a load balancer stops sending) and a request on a kept-alive
connection is refused with 503 rather than started.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from types import FrameType

import uvicorn
from fastapi import FastAPI

from serving.batcher import IDLE_WAKE_S
from serving.logs import log_event
from serving.state import ServingState

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServingState) -> None:
        super().__init__(config)
        self.serving_state = state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.serving_state.batcher.drain()
        super().handle_exit(sig, frame)


def build_server(app: FastAPI, state: ServingState, host: str, port: int) -> DrainingServer:
    config = uvicorn.Config(
        app, host=host, port=port,
        log_config=None,  # keep serving's JSON log lines; uvicorn would install its own format
        access_log=False,  # the request middleware writes the access line, with the request id
        timeout_graceful_shutdown=int(state.request_timeout_s) + 1,  # no admitted request outlives its timeout
        server_header=False,
    )
    return DrainingServer(config, state)


def serve(app: FastAPI, state: ServingState, host: str, port: int,
          sockets: list[socket.socket] | None = None) -> int:
    """Serve until SIGTERM/SIGINT has drained everything admitted; 0, or 1 if HTTP never started.

    Call from the main thread: it runs the engine loop itself and returns after the HTTP thread
    has finished its graceful shutdown.
    """
    server = build_server(app, state, host, port)

    def run_http() -> None:
        try:
            server.run(sockets=sockets)
        except BaseException:  # uvicorn exits via SystemExit when it cannot bind
            log.exception("the HTTP server stopped with an error")
        finally:
            # However HTTP ends (shutdown, bind failure), the engine loop must not wait for
            # requests that can no longer arrive.
            state.batcher.drain()

    previous = {sig: signal.signal(sig, server.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
    http = threading.Thread(target=run_http, name="tailgate-http")
    http.start()
    try:
        state.batcher.run()
        while http.is_alive():  # timed, like the engine loop's waits, so a second signal still runs
            http.join(IDLE_WAKE_S)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        log_event(log, "http_failed", logging.ERROR, host=host, port=port)
        return 1
    return 0
