"""vLLM's async engine (`AsyncLLM`) behind tailgate: requests go straight into vLLM's scheduler,
tokens arrive as vLLM produces them, the answers are the hf engine's (parity), and the real server
streams through it. Runs where vLLM is installed (`make test-vllm`); skipped elsewhere."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("vllm")

from pipeline.engines.base import GenerationRequest, SamplingParams  # noqa: E402
from serving.probe import INEXACT_LOGPROB_TOLERANCE_NATS, load_golden, replay  # noqa: E402

pytestmark = pytest.mark.vllm

LONG = 48  # the budget of a long answer


@pytest.fixture(scope="module")
def async_engine(served):
    from pipeline.engines.vllm_async import AsyncVLLMEngine

    engine = AsyncVLLMEngine.from_bundle(served.bundle, max_batch=4)
    yield engine
    engine.close()


def _long(tok, text: str) -> GenerationRequest:
    # only the padding id stops it: the random tiny model runs to (or near) its budget
    return GenerationRequest(tok.encode(text), SamplingParams(max_new_tokens=LONG, stop_token_ids=(tok.pad_token_id,)))


def test_parity_probe_passes_on_the_golden_prompts(async_engine, served):
    report = replay(async_engine, load_golden(served.golden_path, served.bundle.manifest), served.bundle.manifest)
    assert report.status == "passed"
    assert async_engine.scale["tensor_parallel_size"] == 1 and async_engine.scale["max_num_seqs"] == 4


def test_greedy_answers_match_hf_token_for_token(async_engine, served):
    tok = served.engine.tokenizer
    reqs = [GenerationRequest(tok.encode(t), SamplingParams(max_new_tokens=12))
            for t in ("Discharge summary for a patient with", "Allergies:", "Medications on discharge")]
    for a, b in zip(served.engine.generate(reqs), async_engine.generate(reqs)):
        assert b.token_ids == a.token_ids and b.finish_reason == a.finish_reason
        assert b.logprobs == pytest.approx(a.logprobs, abs=INEXACT_LOGPROB_TOLERANCE_NATS)


def test_tokens_arrive_as_they_are_produced(async_engine, served):
    """The first token of a long answer reaches the caller well before its last (the offline
    engine hands every token over at once, when its batch ends)."""
    seen: list[float] = []
    start = time.monotonic()
    [done] = async_engine.generate([_long(served.engine.tokenizer, "Discharge note:")],
                                   on_token=lambda _row, _tok, _lp: seen.append(time.monotonic()))
    assert len(done.token_ids) == len(seen) >= 16
    span = seen[-1] - start
    print(f"\nfirst token after {seen[0] - start:.3f} s, last after {span:.3f} s")
    assert seen[0] - start < 0.5 * span


def test_a_cancelled_request_stops_and_the_others_finish(async_engine, served):
    tok = served.engine.tokenizer
    reqs = [_long(tok, "Discharge note:"), _long(tok, "Allergies:")]
    stop_after, counts = 3, [0, 0]

    def on_token(row, _tok, _lp):  # the first request's caller goes away after its fourth token
        counts[row] += 1
        return not (row == 0 and counts[0] > stop_after)

    first, second = async_engine.generate(reqs, on_token=on_token)
    assert first.finish_reason == "cancelled" and len(first.token_ids) == stop_after + 1
    assert second.finish_reason != "cancelled" and len(second.token_ids) > stop_after + 1


def test_the_server_streams_through_the_async_engine(async_engine, served, start_server):
    import openai

    from tests.serving.conftest import Served

    srv = start_server(served_as=Served(bundle=served.bundle, engine=async_engine, golden_path=served.golden_path,
                                        parity=served.parity))
    assert srv.state.batcher.direct
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="x", max_retries=0, timeout=120)
    messages = [{"role": "user", "content": "Summarize: fever, discharged."}]
    start, arrivals, text = time.monotonic(), [], []
    stream = client.chat.completions.create(model=srv.state.model_id, max_tokens=LONG, temperature=0,
                                            messages=messages, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - start)
            text.append(chunk.choices[0].delta.content)
    assert len(arrivals) > 2 and arrivals[0] < 0.5 * arrivals[-1]
    whole = client.chat.completions.create(model=srv.state.model_id, max_tokens=LONG, temperature=0,
                                           messages=messages)
    assert whole.choices[0].message.content == "".join(text)
    [card] = client.models.list().data
    assert card.model_extra["engine"]["scale"]["tensor_parallel_size"] == 1
