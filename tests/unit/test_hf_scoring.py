"""The hf engine's scoring (per-example NLL, lm-eval loglikelihood) on the tiny bundle:
batching and padding change nothing, and scoring agrees with the model's own greedy decode."""

from __future__ import annotations

import pytest
import torch

from pipeline.bundle.verify import verify_bundle
from pipeline.engines.base import GenerationRequest, SamplingParams
from pipeline.engines.hf import HFEngine


@pytest.fixture(scope="module")
def engine(tiny_pipeline):
    return HFEngine.from_bundle(verify_bundle(tiny_pipeline["bundle"]))


def _pairs(engine):
    texts = ["Patient admitted with chest pain.", "Allergies: penicillin. Discharged home on day three after a long stay",
             "Meds:", "Follow up in two weeks with cardiology; continue aspirin and review renal function then."]
    tok = engine.tokenizer
    return [(tok.encode(t)[:-2], tok.encode(t)[-2:]) if i % 2 else (tok.encode(t)[:3], tok.encode(t)[3:])
            for i, t in enumerate(texts)]


def test_batched_scores_equal_scores_alone(engine):
    pairs = _pairs(engine)
    assert len({len(c) + len(x) for c, x in pairs}) > 1  # rows really get padded
    batched = engine.token_logprobs(pairs, batch_size=len(pairs))
    alone = [engine.token_logprobs([p], batch_size=1)[0] for p in pairs]
    for b, a, (_, cont) in zip(batched, alone, pairs):
        assert len(b) == len(cont)
        assert b == pytest.approx(a, abs=1e-4)


def test_scores_match_a_plain_full_forward(engine):
    """Against the textbook computation: log-softmax over every position of one unpadded row."""
    ctx, cont = _pairs(engine)[3]
    ids = torch.tensor([ctx + cont])
    with torch.inference_mode():
        full = torch.log_softmax(engine.model(input_ids=ids).logits.float(), dim=-1)[0]
    expected = [float(full[len(ctx) - 1 + j, t]) for j, t in enumerate(cont)]
    assert engine.token_logprobs([(ctx, cont)])[0] == pytest.approx(expected, abs=1e-4)


def test_greedy_continuation_scores_as_greedy_with_its_decode_logprobs(engine):
    ctx = engine.tokenizer.encode("Discharge summary: the patient")
    out = engine.generate([GenerationRequest(prompt_ids=ctx, sampling=SamplingParams(max_new_tokens=6, stop_token_ids=(-1,)))])[0]
    assert len(out.token_ids) == 6
    [(total, greedy)] = engine.loglikelihood([(ctx, out.token_ids)])
    assert greedy
    # one full forward vs token-by-token with a KV cache, in bf16 compute: rounding differs a
    # little (measured 0.004 nats over 6 tokens), a wrong position would be off by whole nats
    assert total == pytest.approx(sum(out.logprobs), abs=0.05)
    [(_, greedy_other)] = engine.loglikelihood([(ctx, out.token_ids[:-1] + [(out.token_ids[-1] + 1) % 300])])
    assert not greedy_other


def test_empty_context_is_refused(engine):
    with pytest.raises(ValueError, match="empty context"):
        engine.token_logprobs([([], [1, 2])])
