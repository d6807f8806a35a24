"""A decode block's rows get the same bits in every slot, on both host classes (blockmm.py).

MKL's AVX2 float32 kernels tile `F.linear`'s rows six at a time, so in a block of 8 the last
two rows are computed by another kernel: on an AVX2-only Intel host a request decoding in slot
6 or 7 drifted from the same request in slot 0. The engine probes each shape and multiplies it
the first way that is row-invariant. These tests run a 4-bit + LoRA model of the default
model's widths in a subprocess under this host's own dispatch and under MKL/ATen/oneDNN capped
at AVX2 (the other host class, simulated), put one row in every slot of a decode pass, and ask
for the same logits bit for bit; with the probe overruled to F.linear the AVX2 run must show
the drift, so the test can tell.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pipeline.engines.blockmm import HOWS, block_linear, orientation, summary
from pipeline.engines.fixedmm import ENV_KERNEL, ENV_PORTABLE
from pipeline.engines.rowwise import DECODE_WIDTH
from tests.conftest import uncapped_env

REPO = Path(__file__).resolve().parents[2]
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("bias", [False, True])
def test_every_orientation_computes_the_same_product(how, bias):
    gen = torch.Generator().manual_seed(3)
    x, w = torch.randn(DECODE_WIDTH, 1, 96, generator=gen), torch.randn(40, 96, generator=gen)
    b = torch.randn(40, generator=gen) if bias else None
    out = block_linear(x, w, b, how)
    assert out.shape == (DECODE_WIDTH, 1, 40) and out.is_contiguous()
    torch.testing.assert_close(out, F.linear(x, w, b), rtol=1e-5, atol=1e-5)
    if how == "rows":  # each row alone: exactly F.linear of a one-row input
        assert all(torch.equal(out[i], F.linear(x[i], w, b)) for i in range(DECODE_WIDTH))


def test_the_probe_answers_with_an_orientation_and_the_summary_names_the_others():
    assert orientation(64, 48, torch.float32, False, DECODE_WIDTH) in HOWS
    plan = {(576, 1536, torch.float32, False): "transposed", (16, 576, torch.float32, True): "rows",
            (64, 64, torch.bfloat16, False): "linear"}
    assert summary(plan) == "16x576 float32 +bias: rows; 576x1536 float32: transposed"
    assert summary({(64, 64, torch.float32, False): "linear"}) == "linear"
    # one name for a plan of the fixed-order kernel throughout; a BLAS plan reads as it always did
    both = {(576, 1536, torch.float32, False): "transposed", (576, 576, torch.float32, False): "transposed"}
    assert summary(both) == "576x1536 float32: transposed; 576x576 float32: transposed"
    assert summary({k: "fixed" for k in both}) == "fixed"
    assert summary({**{k: "fixed" for k in both}, (64, 64, torch.bfloat16, False): "rows"}) == \
        "576x1536 float32: fixed; 576x576 float32: fixed; 64x64 bfloat16: rows"
    with pytest.raises(ValueError, match="orientation"):
        block_linear(torch.zeros(2, 4), torch.zeros(3, 4), None, "sideways")


def _model():
    """A 4-bit (NF4, float32 compute) + LoRA model of SmolLM2-135M's widths, 2 layers."""
    import tempfile

    from peft import LoraConfig, get_peft_model
    from transformers import BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

    from pipeline.engines.dequant import prepare_for_inference

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1024, hidden_size=576, intermediate_size=1536, num_hidden_layers=2,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=256,
                         tie_word_embeddings=True)
    with tempfile.TemporaryDirectory() as tmp:
        LlamaForCausalLM(config).save_pretrained(tmp)
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.float32)
        base = LlamaForCausalLM.from_pretrained(tmp, quantization_config=quant, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear")).eval()
    for m in model.modules():  # a trained adapter: B is not zero
        if hasattr(m, "lora_B") and len(m.lora_B):
            torch.nn.init.normal_(m.lora_B["default"].weight, std=0.02)
    prepare_for_inference(model)
    return model


def slot_check() -> dict:
    """Run in a subprocess: one row decoded in every slot of an 8-row pass, alone, and last in
    passes of 3, 13 and 20 rows, with the probe's plan
    (through the fused LoRA forward, then through peft's own forward under the row blocks) and,
    on a fresh model, with the probe overruled to F.linear."""
    import hashlib
    import logging

    import pipeline.engines.rowwise as rowwise
    from pipeline.engines.blockmm import _row_invariant
    from pipeline.engines.lora_fused import unfuse
    from pipeline.platform import detect

    warnings = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("pipeline.engines.lora_fused").addHandler(handler)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 1024, (5 + 3 * (i % 8),), generator=gen).tolist() for i in range(20)]
    feed = [p[-1] for p in prompts]

    def slots(runner) -> tuple[bool, torch.Tensor]:
        with torch.inference_mode():
            pre = [runner.start(p)[0] for p in prompts]
            first = runner.decode([s.copy() for s in pre[:DECODE_WIDTH]], feed[:DECODE_WIDTH])
            same = True
            for shift in range(1, DECODE_WIDTH):
                order = [(i + shift) % DECODE_WIDTH for i in range(DECODE_WIDTH)]
                out = runner.decode([pre[i].copy() for i in order], [feed[i] for i in order])
                same = same and torch.equal(out[order.index(0)], first[0])
            # alone, and last of passes whose blocks take other widths (pipeline/engines/widths.py)
            for n in (1, 3, 13, 20):
                order = list(range(1, n)) + [0]
                out = runner.decode([pre[i].copy() for i in order], [feed[i] for i in order])
                same = same and torch.equal(out[-1], first[0])
        return same, first

    model = _model()
    runner = rowwise.RowwiseRunner(model, pad_id=0)
    invariant, fused_logits = slots(runner)
    result = {"fused": runner.fused_layers, "invariant": invariant,
              "linear_invariant": _row_invariant("linear", 576, 1536, torch.float32, False, DECODE_WIDTH, "cpu"),
              "platform": detect(model).as_record(),
              "logits_sha256": hashlib.sha256(fused_logits.numpy().tobytes()).hexdigest()}
    unfuse(model)  # peft's own forward, its matmul modules under the row blocks
    result["peft_invariant"], peft_logits = slots(runner)
    result["peft_equal_fused"] = torch.equal(peft_logits, fused_logits)
    result["fused_warnings"] = warnings
    rowwise._RowBlocks.how = lambda self, *key: "linear"  # overrule the probe: peft's F.linear
    result["forced_linear_invariant"] = slots(rowwise.RowwiseRunner(_model(), pad_id=0))[0]
    return result


