"""The lean decode pass (pipeline/engines/decode_llama.py) is transformers' own pass, bit for bit.

On the tiny real bundle (NF4 + LoRA, row blocks and fused LoRA layers as the engine runs them),
decode steps of 1, 3 and 8 rows run both ways on copies of the same caches and must give equal
logits; a decoder the pass does not cover (another class, a forward hook) is left to
transformers, and a pass that differs is caught when the runner loads.
"""

from __future__ import annotations

import pytest
import torch

from pipeline.engines import decode_llama


@pytest.fixture(scope="module")
def runner(tiny_pipeline):
    from pipeline.bundle.verify import verify_bundle
    from pipeline.engines.hf import HFEngine

    return HFEngine.from_bundle(verify_bundle(tiny_pipeline["bundle"]))._stepper


def _steps(runner, seqs, feeds, lean: bool) -> torch.Tensor:
    was, runner.lean = runner.lean, lean
    try:
        copies = [s.copy() for s in seqs]
        return torch.stack([runner.decode(copies, feed) for feed in feeds])
    finally:
        runner.lean = was


@pytest.mark.parametrize("rows", [1, 3, 8])
def test_lean_decode_steps_are_transformers_bit_for_bit(runner, rows):
    assert runner.lean, "the tiny bundle's Llama decoder takes the lean pass"
    gen = torch.Generator().manual_seed(rows)
    vocab = runner.config.vocab_size
    with torch.inference_mode():
        seqs = [runner.start(torch.randint(3, vocab, (5 + 7 * r,), generator=gen).tolist())[0] for r in range(rows)]
        feeds = [torch.randint(3, vocab, (rows,), generator=gen).tolist() for _ in range(4)]
        lean, theirs = _steps(runner, seqs, feeds, True), _steps(runner, seqs, feeds, False)
    assert torch.equal(lean, theirs)


def test_a_hooked_or_foreign_decoder_is_left_to_transformers(runner):
    decoder = runner.decoder
    assert decode_llama.applies(decoder)
    handle = decoder.layers[0].mlp.register_forward_hook(lambda *a: None)
    try:
        assert not decode_llama.applies(decoder)  # calling forwards directly would skip the hook
    finally:
        handle.remove()
    assert decode_llama.applies(decoder)
    assert not decode_llama.applies(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_a_lean_pass_that_differs_is_caught_at_load(tiny_pipeline, monkeypatch, caplog):
    from pipeline.engines.hf import load_model
    from pipeline.engines.rowwise import RowwiseRunner

    real = decode_llama.decode_pass
    monkeypatch.setattr(decode_llama, "decode_pass", lambda *a, **k: real(*a, **k) * (1 + 2 ** -7))
    runner = RowwiseRunner(load_model(tiny_pipeline["base_q"], tiny_pipeline["bundle"] / "adapter"), pad_id=0)
    assert not runner.lean
    assert "lean decode pass does not reproduce" in caplog.text
