"""Batch invariance of the hf engine, bit for bit, on the tiny real bundle (NF4 base + LoRA).

A row's logits must not depend on what else is in its batch: batch sizes 1, 2, 4, 8 and more
than one decode pass, other rows' lengths, rows joining and leaving mid-generation, prompt
log-probs asked or not, scoring alone or among others. Every comparison is `torch.equal`: a
difference of one ulp is a failure. The padded engine is shown to differ, so these tests can
tell the two apart.
"""

from __future__ import annotations

import random

import pytest
import torch

from pipeline.engines.base import GenerationRequest, SamplingParams
from pipeline.engines.rowwise import DECODE_WIDTH, Sequence, rowwise_attention

TEXTS = [
    "Stable.",
    "Patient admitted with chest pain, troponin negative, discharged on aspirin and atorvastatin.",
    "Summarize: pneumonia treated with antibiotics.",
    "Hi",
    "Summarize: fall at home, no fracture, walking with a frame, follow-up with the GP in a week.",
    "Discharge summary: sepsis from a urinary source, IV antibiotics then oral, creatinine back to baseline.",
    "Short note.",
    "Summarize the admission: COPD exacerbation, nebulisers, prednisolone, home on day four.",
    "Allergy to penicillin noted; rash resolved.",
    "Type 2 diabetes, metformin continued, HbA1c to be rechecked.",
]


@pytest.fixture(scope="module")
def engine(tiny_pipeline):
    from pipeline.bundle.verify import verify_bundle
    from pipeline.engines.hf import HFEngine

    return HFEngine.from_bundle(verify_bundle(tiny_pipeline["bundle"]))


def _ids(engine, text):
    return engine.tokenizer(text)["input_ids"]


def _alone(engine, ids, feed):
    """Logits for a prompt and then for each fed token, the sequence alone."""
    seq, first = engine.start(ids)
    out = [first[-1]]
    for tok in feed:
        out.append(engine.step([seq], [tok])[0])
    return out


# -- ops ---------------------------------------------------------------------------------------


def test_attention_of_a_row_ignores_the_other_rows_and_their_lengths():
    """One decode row over its own cache, alone or beside rows of other lengths (longer and
    shorter, more than one pass of rows)."""
    torch.manual_seed(0)

    class Layer:
        layer_idx = 0

    heads, kv_heads, dim = 4, 2, 16

    def decode(lengths, target):
        seqs = []
        for n in lengths:
            s = Sequence(1)
            g = torch.Generator().manual_seed(n)
            s.append(0, torch.randn(1, kv_heads, n, dim, generator=g), torch.randn(1, kv_heads, n, dim, generator=g))
            seqs.append(s)
        g = torch.Generator().manual_seed(1000)
        q = torch.randn(len(lengths), heads, 1, dim)
        q[target] = torch.randn(heads, 1, dim, generator=g)
        k = torch.randn(len(lengths), kv_heads, 1, dim)
        v = torch.randn(len(lengths), kv_heads, 1, dim)
        k[target], v[target] = torch.randn(kv_heads, 1, dim, generator=g), torch.randn(kv_heads, 1, dim, generator=g)
        out, _ = rowwise_attention(Layer(), q, k, v, None, scaling=dim ** -0.5, tailgate_rows=seqs)
        return out[target]

    alone = decode([37], 0)
    for lengths, target in (([37, 5], 0), ([300, 37, 1, 2], 1), ([1, 2, 3, 4, 5, 6, 7, 37], 7)):
        assert torch.equal(decode(lengths, target), alone)


def test_the_output_head_gives_a_position_the_same_logits_in_any_block(engine):
    runner = engine._stepper
    hidden = torch.randn(19, engine.model.config.hidden_size, dtype=torch.bfloat16)
    every = runner.logits(hidden)
    for i in (0, 7, 8, 18):
        assert torch.equal(runner.logits(hidden[i:i + 1])[0], every[i])
        assert torch.equal(runner.logits(hidden[i:])[0], every[i])


def test_a_lora_wrapped_nf4_linear_computes_each_row_of_a_decode_pass_alone(engine):
    """The claim the design rests on: at the decode pass's fixed shape, a row's output of the
    NF4 base + LoRA does not depend on the values of the other rows."""
    lm = engine.model.get_base_model()
    layer = lm.model.layers[0].self_attn.q_proj
    assert type(layer).__module__.startswith("peft")
    k = layer.in_features
    torch.manual_seed(1)
    x = torch.randn(DECODE_WIDTH, 1, k, dtype=torch.bfloat16)
    with torch.inference_mode():
        ref = layer(x)
        for trial in range(3):
            y = torch.randn(DECODE_WIDTH, 1, k, dtype=torch.bfloat16)
            y[trial] = x[trial]
            assert torch.equal(layer(y)[trial], ref[trial])


