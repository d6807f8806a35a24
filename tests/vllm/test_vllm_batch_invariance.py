"""vLLM's batch-invariant mode through the vllm engine, on CUDA: a prompt's greedy tokens and
log-probs are the same alone and inside a batch of 8 different prompts (`make test-vllm` on a
GPU machine; skipped elsewhere).

It runs on a 16-bit copy of the tiny base with the bundle's adapter and tokenizer: on the
bundle's NF4 base the engine runs the mode but does not claim invariance, because bitsandbytes
computes a one-token step with another kernel than a larger one (see `batch_invariance`)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("vllm")

from pipeline.engines.base import GenerationRequest, SamplingParams  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.gpu]

PROMPTS = ("Discharge summary for a patient with", "Allergies:", "Medications on discharge",
           "Follow-up in two weeks with cardiology.", "Chief complaint: chest pain radiating to the left arm",
           "Vitals stable.", "History of present illness: a 67-year-old man presented with", "Plan:")


@pytest.fixture(scope="module")
def invariant_engine(tiny_pipeline, tmp_path_factory):
    from pipeline.bundle.verify import verify_bundle
    from pipeline.engines.vllm_async import AsyncVLLMEngine

    bundle = verify_bundle(tiny_pipeline["bundle"])
    root = tmp_path_factory.mktemp("bundle_16bit")
    (root / "base_q").symlink_to(tiny_pipeline["base"], target_is_directory=True)
    for part in ("tokenizer", "adapter"):
        (root / part).symlink_to(bundle.root / part, target_is_directory=True)
    m = bundle.manifest
    sixteen = m.model_copy(update={"quantization": m.quantization.model_copy(update={"method": "none"})})
    engine = AsyncVLLMEngine.from_bundle(SimpleNamespace(root=root, manifest=sixteen), batch_invariant=True)
    yield engine
    engine.close()


def test_a_prompt_decodes_the_same_alone_and_inside_a_batch_of_8(invariant_engine):
    engine = invariant_engine
    assert engine.batch_invariant is True, engine.batch_invariance_detail
    tok = engine.tokenizer
    # Budgets differ so rows leave the batch at different steps and the batch shape keeps changing.
    reqs = [GenerationRequest(tok.encode(t), SamplingParams(max_new_tokens=8 + 4 * i)) for i, t in enumerate(PROMPTS)]
    target = 2
    alone = engine.generate([reqs[target]])[0]
    assert alone.token_ids, "nothing was generated"
    batched = engine.generate(reqs)[target]
    reordered = engine.generate(reqs[::-1])[len(reqs) - 1 - target]
    for other in (batched, reordered):
        assert other.token_ids == alone.token_ids and other.finish_reason == alone.finish_reason
        assert other.logprobs == alone.logprobs  # bit for bit, not within a tolerance
