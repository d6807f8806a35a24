"""The lm-eval model's rolling log-likelihood (perplexity tasks) on the tiny bundle: it scores
exactly lm-eval's own windows (disjoint predictions, context_len=1, the last window filled
back with the overlapping text that fits), batched, and fits every window in the context."""

from __future__ import annotations

import pytest
from lm_eval.api.instance import Instance
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from pipeline.bundle.verify import verify_bundle
from pipeline.engines.hf import HFEngine
from pipeline.evaluate.lm_model import TailgateLM

CONTEXT = 16  # tokens: small, so a sentence or two spans several windows
LONG = ("Patient admitted with chest pain and shortness of breath. Allergies: penicillin. "
        "Discharged home on day three; follow up in two weeks with cardiology, continue aspirin "
        "and review renal function then.")


class RecordingEngine:
    """The real engine, with every loglikelihood call's pairs recorded."""

    def __init__(self, engine):
        self._engine, self.calls = engine, []

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def loglikelihood(self, pairs, **kwargs):
        self.calls.append([(list(c), list(x)) for c, x in pairs])
        return self._engine.loglikelihood(pairs, **kwargs)


@pytest.fixture(scope="module")
def engine(tiny_pipeline):
    return HFEngine.from_bundle(verify_bundle(tiny_pipeline["bundle"]))


@pytest.fixture
def small_context(engine, monkeypatch):
    monkeypatch.setattr(engine, "max_context_tokens", CONTEXT)
    return engine


def _rolling(lm: TailgateLM, *texts: str) -> list[float]:
    return lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)])


def _prefix(engine) -> int:
    bos = engine.tokenizer.bos_token_id
    return bos if bos is not None else engine.stop_token_ids[0]


def test_long_text_scores_exactly_lm_evals_windows(small_context):
    engine = RecordingEngine(small_context)
    lm = TailgateLM(engine=engine)
    ids = lm.encode(LONG)
    assert len(ids) > 3 * CONTEXT and len(ids) % (CONTEXT - 1)  # several windows, the last one shorter

    [total] = _rolling(lm, LONG)

    [scored] = engine.calls  # one batched call for every window
    expected = [make_disjoint_window(w) for w in get_rolling_token_windows(
        token_list=ids, prefix_token=_prefix(small_context), max_seq_len=CONTEXT - 1, context_len=1)]
    assert scored == [(list(c), list(x)) for c, x in expected]
    # every token predicted exactly once, in order
    assert [t for _, cont in scored for t in cont] == ids
    assert scored[0][0] == [_prefix(small_context)] and len(scored[0][1]) == CONTEXT - 1
    done = len(scored[0][1])
    for ctx, cont in scored[1:]:
        assert ctx == ids[done - len(ctx):done] and cont == ids[done:done + len(cont)]  # what comes right before
        done += len(cont)
    *full, (last_ctx, last_cont) = scored[1:]
    # lm-eval's context_len=1: a full window conditions on the one token before it ...
    assert full and all(len(c) == 1 and len(x) == CONTEXT - 1 for c, x in full)
    # ... and the shorter last one on as much overlapping text as fills the window (the old
    # code gave it one token)
    assert len(last_cont) < CONTEXT - 1 and len(last_ctx) == CONTEXT - len(last_cont) > 1
    assert all(len(c) + len(x) <= CONTEXT for c, x in scored)  # the engine accepts every window
    alone = [small_context.loglikelihood([w])[0][0] for w in expected]
    assert total == pytest.approx(sum(alone), abs=1e-3)


def test_short_text_is_one_loglikelihood_call(engine):
    lm = TailgateLM(engine=engine)
    text = "Allergies: penicillin."
    ids = lm.encode(text)
    assert len(ids) < engine.max_context_tokens
    [total] = _rolling(lm, text)
    [(single, _)] = engine.loglikelihood([([_prefix(engine)], ids)])
    assert total == pytest.approx(single, abs=1e-4)


def test_requests_batched_together_score_as_alone(small_context):
    lm = TailgateLM(engine=small_context)
    texts = [LONG, "Meds:", LONG[:70], ""]
    together = _rolling(lm, *texts)
    assert together == pytest.approx([_rolling(lm, t)[0] for t in texts], abs=1e-3)
    assert together[-1] == 0.0  # nothing to predict
