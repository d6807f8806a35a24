"""/v1/chat/completions and /v1/completions: whole responses and Server-Sent Events streams.

Both endpoints consume the same `pieces` stream, so a streamed answer is, piece for piece, the
text of the whole answer to the same request. A stream is `data: <json>\\n\\n` chunks ending in
`data: [DONE]`; an error after the stream started is sent as one `data: {"error": ...}` chunk,
as OpenAI does, because the 200 status line is already gone.
"""

from __future__ import annotations

import json
import time
from typing import AsyncIterator, Callable

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Send

from serving.errors import APIError
from serving.generation import (
    Finished, Prepared, chat_prompt_ids, check_model, completion_prompt_ids, pieces, prepare, submit,
)
from serving.logs import new_request_id, request_id_var
from serving.protocol import (
    ChatChoice, ChatChunkChoice, ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse,
    ChatResponseMessage, CompletionChoice, CompletionRequest, CompletionResponse, DeltaMessage,
)
from serving.state import ServingState


class EventStreamResponse(StreamingResponse):
    """An SSE response that runs `on_close` however sending ends: finished, client gone
    (uvicorn cancels the sending task; an ASGI 2.4 server fails the send instead) or a stream
    that never started. The request's row is cancelled there, so nobody's tokens are computed
    for a reader that left."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        super().__init__(content, headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
        self._on_close = on_close

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            self._on_close()


def _sse(payload: str) -> str:
    return f"data: {payload}\n\n"


async def _collect(state: ServingState, prepared: Prepared, request: Request, rid: str) -> tuple[str, Finished]:
    job = submit(state, prepared, rid)
    text: list[str] = []
    async for piece in pieces(state, job, prepared, request.is_disconnected):
        if isinstance(piece, Finished):
            return "".join(text), piece
        text.append(piece)
    raise RuntimeError("the generation stream ended without finishing")


def _request_id() -> str:
    # Set by the request middleware; a fresh one only when the app runs without it.
    return request_id_var.get() or new_request_id()


def _stream(state: ServingState, prepared: Prepared, rid: str,
            render: Callable[[str | Finished | None], list[str]]) -> EventStreamResponse:
    """Queue the request now (a full queue is still a plain 429, before any 200 is sent) and
    answer with its SSE lines: render(None) opens the stream, render(piece) continues it."""
    job = submit(state, prepared, rid)

    async def lines() -> AsyncIterator[str]:
        for payload in render(None):
            yield _sse(payload)
        try:
            async for piece in pieces(state, job, prepared):
                for payload in render(piece):
                    yield _sse(payload)
        except APIError as err:
            yield _sse(json.dumps(err.body()))
        yield _sse("[DONE]")

    return EventStreamResponse(lines(), on_close=job.cancel)


async def chat_completions(state: ServingState, req: ChatCompletionRequest, request: Request) -> Response:
    check_model(state, req.model)
    prepared = prepare(state, req, chat_prompt_ids(state, req), "messages")
    rid, created = _request_id(), int(time.time())
    common = {"id": f"chatcmpl-{rid}", "created": created, "model": state.model_id,
              "system_fingerprint": state.manifest.bundle_digest}
    if not req.stream:
        text, finished = await _collect(state, prepared, request, rid)
        body = ChatCompletionResponse(**common, usage=finished.usage(), choices=[ChatChoice(
            message=ChatResponseMessage(content=text), finish_reason=finished.finish_reason)])
        return JSONResponse(body.model_dump())

    def render(piece: str | Finished | None) -> list[str]:
        if piece is None:
            choice = ChatChunkChoice(delta=DeltaMessage(role="assistant", content=""))
        elif isinstance(piece, str):
            choice = ChatChunkChoice(delta=DeltaMessage(content=piece))
        else:
            out = [ChatCompletionChunk(**common, choices=[ChatChunkChoice(
                delta=DeltaMessage(), finish_reason=piece.finish_reason)]).model_dump_json()]
            if req.include_usage_chunk():
                out.append(ChatCompletionChunk(**common, choices=[], usage=piece.usage()).model_dump_json())
            return out
        return [ChatCompletionChunk(**common, choices=[choice]).model_dump_json()]

    return _stream(state, prepared, rid, render)


async def completions(state: ServingState, req: CompletionRequest, request: Request) -> Response:
    check_model(state, req.model)
    prepared = prepare(state, req, completion_prompt_ids(state, req), "prompt")
    rid, created = _request_id(), int(time.time())
    common = {"id": f"cmpl-{rid}", "created": created, "model": state.model_id,
              "system_fingerprint": state.manifest.bundle_digest}
    if not req.stream:
        text, finished = await _collect(state, prepared, request, rid)
        body = CompletionResponse(**common, usage=finished.usage(), choices=[CompletionChoice(
            text=text, finish_reason=finished.finish_reason)])
        return JSONResponse(body.model_dump())

    def render(piece: str | Finished | None) -> list[str]:
        if piece is None:
            return []
        if isinstance(piece, str):
            return [CompletionResponse(**common, choices=[CompletionChoice(text=piece)]).model_dump_json()]
        out = [CompletionResponse(**common, choices=[CompletionChoice(
            text="", finish_reason=piece.finish_reason)]).model_dump_json()]
        if req.include_usage_chunk():
            out.append(CompletionResponse(**common, choices=[], usage=piece.usage()).model_dump_json())
        return out

    return _stream(state, prepared, rid, render)
