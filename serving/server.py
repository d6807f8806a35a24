"""Running the app under uvicorn, with a drain that starts the moment shutdown is asked for.

Uvicorn, on SIGTERM or SIGINT, closes its listening sockets, waits for open requests to finish
and only then runs the app's shutdown. `DrainingServer` also flips the batcher to draining at
the signal itself, so during that wait /ready already answers 503 (a load balancer stops
sending) and a request on a kept-alive connection is refused with 503 rather than started.
"""

from __future__ import annotations

from types import FrameType

import uvicorn
from fastapi import FastAPI

from serving.state import ServingState


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
