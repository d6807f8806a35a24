"""Micro-batching: concurrent requests share one `engine.generate` call.

A forward pass over eight rows costs little more than over one on the same hardware, so one
engine loop takes up to `max_batch` waiting requests at a time and runs them as one batch;
concurrency then raises throughput instead of queueing one request behind another. Tokens go
back to each request's asyncio queue as they are produced (`call_soon_threadsafe`, since the
engine calls back from its own thread, not the event loop's).

With `continuous=True` (the hf engine) requests do not wait for a batch to finish: each is
prefilled alone and joins the running decode batch, leaving it the step it finishes
(pipeline/engines/batching.py: the decode loop evaluation runs too). An engine with its own
scheduler (`streams`: vLLM's async engine) gets each request handed over as it is taken, up to
`max_batch` in flight (`direct`). Other engines get one `engine.generate` per batch.

`run()` is the engine loop on the calling thread: `python -m serving` gives it the main thread
(see serving/server.py for why); `start()` runs it on a thread of its own (tests, embedding). A request whose client went away, whose stop
string matched or whose time ran out is cancelled: its row's callback returns False and the
engine stops stepping it.

The queue is bounded (a full queue is the caller's 429) and draining stops admissions (503)
while everything already admitted, queued or running, is still answered.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Sequence

from pipeline.engines.base import Completion, Engine, GenerationRequest
from serving.logprobs import TokenLogprob, prompt_logprobs
from serving.logs import log_event
from serving.metrics import ServingMetrics

log = logging.getLogger(__name__)

# How long an idle worker waits for companions after the first request arrives. Small next to
# one decode step (tens of ms and up), large enough for a burst of requests to land together.
BATCH_WINDOW_S = 0.005

# The longest an idle engine loop sleeps before looking up again. The loop runs on the main
# thread, the only one where Python runs signal handlers, but the kernel may deliver SIGTERM to
# any thread (HTTP, a torch worker): the main thread then learns of it only when it wakes, and
# a wait without a timeout would keep a killed server up until the next request.
IDLE_WAKE_S = 0.25


class QueueFull(Exception):
    """The bounded queue has no room (HTTP 429)."""


class Draining(Exception):
    """The server is shutting down and admits no new work (HTTP 503)."""


@dataclass(frozen=True)
class TokenEvent:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # alternatives, when the job asked for them


@dataclass(frozen=True)
class PromptEvent:
    """The prompt's per-token log-probs (jobs with score_prompt), before any TokenEvent."""

    tokens: tuple[TokenLogprob, ...]


@dataclass(frozen=True)
class DoneEvent:
    completion: Completion
    stop_token: TokenLogprob | None = None  # the stop id that ended it, where the loop saw it


@dataclass(frozen=True)
class ErrorEvent:
    error: BaseException


Event = TokenEvent | PromptEvent | DoneEvent | ErrorEvent


class Job:
    """One request's row: created on the event loop, run on the worker thread.

    `top_logprobs` and `score_prompt` need the continuous loop (it sees the logits); the
    serving logic refuses them up front for engines served through `engine.generate`.
    """

    def __init__(self, request: GenerationRequest, request_id: str, *, top_logprobs: int = 0,
                 score_prompt: bool = False) -> None:
        self.request = request
        self.request_id = request_id
        self.top_logprobs = top_logprobs
        self.score_prompt = score_prompt
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.enqueued_at = time.monotonic()
        self.started_at = self.enqueued_at  # set again when the engine takes it
        self._loop = asyncio.get_running_loop()
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def post(self, event: Event) -> None:
        """Hand an event to the request's coroutine (from any thread)."""
        try:
            self._loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:
            self.cancel()  # the event loop is closed: nobody is left to answer


@dataclass(frozen=True)
class _Finished:
    """A job finished outside the continuous loop, in the shape `_done` reads."""

    key: Job
    completion: Completion
    stop_token: TokenLogprob | None = None