def test_row_blocks_give_every_matmul_widths_that_compute_a_row_as_the_decode_width():
    """One decode pass carries any number of rows, but each matmul module sees blocks of widths
    its probe found to compute a row to the bits a block of DECODE_WIDTH gives it (a BLAS may
    pick another kernel for 16 rows than for 8: measured on this project's hosts for a
    576x1536 float32 linear), so the pass equals blocks of DECODE_WIDTH each in a pass of its
    own; rows past the blocks that cover the live ones are padding, left out and zero."""
    from pipeline.engines.rowwise import _RowBlocks, _matmul_key
    from pipeline.engines.widths import cover

    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(576, 1536), torch.nn.SiLU(), torch.nn.Linear(1536, 576))
    seen = []
    first = model[0].forward
    model[0].forward = lambda x: seen.append(x.shape[0]) or first(x)  # what the module's own forward gets
    x = torch.randn(3 * DECODE_WIDTH, 1, 576)
    with torch.inference_mode():
        blocks = _RowBlocks(model)
        allowed = blocks.allowed(_matmul_key(model[0], model[0].weight))
        assert DECODE_WIDTH in allowed
        seen.clear()
        model(x)  # off: one call with every row
        assert seen == [3 * DECODE_WIDTH]
        blocks.on = True
        per_block = torch.cat([model(b) for b in x.split(DECODE_WIDTH)])
        seen.clear()
        together = model(x)
        blocks.live = 3
        three = model(x[:DECODE_WIDTH])
        blocks.on, blocks.live = False, None
        prefill = model(torch.randn(1, 40, 576))  # one row of many positions runs as it is
    if blocks.how(*_matmul_key(model[0], model[0].weight)) == "linear":  # else the module's forward is not called
        assert seen == list(cover(3 * DECODE_WIDTH, allowed)) + list(cover(3, allowed)) + [1]
        assert all(w in allowed for w in seen[:-1])
    assert torch.equal(together, per_block)
    assert torch.equal(three[:3], per_block[:3])
    # A block may hold more rows than are live (on a host whose widths skip 3, the three live
    # rows run as a block of 4); the rows past every shape's blocks are padding: left out, zero.
    covered = max(sum(blocks.sizes(3, _matmul_key(m, m.weight))) for m in (model[0], model[2]))
    assert covered >= 3
    assert not three[covered:].any()
    assert blocks.rows(3) == covered
    assert prefill.shape == (1, 40, 576)


def test_a_decode_pass_of_many_rows_gives_each_row_its_logits_alone(engine):
    """Twenty rows (two whole blocks and a padded one) in one forward pass."""
    texts = (TEXTS * 2)[:20]
    feed = [3, 9, 4]
    with torch.inference_mode():
        alone = [_alone(engine, _ids(engine, t), feed) for t in texts]
        seqs, firsts = zip(*(engine.start(_ids(engine, t)) for t in texts))
        steps = [engine.step(list(seqs), [tok] * len(texts)) for tok in feed]
    for i in range(len(texts)):
        assert torch.equal(firsts[i][-1], alone[i][0])
        assert all(torch.equal(steps[s][i], alone[i][s + 1]) for s in range(len(feed)))


# -- the model ---------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 2, 4, 8, 10])
def test_generate_gives_each_request_what_it_gets_alone(engine, batch):
    reqs = [GenerationRequest(_ids(engine, t), SamplingParams(max_new_tokens=6 + i % 3))
            for i, t in enumerate(TEXTS[:batch])]
    together = engine.generate(reqs)
    for req, got in zip(reqs, together):
        [alone] = engine.generate([req])
        assert got.token_ids == alone.token_ids and got.logprobs == alone.logprobs
        assert got.finish_reason == alone.finish_reason


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_logits_under_random_join_and_leave_schedules_equal_alone(engine, seed):
    """Rows join at random steps (prefilled alone), step with whatever else runs, leave at
    random steps; at every step each row's logits equal its logits alone, bit for bit."""
    rng = random.Random(seed)
    vocab = engine.model.config.vocab_size
    plans = []
    for text in rng.sample(TEXTS, 8):
        feed = [rng.randrange(vocab) for _ in range(rng.randint(1, 7))]
        plans.append({"ids": _ids(engine, text), "feed": feed, "join": rng.randint(0, 6)})
    with torch.inference_mode():
        expected = [_alone(engine, p["ids"], p["feed"]) for p in plans]
        got = [[] for _ in plans]
        running: list[int] = []
        seqs = {}
        step = 0
        while step <= 6 or running:
            for i, p in enumerate(plans):
                if p["join"] == step:
                    seqs[i], first = engine.start(p["ids"], all_positions=rng.random() < 0.3)
                    got[i].append(first[-1])
                    running.append(i)
            if running:
                logits = engine.step([seqs[i] for i in running], [plans[i]["feed"][len(got[i]) - 1] for i in running])
                for j, i in enumerate(running):
                    got[i].append(logits[j])
                running = [i for i in running if len(got[i]) <= len(plans[i]["feed"])]
            step += 1
    for want, have in zip(expected, got):
        assert len(want) == len(have)
        assert all(torch.equal(a, b) for a, b in zip(want, have))


