"""Continuous batching: rows that join a running batch mid-generation (longer and shorter
prompts than the rows already there) and leave it at different steps produce exactly what each
request produces alone: the same tokens and the same log-probs, bit for bit (the engine is
batch-invariant). The padded engine keeps its shared cache as small as the running rows need."""

from __future__ import annotations

import pytest

from pipeline.engines.base import GenerationRequest, SamplingParams
from pipeline.engines.batching import RunningBatch, supports
from serving.logprobs import prompt_logprobs

def _request(engine, text: str, max_new: int, **sampling) -> GenerationRequest:
    ids = engine.tokenizer(text)["input_ids"]
    return GenerationRequest(ids, SamplingParams(max_new_tokens=max_new, **sampling))


def _drive(engine, schedule):
    """schedule: {step: [requests joining before that step]}; returns completions by request."""
    batch = RunningBatch(engine)
    streamed: dict[int, list[int]] = {}
    done = {}
    step = 0
    while step in schedule or len(batch) or any(s > step for s in schedule):
        for req in schedule.get(step, []):
            streamed[id(req)] = []
            row = batch.admit(req, lambda t, lp, top, k=id(req): streamed[k].append(t) or True, key=req)
            if row.done:
                done[id(req)] = row.completion
        for row in batch.step():
            done[id(row.key)] = row.completion
        step += 1
    for key, completion in done.items():
        assert streamed[key] == completion.token_ids  # every token was streamed, in order
    return done


def test_rows_joining_and_leaving_match_generating_alone(served):
    engine = served.engine
    assert supports(engine)
    short = _request(engine, "Stable.", 12)
    long = _request(engine, "Patient admitted with chest pain, troponin negative, discharged on aspirin "
                            "and atorvastatin with cardiology follow-up in two weeks.", 20)
    mid = _request(engine, "Summarize: pneumonia treated with antibiotics.", 5)
    sampled = _request(engine, "Summarize: fall at home, no fracture.", 9, temperature=0.8, top_p=0.9, seed=7)
    one = _request(engine, "Hi", 1)
    # short runs alone first; long joins with a longer prompt (the running row is left-padded),
    # mid and a one-token request join later, sampled joins after short has left.
    done = _drive(engine, {0: [short], 2: [long, one], 4: [mid], 14: [sampled]})
    for req in (short, long, mid, sampled, one):
        [alone] = engine.generate([req])
        got = done[id(req)]
        assert got.token_ids == alone.token_ids and got.finish_reason == alone.finish_reason
        assert got.logprobs == alone.logprobs  # bitwise: nothing else in the batch moved them


def test_the_padded_batch_shrinks_to_what_running_rows_need(served):
    """The padded engine (batch_invariant=False) merges caches; a row that leaves takes the
    columns only it needed with it."""
    from pipeline.engines.hf import HFEngine

    e = served.engine
    engine = HFEngine(e.model, e.tokenizer, max_context_tokens=e.max_context_tokens,
                      stop_token_ids=e.stop_token_ids, batch_invariant=False)
    try:
        batch = RunningBatch(engine)
        long = _request(engine, "A much longer prompt than the other one, with many more tokens in it.", 3)
        short = _request(engine, "Short.", 30)
        batch.admit(long, lambda t, lp, top: True, key="long")
        batch.admit(short, lambda t, lp, top: True, key="short")
        batch.step()  # both rows join the shared cache
        stepper = engine._stepper
        assert stepper.cache.layers[0].keys.shape[-2] == len(long.prompt_ids) + 1
        while len(batch) == 2:
            batch.step()
        assert [r.key for r in batch.rows] == ["short"]
        batch.step()  # the next step drops the long row's columns
        # only the short row's columns are left
        [row] = stepper.rows
        assert stepper.cache.layers[0].keys.shape[0] == 1
        assert stepper.cache.layers[0].keys.shape[-2] == row.length
    finally:
        from pipeline.engines.rowwise import register

        # The shared model must go back to the invariant attention the served engine uses.
        register()
        e.model.get_base_model().set_attn_implementation("tailgate_rowwise")


