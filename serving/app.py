"""The FastAPI application: thin routes over `handlers`, built per call (no app at import).

`create_app(state)` wires the routes, OpenAI-shaped error handlers, the request middleware
(request id, access log line, request metrics) and a lifespan that, on shutdown, lets the
engine loop finish everything already admitted. Whoever serves the app runs that loop
(serving/server.py: on the main thread).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving import handlers
from serving.errors import APIError, error_response, install_handlers, internal_error
from serving.logs import log_event, new_request_id, request_id_var
from serving.metrics import CONTENT_TYPE, ServingMetrics
from serving.protocol import ChatCompletionRequest, CompletionRequest
from serving.responses import ModelCard, ModelList
from serving.state import ServingState

log = logging.getLogger(__name__)


def get_state(request: Request) -> ServingState:
    return request.app.state.serving


async def require_api_key(request: Request) -> None:
    """With an API key configured, every /v1 and /metrics request must present it."""
    key = get_state(request).api_key
    if key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    # compare_digest: the time taken must not tell an attacker how much of the key matched.
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", code="invalid_api_key",
                       headers={"www-authenticate": "Bearer"})


v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])
ops = APIRouter()


@v1.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    return await handlers.chat_completions(get_state(request), body, request)


@v1.post("/completions")
async def completions(body: CompletionRequest, request: Request) -> Response:
    return await handlers.completions(get_state(request), body, request)


@v1.get("/models")
async def list_models(request: Request) -> ModelList:
    return ModelList(data=[get_state(request).model_card()])


@v1.get("/models/{model_id}")
async def get_model(model_id: str, request: Request) -> ModelCard:
    state = get_state(request)
    if model_id != state.model_id:
        raise APIError(404, f"model {model_id!r} is not served here; this server serves {state.model_id!r}",
                       param="model", code="model_not_found")
    return state.model_card()


@ops.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@ops.get("/ready")
async def ready(request: Request) -> Response:
    """Readiness: the parity probe passed (or was skipped on purpose) and we are not draining."""
    state = get_state(request)
    body = {"status": "draining" if state.batcher.draining else "ready", "model": state.model_id,
            "parity": state.parity.as_dict()}
    return JSONResponse(body, status_code=503 if state.batcher.draining else 200)


@ops.get("/metrics", dependencies=[Depends(require_api_key)])
async def metrics(request: Request) -> Response:
    return Response(get_state(request).metrics.render(), media_type=CONTENT_TYPE)


class RequestContext:
    """Pure ASGI middleware (it must not buffer SSE streams): gives each request an id
    (`x-request-id`), logs one line per request and feeds the request metrics. Latency runs to
    the last byte sent, so a stream's whole duration counts."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = new_request_id()
        token = request_id_var.set(rid)
        started = time.perf_counter()
        status = 500  # until a response starts
        started_response = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                status, started_response = message["status"], True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            log_event(log, "unhandled_error", logging.ERROR, error=repr(exc), exc_info=True)
            if not started_response:
                await error_response(internal_error())(scope, receive, send_with_id)
            # else: a stream broke midway; its status line is gone, closing it is all that is left
        finally:
            latency = time.perf_counter() - started
            # Label by the matched route's template (the router leaves it in the scope); unmatched
            # paths share one label, so a scanner cannot blow up the number of series.
            endpoint = getattr(scope.get("route"), "path", "other")
            self.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
            self.metrics.latency.labels(endpoint=endpoint).observe(latency)
            log_event(log, "request", method=scope["method"], path=scope["path"], status=status,
                      latency_s=round(latency, 4))
            request_id_var.reset(token)


def create_app(state: ServingState) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        log_event(log, "serving", model=state.model_id, bundle_digest=state.manifest.bundle_digest,
                  engine=state.engine.name, parity=state.parity.as_dict(), system_prompt=state.system_prompt,
                  max_batch=state.batcher.max_batch, max_queue=state.batcher.max_queue,
                  api_key_required=state.api_key is not None)
        yield
        # Uvicorn has already waited for open requests; this finishes any admitted leftovers.
        await asyncio.to_thread(state.batcher.stop, state.request_timeout_s)
        log_event(log, "stopped", model=state.model_id)

    app = FastAPI(title="tailgate", summary="OpenAI-compatible server for one verified tailgate bundle",
                  lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.serving = state
    install_handlers(app)
    app.include_router(v1)
    app.include_router(ops)
    app.add_middleware(RequestContext, metrics=state.metrics)
    return app
