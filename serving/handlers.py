"""/v1/chat/completions and /v1/completions: whole responses and Server-Sent Events streams.

Both endpoints consume the same `pieces` stream, so a streamed answer is, piece for piece, the
text of the whole answer to the same request, log-probs included. A stream is
`data: <json>\\n\\n` chunks ending in `data: [DONE]`; an error after the stream started is sent
as one `data: {"error": ...}` chunk, as OpenAI does, because the 200 status line is already
gone. Chunks carry a `usage` key only when the client asked for stream_options.include_usage:
then it is null on every chunk but the last, which carries the totals and no choices (the
OpenAPI spec's wording; without the option the key is absent). With vLLM's return_token_ids
the prompt's and the completion's token ids come along (placement: serving/token_ids.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from typing import AsyncIterator, Callable, Sequence

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Send

from serving.batcher import Job
from serving.errors import APIError
from serving.generation import (
    Finished, Piece, Prepared, PromptScores, chat_prompt_ids, check_model, completion_prompt_ids, pieces, prepare,
    submit_all,
)
from serving.logprobs import TokenLogprob, chat_logprobs, completion_logprobs, token_offsets
from serving.logs import new_request_id, request_id_var
from serving.protocol import ChatCompletionRequest, CompletionRequest
from serving.responses import (
    ChatChoice, ChatChunkChoice, ChatCompletionChunk, ChatCompletionResponse, ChatResponseMessage, CompletionChoice,
    CompletionResponse, DeltaMessage, Usage,
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


def _chunk_json(chunk: ChatCompletionChunk | CompletionResponse, with_usage: bool) -> str:
    return chunk.model_dump_json(exclude=None if with_usage else {"usage"})


def _ids(wanted: bool, ids: Sequence[int]) -> list[int] | None:
    """A token-id field's value: None (so the field is left out) unless return_token_ids asked."""
    return list(ids) if wanted else None


