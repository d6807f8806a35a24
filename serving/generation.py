"""The serving logic under the routes: a validated request becomes prompt ids and sampling
parameters (checked against the context), a job on the batcher, and a stream of text pieces
(with the ids of the tokens each piece completes, and their log-probs when asked for).

All tokenizer work (encoding prompts, decoding outputs) happens here, on the event loop's
thread: a fast tokenizer is not safe to use from two threads at once, and the batch worker
only ever sees token ids.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from typing import AsyncIterator, Awaitable, Callable

from jinja2 import TemplateError

from pipeline.chat import ChatFormatError, encode_prompt, with_system
from pipeline.engines.base import GenerationRequest, SamplingParams
from serving.batcher import DoneEvent, Draining, Event, Job, PromptEvent, QueueFull, TokenEvent
from serving.errors import APIError, internal_error
from serving.logprobs import TokenLogprob
from serving.logs import log_event
from serving.protocol import ChatCompletionRequest, CompletionRequest, FinishReason
from serving.responses import Usage
from serving.state import ServingState
from serving.text import TextAssembler

log = logging.getLogger(__name__)

# How often a plain (non-streaming) request checks whether its client is still connected;
# a streaming one learns it from the server at once.
DISCONNECT_POLL_S = 0.5
MIN_SAMPLING_TEMPERATURE = 1e-5


@dataclass(frozen=True)
class Prepared:
    prompt_ids: list[int]
    sampling: SamplingParams
    stop_strings: tuple[str, ...]
    logprobs: bool = False  # record each generated token's log-prob
    top_logprobs: int = 0  # and this many alternatives per position
    score_prompt: bool = False  # and the prompt's log-probs (completions' echo)
    token_ids: bool = False  # return_token_ids: every consumed id must reach a piece, even a textless one


@dataclass(frozen=True)
class Piece:
    """Newly released text, and the log-probs of the tokens it completes (when asked for): a
    token whose text is held back (half a character, a possible stop string) travels with the
    piece that finally releases it, so the pieces' log-probs cover every consumed token."""

    text: str
    logprobs: tuple[TokenLogprob, ...] = ()
    token_ids: tuple[int, ...] = ()  # the ids it completes, held back the same way as their log-probs


@dataclass(frozen=True)
class PromptScores:
    tokens: tuple[TokenLogprob, ...]


@dataclass(frozen=True)
class Finished:
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    stop_token: TokenLogprob | None = None  # the stop id that ended it, if the engine loop saw it

    def usage(self) -> Usage:
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens,
                     total_tokens=self.prompt_tokens + self.completion_tokens)


def check_model(state: ServingState, name: str) -> None:
    if name != state.model_id:
        raise APIError(404, f"model {name!r} is not served here; this server serves {state.model_id!r} "
                            "(see /v1/models)", param="model", code="model_not_found")


def chat_prompt_ids(state: ServingState, req: ChatCompletionRequest) -> list[int]:
    """The request's prompt ids, with the bundle's pinned system prompt in front when the request
    brings no system message (one that does is served as sent)."""
    messages = with_system([{"role": m.role, "content": m.text()} for m in req.messages], state.system_prompt)
    try:
        return encode_prompt(state.engine.tokenizer, messages)
    except (ChatFormatError, TemplateError) as exc:
        raise APIError(400, f"messages cannot be encoded: {exc}", param="messages") from None