def test_prompt_logprobs_and_scoring_do_not_depend_on_the_batch(engine):
    pairs = [(_ids(engine, t)[:3], _ids(engine, t)[3:]) for t in TEXTS if len(_ids(engine, t)) > 4]
    assert len(pairs) >= 4
    together = engine.token_logprobs(pairs)
    for pair, got in zip(pairs, together):
        assert engine.token_logprobs([pair])[0] == got
    # the prompt's own logits, asked for every position (the server's echo), agree with scoring
    # (the context prefilled alone, the continuation run over its cache): the same model summed
    # in another order, so to a tolerance, not bit for bit
    ids = _ids(engine, TEXTS[1])
    with torch.inference_mode():
        _, every = engine.start(ids, all_positions=True)
        _, last = engine.start(ids)
    assert torch.equal(every[-1], last[0])  # asking for prompt log-probs does not move the answer
    lp = torch.log_softmax(every[:-1].float(), dim=-1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)
    scored = engine.token_logprobs([(ids[:1], ids[1:])])[0]
    assert max(abs(a - b) for a, b in zip(lp.tolist(), scored)) < 2e-2


def test_the_padded_engine_is_not_batch_invariant(tiny_pipeline):
    """What the invariant path removes: left-padded attention rounds differently. Checked on
    the padded engine so that the tests above are known to be able to fail."""
    from pipeline.bundle.verify import verify_bundle
    from pipeline.engines.hf import HFEngine

    padded = HFEngine.from_bundle(verify_bundle(tiny_pipeline["bundle"]), batch_invariant=False)
    assert not padded.batch_invariant
    # In float32, the default bundle's compute dtype: the tiny bundle's bfloat16 outputs round
    # away most of the padded attention's differences, and under ATen's AVX2 kernels all of
    # them (0 of these 24 differed there; in float32 24 of 24 differ under AVX512, AVX2 and
    # the scalar kernels alike), so the control held only by luck of the host.
    for module in padded.model.modules():
        if hasattr(module, "compute_dtype"):  # the 4-bit layers multiply in this dtype
            module.compute_dtype = torch.float32
    padded.model.float()  # norms, embeddings, head and adapter; the packed 4-bit codes stay as they are
    ids = [_ids(padded, t) for t in TEXTS[:8]]
    with torch.inference_mode():
        alone = [_alone(padded, x, [5, 6, 7]) for x in ids]
        seqs, firsts = zip(*(padded.start(x) for x in ids))
        steps = [padded.step(list(seqs), [tok] * len(ids)) for tok in (5, 6, 7)]
    assert steps[0].dtype == torch.float32
    differs = sum(not torch.equal(alone[i][s + 1], steps[s][i]) for i in range(len(ids)) for s in range(3))
    assert differs > 0


def test_an_architecture_whose_forward_the_passes_do_not_reproduce_is_refused(tmp_path, monkeypatch):
    """Some causal LMs scale or cap logits in their own forward; the rowwise passes rebuild the
    forward from decoder + head, so the engine checks them against the model's forward once."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    from pipeline.engines.rowwise import RowwiseRunner
    from tests.conftest import build_tiny_model_dir

    model = AutoModelForCausalLM.from_pretrained(build_tiny_model_dir(tmp_path / "tiny"))
    model.eval()
    RowwiseRunner(model, pad_id=0)  # the plain Llama is reproduced
    forward = LlamaForCausalLM.forward

    def scaled(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        out.logits = out.logits * 2.0
        return out

    monkeypatch.setattr(LlamaForCausalLM, "forward", scaled)
    with pytest.raises(NotImplementedError, match="batch_invariant=False"):
        RowwiseRunner(model, pad_id=0)