def _run(env: dict) -> dict:
    # one subprocess per environment for the whole file (the portable test reuses a slot check's run)
    return json.loads(_run_once(tuple(sorted(env.items()))))


@functools.lru_cache(maxsize=None)
def _run_once(env: tuple) -> str:
    env = dict(env)
    code = "import json; from tests.unit.test_blockmm import slot_check; print(json.dumps(slot_check()))"
    # with torch's default threads (not make test's per-worker cap): the threads a release runs
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=uncapped_env(env), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("kernel", ["fixed", "blas"])
@pytest.mark.parametrize("dispatch", ["native", "avx2"])
def test_a_row_decodes_to_the_same_bits_in_every_slot_of_a_block(dispatch, kernel):
    r = _run({**(AVX2 if dispatch == "avx2" else {}), ENV_KERNEL: kernel})
    assert r["fused"] == 14 and r["fused_warnings"] == []  # 7 linears a layer, 2 layers, none fell back
    assert r["invariant"], f"a row's logits depend on its slot under {dispatch} dispatch ({r['platform']})"
    # the peft forward a layer falls back to computes the fused layer's numbers under either plan
    assert r["peft_invariant"] and r["peft_equal_fused"]
    plan = r["platform"].get("decode_matmul")
    if kernel == "fixed":
        # every product of the pass (base, LoRA A and B, the head) in the fixed order, and the
        # record says so; overruled to F.linear, the engine drifts where the BLAS would
        assert plan == "fixed"
        if not r["linear_invariant"]:
            assert not r["forced_linear_invariant"]
    elif not r["linear_invariant"]:
        # the probe saw F.linear drift and chose another way, which the record names; and
        # overruled, the engine drifts: this test would catch the engine without the probe
        assert plan and "576x1536 float32: " in plan
        assert not r["forced_linear_invariant"]
    if dispatch == "avx2":
        assert r["platform"]["mkl_max_isa"] == "AVX2"


def test_the_portable_fixed_order_kernel_decodes_the_same_logits():
    """A CPU without AVX2 runs the kernel's portable path: simulated here, the whole decode of
    every slot gives the logits of the AVX2 + FMA path bit for bit."""
    fast, portable = _run({ENV_KERNEL: "fixed"}), _run({ENV_KERNEL: "fixed", ENV_PORTABLE: "1"})
    assert fast["invariant"] and portable["invariant"]
    assert portable["logits_sha256"] == fast["logits_sha256"]
    assert portable["platform"]["platform_id"] == fast["platform"]["platform_id"]
