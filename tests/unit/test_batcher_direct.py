"""The batcher's direct mode: an engine with its own scheduler (vLLM's async engine) gets each
request as it is taken, never more than max_batch at once, tokens pass through as they come,
and draining waits for what was handed over. A stand-in engine on its own thread, no model."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future

import pytest

from pipeline.engines.base import Completion, GenerationRequest, SamplingParams
from serving.batcher import Batcher, DoneEvent, ErrorEvent, Job, TokenEvent
from serving.metrics import ServingMetrics


class StreamingEngine:
    """Each submitted request runs on a thread of its own and emits n tokens, one every 10 ms."""

    streams = True
    name = "stand-in"
    exact = False

    def __init__(self) -> None:
        self.live = 0
        self.most_live = 0
        self.submitted: list[float] = []
        self.lock = threading.Lock()

    def submit(self, row, req: GenerationRequest, on_token=None) -> Future:
        if req.prompt_ids[0] == 0:
            raise ValueError("refused before it reached the scheduler")
        future: Future = Future()
        with self.lock:
            self.submitted.append(time.monotonic())
            self.live += 1
            self.most_live = max(self.most_live, self.live)

        def run():
            c = Completion()
            for tok in range(req.sampling.max_new_tokens):
                time.sleep(0.01)
                c.token_ids.append(tok)
                c.logprobs.append(-0.1)
                if on_token is not None and on_token(row, tok, -0.1) is False:
                    c.finish_reason = "cancelled"
                    break
            with self.lock:
                self.live -= 1
            if req.prompt_ids[0] == 1:
                future.set_exception(RuntimeError("engine failed this request"))
            else:
                future.set_result(c)

        threading.Thread(target=run, daemon=True).start()
        return future


async def _events(job: Job) -> list:
    out = []
    while True:
        event = await asyncio.wait_for(job.events.get(), timeout=10)
        out.append(event)
        if isinstance(event, (DoneEvent, ErrorEvent)):
            return out


def _run(engine, jobs_spec, max_batch=2):
    async def main():
        batcher = Batcher(engine, ServingMetrics(), max_batch=max_batch, max_queue=16)
        assert batcher.direct and not batcher.continuous
        thread = batcher.start()
        jobs = [Job(GenerationRequest([first], SamplingParams(max_new_tokens=n)), f"r{i}")
                for i, (first, n) in enumerate(jobs_spec)]
        for job in jobs:
            batcher.submit(job)
        results = await asyncio.gather(*(_events(j) for j in jobs))
        batcher.drain()
        await asyncio.to_thread(thread.join, 10)
        assert not thread.is_alive()
        return results

    return asyncio.run(main())


def test_requests_go_over_as_taken_and_stream_at_most_max_batch_in_flight():
    engine = StreamingEngine()
    results = _run(engine, [(5, 20), (5, 3), (5, 3), (5, 3)], max_batch=2)
    assert engine.most_live == 2
    for events, n in zip(results, (20, 3, 3, 3)):
        tokens = [e.token_id for e in events if isinstance(e, TokenEvent)]
        assert tokens == list(range(n)) and isinstance(events[-1], DoneEvent)
        assert events[-1].completion.token_ids == tokens
    # the short ones did not wait for the long first one: all four were handed over before it ended
    assert engine.submitted[-1] - engine.submitted[0] < 0.15


def test_a_failed_request_gets_its_error_and_the_others_their_answers():
    results = _run(StreamingEngine(), [(1, 2), (0, 2), (5, 2)])
    assert isinstance(results[0][-1], ErrorEvent) and "engine failed" in str(results[0][-1].error)
    assert isinstance(results[1][-1], ErrorEvent) and "refused" in str(results[1][-1].error)
    assert isinstance(results[2][-1], DoneEvent) and len(results[2][-1].completion.token_ids) == 2


def test_draining_waits_for_requests_already_handed_over():
    engine = StreamingEngine()

    async def main():
        batcher = Batcher(engine, ServingMetrics(), max_batch=4, max_queue=4)
        thread = batcher.start()
        job = Job(GenerationRequest([5], SamplingParams(max_new_tokens=30)), "long")
        batcher.submit(job)
        await asyncio.sleep(0.05)
        batcher.drain()
        events = await _events(job)
        await asyncio.to_thread(thread.join, 10)
        return events, thread.is_alive()

    events, alive = asyncio.run(main())
    assert isinstance(events[-1], DoneEvent) and len(events[-1].completion.token_ids) == 30
    assert not alive


def test_draining_with_more_waiting_than_room_answers_all_without_spinning(monkeypatch):
    """Draining while every slot is taken and jobs still wait: each is handed over as a slot
    frees, and the loop sleeps meanwhile instead of polling the queue in a tight loop."""
    taken = []
    original = Batcher._pop_live

    def counting(self, n):
        taken.append(n)
        return original(self, n)

    monkeypatch.setattr(Batcher, "_pop_live", counting)

    async def main():
        batcher = Batcher(StreamingEngine(), ServingMetrics(), max_batch=1, max_queue=8)
        thread = batcher.start()
        jobs = [Job(GenerationRequest([5], SamplingParams(max_new_tokens=10)), f"r{i}") for i in range(3)]
        for job in jobs:
            batcher.submit(job)
        batcher.drain()
        results = await asyncio.gather(*(_events(j) for j in jobs))
        await asyncio.to_thread(thread.join, 10)
        return results

    results = asyncio.run(main())
    assert all(isinstance(r[-1], DoneEvent) and len(r[-1].completion.token_ids) == 10 for r in results)
    assert len(taken) <= 6, f"the engine loop polled the queue {len(taken)} times"


@pytest.mark.parametrize("streams", [False, True])
def test_only_an_engine_that_streams_is_served_directly(streams):
    class Plain:
        pass

    engine = Plain()
    if streams:
        engine.streams = True
    assert Batcher(engine, ServingMetrics(), max_batch=2, max_queue=2).direct is streams