def completion_prompt_ids(state: ServingState, prompt: str | list[int]) -> list[int]:
    if isinstance(prompt, str):
        # The text is the whole prompt, as with the chat encoding: no special tokens are added.
        return list(state.engine.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    vocab = len(state.engine.tokenizer)
    bad = [t for t in prompt if not 0 <= t < vocab]
    if bad:
        raise APIError(400, f"token ids must be in [0, {vocab}): got {bad[0]}", param="prompt")
    return list(prompt)


def prepare(state: ServingState, req: ChatCompletionRequest | CompletionRequest, prompt_ids: list[int],
            prompt_param: str, *, logprobs: bool = False, top_logprobs: int = 0,
            score_prompt: bool = False, token_ids: bool = False) -> Prepared:
    """Resolve defaults from the manifest and refuse what does not fit the context or what
    this engine cannot report."""
    context = state.engine.max_context_tokens
    n = len(prompt_ids)
    if n == 0:
        raise APIError(400, "the prompt encodes to no tokens", param=prompt_param)
    if (top_logprobs or score_prompt) and not state.batcher.continuous:
        # The Engine interface hands out neither alternatives nor prompt log-probs; only the
        # continuous loop, which drives the hf model itself, computes them (see logprobs.py).
        what = "prompt log-probs (echo with logprobs)" if score_prompt else "alternatives (top logprobs)"
        raise APIError(400, f"{what} are not available with the {state.engine.name} engine; the log-prob of each "
                            "generated token is", param="logprobs" if score_prompt else "top_logprobs")
    if req.max_tokens is None:
        room = context - n
        if room < 1:
            raise APIError(400, f"the prompt is {n} tokens, which leaves no room in the model's context of "
                                f"{context} tokens", param=prompt_param, code="context_length_exceeded")
        max_tokens = min(state.manifest.inference.max_new_tokens, room)
    else:
        max_tokens = req.max_tokens
        if n + max_tokens > context:
            raise APIError(400, f"prompt_tokens ({n}) + max_tokens ({max_tokens}) = {n + max_tokens} exceeds the "
                                f"model's context of {context} tokens", param="max_tokens",
                           code="context_length_exceeded")
    inference = state.manifest.inference
    temperature = inference.temperature if req.temperature is None else req.temperature
    sampling = SamplingParams(
        max_new_tokens=max_tokens,
        # Dividing logits by a vanishing temperature overflows to inf and NaN probabilities,
        # which would fail the whole engine batch; that close to 0 sampling is greedy anyway.
        temperature=0.0 if temperature < MIN_SAMPLING_TEMPERATURE else temperature,
        top_p=inference.top_p if req.top_p is None else req.top_p,
        seed=req.seed,
        stop_token_ids=state.stop_token_ids,
    )
    return Prepared(prompt_ids=prompt_ids, sampling=sampling, stop_strings=req.stop_strings(),
                    logprobs=logprobs or score_prompt, top_logprobs=top_logprobs, score_prompt=score_prompt,
                    token_ids=token_ids)


def submit(state: ServingState, prepared: Prepared, request_id: str) -> Job | None:
    """Queue the request; 429 when the queue is full, 503 while draining. None when there is
    nothing for the engine to do (max_tokens 0 without prompt log-probs)."""
    return submit_all(state, [prepared], request_id)[0]


def submit_all(state: ServingState, prepared: list[Prepared], request_id: str) -> list[Job | None]:
    """Queue one job per prompt, all or none: on a refusal the ones already queued are cancelled
    (the batcher drops cancelled jobs unrun)."""
    jobs: list[Job | None] = []
    try:
        for p in prepared:
            if p.sampling.max_new_tokens == 0 and not p.score_prompt:
                jobs.append(None)
                continue
            job = Job(GenerationRequest(p.prompt_ids, p.sampling), request_id, top_logprobs=p.top_logprobs,
                      score_prompt=p.score_prompt)
            state.batcher.submit(job)
            jobs.append(job)
    except (QueueFull, Draining) as exc:
        for job in jobs:
            if job is not None:
                job.cancel()
        if isinstance(exc, QueueFull):
            raise APIError(429, f"server busy: {exc}; retry later", code="queue_full",
                           headers={"retry-after": "1"}) from None
        raise APIError(503, "the server is shutting down and accepts no new requests", code="draining") from None
    for p, job in zip(prepared, jobs):
        if job is not None:
            state.metrics.prompt_tokens.inc(len(p.prompt_ids))
    return jobs


async def _next_event(job: Job, deadline: float, timeout_s: float,
                      disconnected: Callable[[], Awaitable[bool]] | None) -> Event:
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise APIError(504, f"the request did not finish within {timeout_s:g} s", code="timeout")
        try:
            return await asyncio.wait_for(job.events.get(), timeout=min(left, DISCONNECT_POLL_S))
        except TimeoutError:
            if disconnected is not None and await disconnected():
                # nginx's "client closed request": nobody reads this answer, the metrics do.
                raise APIError(499, "the client closed the request", code="client_closed") from None


async def pieces(state: ServingState, job: Job | None, prepared: Prepared,
                 disconnected: Callable[[], Awaitable[bool]] | None = None,
                 ) -> AsyncIterator[Piece | PromptScores | Finished]:
    """The prompt's scores (when asked for), then text pieces as they become stable, then one
    Finished. Leaving early (client gone, timeout, stop string, error) cancels the job's row, so
    the engine stops spending on it."""
    if job is None:  # nothing to generate
        yield Finished("length", len(prepared.prompt_ids), 0)
        return
    assembler = TextAssembler(state.engine.tokenizer, prepared.stop_strings)
    held: list[TokenLogprob] = []  # log-probs of consumed tokens whose text is not released yet
    held_ids: list[int] = []  # and their ids

    def owed() -> bool:
        # Something a textless piece must still carry (otherwise nothing is sent for it).
        return bool(held) or (prepared.token_ids and bool(held_ids))

    def release(text: str) -> Piece:
        piece = Piece(text, tuple(held), tuple(held_ids))
        held.clear()
        held_ids.clear()
        return piece

    deadline = job.enqueued_at + state.request_timeout_s
    stop_token = None
    try:
        while True:
            event = await _next_event(job, deadline, state.request_timeout_s, disconnected)
            if isinstance(event, PromptEvent):
                yield PromptScores(event.tokens)
                continue
            if isinstance(event, TokenEvent):
                offset = assembler.decoded_chars
                step = assembler.add(event.token_id)
                if prepared.logprobs:
                    held.append(TokenLogprob(event.token_id, event.logprob, event.top, offset))
                held_ids.append(event.token_id)
                if step.text or (step.stopped and owed()):
                    yield release(step.text)
                if not step.stopped:
                    continue
                reason: FinishReason = "stop"
            elif isinstance(event, DoneEvent):
                step = assembler.finish()
                reason = "stop" if step.stopped or event.completion.finish_reason == "stop" else "length"
                if event.stop_token is not None and not step.stopped:
                    stop_token = replace(event.stop_token, offset=assembler.decoded_chars)
                if step.text or owed():
                    yield release(step.text)
            else:
                raise internal_error() from event.error  # the worker logged the engine's exception
            finished = Finished(reason, len(prepared.prompt_ids), len(assembler.ids), stop_token)
            log_event(log, "generation", prompt_tokens=finished.prompt_tokens,
                      completion_tokens=finished.completion_tokens, finish_reason=reason,
                      max_tokens=prepared.sampling.max_new_tokens, temperature=prepared.sampling.temperature)
            yield finished
            return
    finally:
        job.cancel()