def test_a_cancelled_row_leaves_at_once(served):
    engine = served.engine
    batch = RunningBatch(engine)
    seen = []
    row = batch.admit(_request(engine, "Stable.", 50), lambda t, lp, top: len(seen) < 3 and not seen.append(t), key=1)
    while not row.done:
        batch.step()
    assert row.completion.finish_reason == "cancelled" and len(row.completion.token_ids) == 4
    assert len(batch) == 0


def test_alternatives_prompt_scores_and_the_stop_token_come_from_the_same_logits(served):
    """What log-probs over HTTP are made of: top-k alternatives per generated token (best first,
    the greedy choice on top), the prompt's log-probs from the prefill (the engine's own scoring,
    exactly), and the stop id that ended a row with its log-prob (the engine's Completion drops
    it)."""
    engine = served.engine
    req = _request(engine, "Summarize: stable, discharged home.", 4)
    [alone] = engine.generate([req])
    got, prompt = [], []
    batch = RunningBatch(engine)
    row = batch.admit(req, lambda t, lp, top: got.append((t, lp, top)) or True, key=1, top_logprobs=3,
                      on_prompt=lambda logits: prompt.extend(prompt_logprobs(logits, req.prompt_ids, 3)))
    while not row.done:
        batch.step()
    assert [t for t, _, _ in got] == alone.token_ids
    for t, lp, top in got:
        assert len(top) == 3 and top[0] == (t, lp) and [v for _, v in top] == sorted((v for _, v in top), reverse=True)
    ids = list(req.prompt_ids)
    assert [p.token_id for p in prompt] == ids and prompt[0].logprob is None
    assert [p.logprob for p in prompt[1:]] == engine.token_logprobs([(ids[:1], ids[1:])])[0]
    assert all(p.top[0][1] >= p.logprob for p in prompt[1:])
    # The first generated token, declared a stop id, ends the row and is reported.
    first, first_lp = alone.token_ids[0], alone.logprobs[0]
    stop_req = GenerationRequest(req.prompt_ids, SamplingParams(max_new_tokens=4, stop_token_ids=(first,)))
    row = RunningBatch(engine).admit(stop_req, lambda t, lp, top: True)
    assert row.done and row.completion.finish_reason == "stop" and row.completion.token_ids == []
    stop_id, stop_lp, _top = row.stop_token
    assert stop_id == first and stop_lp == pytest.approx(first_lp, abs=1e-6)


def test_generate_is_the_serving_loop_with_every_callback(served):
    """Evaluation's `generate` runs the decode loop serving runs: at most max_live rows at a
    time, the next admitted as one finishes, each token called back as chosen (False cancels
    that request alone) and each completion handed over as it ends; the answers are those of
    each request alone, bit for bit."""
    engine = served.engine
    reqs = [_request(engine, t, n) for t, n in (("Stable.", 12), ("Summarize: pneumonia treated.", 5),
                                                ("Hi", 1), ("Summarize: fall at home, no fracture.", 9))]
    alone = [engine.generate([r])[0] for r in reqs]
    streamed: dict[int, list[int]] = {i: [] for i in range(len(reqs))}
    finished: list[int] = []

    def on_token(i, tok, _lp):
        streamed[i].append(tok)
        return not (i == 0 and len(streamed[0]) == 3)  # request 0's caller leaves after 3 tokens

    done = engine.generate(reqs, on_token, max_live=2, on_finish=lambda i, _c: finished.append(i))
    assert sorted(finished) == [0, 1, 2, 3] and len(finished) == 4
    assert done[0].finish_reason == "cancelled" and done[0].token_ids == alone[0].token_ids[:3]
    for i in (1, 2, 3):
        assert done[i].token_ids == alone[i].token_ids and done[i].logprobs == alone[i].logprobs
        assert done[i].finish_reason == alone[i].finish_reason and streamed[i] == done[i].token_ids