class Collected:
    """One prompt's whole answer: text, the generated tokens' ids and log-probs, the prompt's scores."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.token_ids: list[int] = []
        self.logprobs: list[TokenLogprob] = []
        self.prompt: tuple[TokenLogprob, ...] = ()
        self.finished: Finished | None = None


async def _collect(state: ServingState, job: Job | None, prepared: Prepared, request: Request) -> Collected:
    out = Collected()
    async for piece in pieces(state, job, prepared, request.is_disconnected):
        if isinstance(piece, Finished):
            out.finished = piece
            return out
        if isinstance(piece, PromptScores):
            out.prompt = piece.tokens
            continue
        out.text.append(piece.text)
        out.token_ids.extend(piece.token_ids)
        out.logprobs.extend(piece.logprobs)
    raise RuntimeError("the generation stream ended without finishing")


async def _collect_all(state: ServingState, prepared: Sequence[Prepared], request: Request,
                       rid: str) -> list[Collected]:
    """Queue every prompt (they batch together) and wait for all; the first failure cancels
    the rest, so no row keeps computing for an answer that will not be sent."""
    jobs = submit_all(state, list(prepared), rid)
    tasks = [asyncio.create_task(_collect(state, job, p, request)) for job, p in zip(jobs, prepared)]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


def _request_id() -> str:
    # Set by the request middleware; a fresh one only when the app runs without it.
    return request_id_var.get() or new_request_id()


def _stream(state: ServingState, prepared: Prepared, rid: str,
            render: Callable[[Piece | PromptScores | Finished | None], list[str]]) -> EventStreamResponse:
    """Queue the request now (a full queue is still a plain 429, before any 200 is sent) and
    answer with its SSE lines: render(None) opens the stream, render(piece) continues it."""
    [job] = submit_all(state, [prepared], rid)

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

    return EventStreamResponse(lines(), on_close=job.cancel if job is not None else lambda: None)


async def chat_completions(state: ServingState, req: ChatCompletionRequest, request: Request) -> Response:
    check_model(state, req.model)
    want_logprobs, want_ids = bool(req.logprobs), bool(req.return_token_ids)
    prepared = prepare(state, req, chat_prompt_ids(state, req), "messages", logprobs=want_logprobs,
                       top_logprobs=req.top_logprobs or 0, token_ids=want_ids)
    rid, created = _request_id(), int(time.time())
    common = {"id": f"chatcmpl-{rid}", "created": created, "model": state.model_id,
              "system_fingerprint": state.manifest.bundle_digest}

    def logprobs(items: Sequence[TokenLogprob]):
        return chat_logprobs(items, state.token_strings) if want_logprobs else None

    if not req.stream:
        [got] = await _collect_all(state, [prepared], request, rid)
        assert got.finished is not None
        body = ChatCompletionResponse(**common, usage=got.finished.usage(), choices=[ChatChoice(
            message=ChatResponseMessage(content="".join(got.text)), finish_reason=got.finished.finish_reason,
            logprobs=logprobs(got.logprobs), token_ids=_ids(want_ids, got.token_ids))],
            prompt_token_ids=_ids(want_ids, prepared.prompt_ids))
        return JSONResponse(body.model_dump())

    with_usage = req.include_usage_chunk()

    def render(piece: Piece | PromptScores | Finished | None) -> list[str]:
        if piece is None:  # the role; the prompt's ids go once, here, as vLLM sends them
            return [_chunk_json(ChatCompletionChunk(**common, prompt_token_ids=_ids(want_ids, prepared.prompt_ids),
                                                    choices=[ChatChunkChoice(delta=DeltaMessage(
                                                        role="assistant", content=""))]), with_usage)]
        if isinstance(piece, Piece):
            choice = ChatChunkChoice(delta=DeltaMessage(content=piece.text), logprobs=logprobs(piece.logprobs),
                                     token_ids=_ids(want_ids, piece.token_ids))
        elif isinstance(piece, Finished):
            out = [_chunk_json(ChatCompletionChunk(**common, choices=[ChatChunkChoice(
                delta=DeltaMessage(), finish_reason=piece.finish_reason, token_ids=_ids(want_ids, ()))]), with_usage)]
            if with_usage:
                out.append(_chunk_json(ChatCompletionChunk(**common, choices=[], usage=piece.usage()), True))
            return out
        else:  # prompt scores: never asked for on chat
            return []
        return [_chunk_json(ChatCompletionChunk(**common, choices=[choice]), with_usage)]

    return _stream(state, prepared, rid, render)


def _echo_text(state: ServingState, prompt: str | list[int]) -> str:
    if isinstance(prompt, str):
        return prompt
    return state.engine.tokenizer.decode(prompt, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _prompt_items(state: ServingState, scores: Sequence[TokenLogprob]) -> list[TokenLogprob]:
    """The prompt's scores with each token's offset in the echoed text."""
    offsets = token_offsets(state.engine.tokenizer, [t.token_id for t in scores])
    return [replace(t, offset=o) for t, o in zip(scores, offsets)]


async def completions(state: ServingState, req: CompletionRequest, request: Request) -> Response:
    check_model(state, req.model)
    prompts = req.prompts()
    if req.stream and len(prompts) > 1:
        raise APIError(400, "streaming serves one prompt per request; send the prompts separately or without "
                            "stream", param="prompt")
    k, echo, want_ids = req.logprobs, bool(req.echo), bool(req.return_token_ids)
    prepared = [prepare(state, req, completion_prompt_ids(state, p), "prompt", logprobs=k is not None,
                        top_logprobs=k or 0, score_prompt=echo and k is not None, token_ids=want_ids)
                for p in prompts]
    rid, created = _request_id(), int(time.time())
    common = {"id": f"cmpl-{rid}", "created": created, "model": state.model_id,
              "system_fingerprint": state.manifest.bundle_digest}
    strings = state.token_strings

    def shifted(items: Sequence[TokenLogprob], base: int) -> list[TokenLogprob]:
        return [replace(t, offset=t.offset + base) for t in items]

    if not req.stream:
        choices, usage = [], Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)
        collected = await _collect_all(state, prepared, request, rid)
        for i, (prompt, prep, got) in enumerate(zip(prompts, prepared, collected)):
            assert got.finished is not None
            head = _echo_text(state, prompt) if echo else ""
            text = head + "".join(got.text)
            logprobs = None
            if k is not None:
                items = _prompt_items(state, got.prompt) if echo else []
                tail = [*got.logprobs, *([got.finished.stop_token] if got.finished.stop_token else [])]
                logprobs = completion_logprobs([*items, *shifted(tail, len(head))], strings, text_len=len(text))
            # token_ids are the generated ones only, echo or not (the prompt's have their own field), as in vLLM.
            choices.append(CompletionChoice(index=i, text=text, finish_reason=got.finished.finish_reason,
                                            logprobs=logprobs, prompt_token_ids=_ids(want_ids, prep.prompt_ids),
                                            token_ids=_ids(want_ids, got.token_ids)))
            u = got.finished.usage()
            usage = Usage(prompt_tokens=usage.prompt_tokens + u.prompt_tokens,
                          completion_tokens=usage.completion_tokens + u.completion_tokens,
                          total_tokens=usage.total_tokens + u.total_tokens)
        return JSONResponse(CompletionResponse(**common, usage=usage, choices=choices).model_dump())

    [prompt], [prep] = prompts, prepared
    head = _echo_text(state, prompt) if echo else ""
    with_usage = req.include_usage_chunk()
    sent = len(head)  # characters of text sent so far: where the next piece starts
    opened = False  # whether a choice chunk went out: the first one carries the prompt's ids

    def chunk(text: str, items: Sequence[TokenLogprob] | None = None, finish: Finished | None = None,
              ids: Sequence[int] = ()) -> str:
        nonlocal opened
        logprobs = None if items is None else completion_logprobs(items, strings, text_len=sent)
        prompt_ids, opened = (None if opened else _ids(want_ids, prep.prompt_ids)), True
        return _chunk_json(CompletionResponse(**common, choices=[CompletionChoice(
            text=text, logprobs=logprobs, finish_reason=finish.finish_reason if finish else None,
            prompt_token_ids=prompt_ids, token_ids=_ids(want_ids, ids))]), with_usage)

    def render(piece: Piece | PromptScores | Finished | None) -> list[str]:
        nonlocal sent
        if piece is None:
            # The echo opens the stream, unless it waits for the prompt's scores to go with it.
            return [chunk(head)] if echo and not prep.score_prompt else []
        if isinstance(piece, PromptScores):
            return [chunk(head, _prompt_items(state, piece.tokens))]
        if isinstance(piece, Piece):
            sent += len(piece.text)
            return [chunk(piece.text, shifted(piece.logprobs, len(head)) if k is not None else None,
                          ids=piece.token_ids)]
        stop = [piece.stop_token] if k is not None and piece.stop_token else None
        out = [chunk("", shifted(stop, len(head)) if stop else None, finish=piece)]
        if with_usage:
            out.append(_chunk_json(CompletionResponse(**common, choices=[], usage=piece.usage()), True))
        return out

    return _stream(state, prep, rid, render)