class Batcher:
    def __init__(self, engine: Engine, metrics: ServingMetrics, *, max_batch: int, max_queue: int,
                 continuous: bool = False) -> None:
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be at least 1")
        self.engine = engine
        self.metrics = metrics
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.continuous = continuous
        self.direct = bool(getattr(engine, "streams", False)) and not continuous
        self._in_flight = 0
        self._pending: deque[Job] = deque()
        self._cond = threading.Condition()
        self._draining = False
        self._running = False
        self._finished = threading.Event()

    # -- event-loop side ----------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._draining:
                raise Draining("the server is shutting down")
            if len(self._pending) >= self.max_queue:
                # Requests whose callers already left hold no real place in the queue.
                self._pending = deque(j for j in self._pending if not j.cancelled)
            if len(self._pending) >= self.max_queue:
                raise QueueFull(f"{len(self._pending)} requests are already waiting (max_queue={self.max_queue})")
            self._pending.append(job)
            self.metrics.queue_depth.set(len(self._pending))
            self._cond.notify()

    @property
    def draining(self) -> bool:
        return self._draining

    def start(self) -> threading.Thread:
        """Run the engine loop on a new thread."""
        thread = threading.Thread(target=self.run, name="tailgate-batcher", daemon=True)
        thread.start()
        return thread

    def drain(self) -> None:
        """Stop admitting work; what was admitted still runs. Safe from a signal handler on the
        loop's own thread: the condition's lock is reentrant."""
        with self._cond:
            self._draining = True
            self._cond.notify_all()

    def stop(self, timeout_s: float | None = None) -> bool:
        """Drain, then wait for the engine loop to finish everything admitted (True if it did)."""
        self.drain()
        if not self._running:
            return True
        return self._finished.wait(timeout_s)

    # -- worker side --------------------------------------------------------------------------

    def _next_batch(self) -> list[Job] | None:
        """Block for work; None once draining has emptied the queue."""
        with self._cond:
            while not self._pending:
                if self._draining:
                    return None
                self._cond.wait(IDLE_WAKE_S)
            deadline = time.monotonic() + BATCH_WINDOW_S
            while len(self._pending) < self.max_batch and not self._draining:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self._pop_live(self.max_batch)

    def _pop_live(self, n: int) -> list[Job]:
        """Up to n waiting jobs whose callers are still there (caller holds the lock)."""
        jobs: list[Job] = []
        while self._pending and len(jobs) < n:
            job = self._pending.popleft()
            if not job.cancelled:  # its caller already gave up (disconnect, timeout)
                jobs.append(job)
        self.metrics.queue_depth.set(len(self._pending))
        return jobs

    def run(self) -> None:
        """The engine loop, on the calling thread, until draining has emptied the queue."""
        with self._cond:
            if self._running:
                raise RuntimeError("the engine loop is already running")
            self._running = True
        try:
            if self.continuous:
                self._run_continuous()
            elif self.direct:
                self._run_direct()
            else:
                while (batch := self._next_batch()) is not None:
                    if batch:
                        self._run_batch(batch)
        finally:
            self._finished.set()

    def _take(self, n: int, block: bool) -> list[Job] | None:
        """Up to n live waiting jobs. With block, wait for one; None once draining left nothing."""
        with self._cond:
            while block and not self._pending:
                if self._draining:
                    return None
                self._cond.wait(IDLE_WAKE_S)
            return self._pop_live(n)

    def _run_continuous(self) -> None:
        from pipeline.engines.batching import RunningBatch

        batch = RunningBatch(self.engine)
        # Block for work only when nothing is running; otherwise admit what is waiting (the
        # first step after admission already serves it) and keep stepping.
        while (jobs := self._take(self.max_batch - len(batch), block=not len(batch))) is not None:
            for job in jobs:
                self._admit(batch, job)
            if len(batch):
                self._step(batch)

    def _admit(self, batch, job: Job) -> None:
        def on_token(token_id: int, logprob: float, top: tuple[tuple[int, float], ...]) -> bool:
            if job.cancelled:
                return False
            job.post(TokenEvent(token_id, logprob, top))
            return True

        def on_prompt(logits) -> None:
            job.post(PromptEvent(tuple(prompt_logprobs(logits, job.request.prompt_ids, job.top_logprobs))))

        job.started_at = time.monotonic()
        try:
            row = batch.admit(job.request, on_token, key=job, top_logprobs=job.top_logprobs,
                              on_prompt=on_prompt if job.score_prompt else None)
        except Exception as exc:  # this request only; the running rows are untouched
            log.exception("prefill failed for request %s", job.request_id)
            job.post(ErrorEvent(exc))
            return
        self.metrics.in_flight.set(len(batch))
        if row.done:
            self._done(row)

    def _step(self, batch) -> None:
        self.metrics.batch_size.observe(len(batch))
        try:
            finished = batch.step()
        except Exception as exc:  # the step failed for every running row
            rows = batch.fail_all()
            log.exception("decode step failed for %d rows", len(rows))
            for row in rows:
                row.key.post(ErrorEvent(exc))
            finished = []
        for row in finished:
            self._done(row)
        self.metrics.in_flight.set(len(batch))

    def _done(self, row) -> None:
        job: Job = row.key
        job.post(DoneEvent(row.completion, TokenLogprob(*row.stop_token) if row.stop_token else None))
        self.metrics.generated_tokens.inc(len(row.completion.token_ids))
        now = time.monotonic()
        log_event(log, "row", request_id=job.request_id, generated_tokens=len(row.completion.token_ids),
                  finish_reason=row.completion.finish_reason, queue_wait_s=round(job.started_at - job.enqueued_at, 4),
                  run_s=round(now - job.started_at, 4))

    def _run_direct(self) -> None:
        """Hand each job to the engine's own scheduler as it is taken, at most max_batch in flight;
        return once draining has emptied the queue and every handed-over job has finished."""
        while True:
            with self._cond:
                # wait for room and for work (draining only ends the wait for work, never for room)
                while (not self._pending and not self._draining) or self._in_flight >= self.max_batch:
                    self._cond.wait(IDLE_WAKE_S)
                if not self._pending:  # draining, nothing waiting: finish what was handed over
                    while self._in_flight:
                        self._cond.wait(IDLE_WAKE_S)
                    return
                jobs = self._pop_live(self.max_batch - self._in_flight)
                self._in_flight += len(jobs)
                self.metrics.in_flight.set(self._in_flight)
            for job in jobs:
                self._hand_over(job)

    def _hand_over(self, job: Job) -> None:
        def on_token(_row: int, token_id: int, logprob: float) -> bool:
            if job.cancelled:
                return False
            job.post(TokenEvent(token_id, logprob))
            return True

        def finished(future) -> None:  # on the engine's thread
            error = future.exception()
            if error is not None:
                log.error("request %s failed in the engine: %s", job.request_id, error)
                job.post(ErrorEvent(error))
            else:
                self._done(_Finished(job, future.result()))
            with self._cond:
                self._in_flight -= 1
                self.metrics.in_flight.set(self._in_flight)
                self._cond.notify_all()

        job.started_at = time.monotonic()
        try:
            future = self.engine.submit(0, job.request, on_token)
        except Exception as exc:  # refused before it reached the engine: this request only
            future = Future()
            future.set_exception(exc)
        future.add_done_callback(finished)

    def _run_batch(self, batch: Sequence[Job]) -> None:
        def on_token(row: int, token_id: int, logprob: float) -> bool:
            job = batch[row]
            if job.cancelled:
                return False
            job.post(TokenEvent(token_id, logprob))
            return True

        started = time.monotonic()
        self.metrics.in_flight.set(len(batch))
        self.metrics.batch_size.observe(len(batch))
        try:
            completions = self.engine.generate([job.request for job in batch], on_token)
        except Exception as exc:  # the engine failed the whole batch: every row gets the error
            log.exception("engine.generate failed for a batch of %d", len(batch))
            for job in batch:
                job.post(ErrorEvent(exc))
        else:
            for job, completion in zip(batch, completions):
                job.post(DoneEvent(completion))
            self.metrics.generated_tokens.inc(sum(len(c.token_ids) for c in completions))
            log_event(log, "batch", request_ids=[job.request_id for job in batch], size=len(batch),
                      generated_tokens=[len(c.token_ids) for c in completions],
                      queue_wait_s=[round(started - job.enqueued_at, 4) for job in batch],
                      run_s=round(time.monotonic() - started, 4))
        finally:
            self.metrics.in_flight.set(0)
