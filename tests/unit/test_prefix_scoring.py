"""Scoring and generation reuse a prompt's prefill without changing a bit.

A continuation is scored after its context: the context prefilled alone, the continuation run
over a copy of its cache. The options of a choice item share one context prefill, the
reference answer's NLL reuses the generation's prefill (pipeline/engines/prefix.py), and
generation admits the next request as a row finishes. Each is checked against the same work
done the slow way on an engine that keeps nothing.
"""

from __future__ import annotations

import pytest
import torch

from pipeline.engines.base import GenerationRequest, SamplingParams
from pipeline.engines.prefix import PrefixCache
from pipeline.engines.rowwise import KV_BLOCK

PROMPTS = [
    "Discharge summary: admitted with pneumonia, treated with antibiotics. Allergies: none.",
    "Patient with atrial fibrillation started on apixaban; metoprolol stopped.",
    "Admitted for a fall at home. No fracture. Follow up with physiotherapy.",
    "Chest pain ruled out for infarction; discharged on aspirin and a statin.",
]
OPTIONS = [" billing", " outage", " account access", " shipping delay", " other"]


def _engine(tiny_pipeline, keep: int):
    from pipeline.bundle.verify import verify_bundle
    from pipeline.engines.hf import HFEngine

    return HFEngine.from_bundle(verify_bundle(tiny_pipeline["bundle"]), prefix_cache_bytes=keep)


@pytest.fixture(scope="module")
def keeping(tiny_pipeline):
    return _engine(tiny_pipeline, 1 << 30)


@pytest.fixture(scope="module")
def plain(tiny_pipeline):
    return _engine(tiny_pipeline, 0)


def _ids(engine, text):
    return list(engine.tokenizer(text, add_special_tokens=False)["input_ids"])


def _counting_prefills(engine, monkeypatch) -> list[int]:
    calls: list[int] = []
    original = engine._stepper.prefill

    def prefill(seq, ids):
        calls.append(len(ids))
        return original(seq, ids)

    monkeypatch.setattr(engine._stepper, "prefill", prefill)
    return calls


def test_choice_options_share_one_context_prefill_and_score_as_each_alone(keeping, plain, monkeypatch):
    keeping.prefixes.clear()
    pairs = [(_ids(keeping, p), _ids(keeping, o)) for p in PROMPTS[:3] for o in OPTIONS]
    calls = _counting_prefills(keeping, monkeypatch)
    together = keeping.token_logprobs(pairs)
    assert calls == [len(c) for c in dict.fromkeys(tuple(c) for c, _ in pairs)]  # one prefill per context
    for pair, got in zip(pairs, together):
        assert plain.token_logprobs([pair])[0] == got  # bit for bit, alone, nothing kept
    # the reverse order and another grouping change nothing either
    assert keeping.token_logprobs(pairs[::-1]) == together[::-1]


def test_scoring_after_generation_reuses_its_prefill_and_changes_nothing(keeping, plain, monkeypatch):
    keeping.prefixes.clear()
    prompts = [_ids(keeping, p) for p in PROMPTS]
    reqs = [GenerationRequest(p, SamplingParams(max_new_tokens=5)) for p in prompts]
    generated = keeping.generate(reqs)
    assert len(keeping.prefixes) == len(prompts)
    calls = _counting_prefills(keeping, monkeypatch)
    pairs = [(p, c.token_ids + [3]) for p, c in zip(prompts, generated)]
    scored = keeping.loglikelihood(pairs)
    assert calls == []  # every context came from the generation's prefill
    assert scored == plain.loglikelihood(pairs)
    # the model's own greedy tokens are what it would generate
    assert all(greedy for (_, greedy) in keeping.loglikelihood([(p, c.token_ids) for p, c in zip(prompts, generated)]))
    for req, c in zip(reqs, generated):
        [alone] = plain.generate([req])
        assert alone.token_ids == c.token_ids and alone.logprobs == c.logprobs


@pytest.mark.parametrize("max_live", [1, 3, 8])
def test_admitting_as_rows_finish_gives_every_request_its_own_tokens(plain, max_live):
    prompts = [_ids(plain, p) for p in PROMPTS * 3]
    reqs = [GenerationRequest(p, SamplingParams(max_new_tokens=2 + i % 7)) for i, p in enumerate(prompts)]
    finished: list[int] = []
    got = plain.generate(reqs, max_live=max_live, on_finish=lambda i, _c: finished.append(i))
    assert sorted(finished) == list(range(len(reqs)))
    everything_at_once = plain.generate(reqs)
    for a, b in zip(got, everything_at_once):
        assert (a.token_ids, a.logprobs, a.finish_reason) == (b.token_ids, b.logprobs, b.finish_reason)


def test_a_continuation_over_a_cached_context_matches_the_whole_sequence(plain):
    """The chunk pass attends causally over the cached context (a wrong mask, e.g. SDPA's
    top-left is_causal for a query shorter than its keys, would be far off): equal to the whole
    sequence prefilled at once up to summation order (bf16 tiny model)."""
    ctx, cont = _ids(plain, PROMPTS[0]), _ids(plain, " Follow up with cardiology in two weeks.")
    scored = torch.tensor(plain.token_logprobs([(ctx, cont)])[0])
    with torch.inference_mode():
        _, every = plain.start(ctx + cont, all_positions=True)
    whole = torch.log_softmax(every.float(), dim=-1)[len(ctx) - 1:-1].gather(-1, torch.tensor(cont)[:, None]).squeeze(-1)
    assert float((scored - whole).abs().max()) < 2e-2


def test_the_cache_keeps_within_its_budget_least_recently_used_out_first(plain):
    with torch.inference_mode():
        made = [(p, *plain._stepper.start(p)) for p in (_ids(plain, t) for t in PROMPTS)]
    one = made[0][1].copy(trim=True).nbytes() + made[0][2].numel() * made[0][2].element_size()
    cache = PrefixCache(int(one * 2.5))
    for ids, seq, logits in made[:3]:
        cache.put(ids, seq, logits)
    assert len(cache) == 2 and cache.nbytes <= cache.budget
    assert cache.recency(made[0][0]) == -1 and cache.recency(made[2][0]) > cache.recency(made[1][0])
    copy, logits = cache.get(made[1][0])
    assert torch.equal(logits, made[1][2])
    # the copy is laid out as a fresh prefill (capacity in KV blocks) and owns its memory
    assert copy.keys[0].shape[2] == -(-len(made[1][0]) // KV_BLOCK) * KV_BLOCK
    copy.keys[0].zero_()
    assert not torch.equal(cache.get(made[1][0])[0].keys[0], copy.keys[0])
    assert PrefixCache(0).put(made[0][0], made[0][1], made[0][2]) is None and len(PrefixCache(0)) == 0
