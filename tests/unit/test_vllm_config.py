"""The vllm engine's configuration, checked without vLLM: what vLLM's `AsyncEngineArgs` and
`SamplingParams` would be given for the tiny bundle, and how outputs and prompt log-probs are
read back."""

from __future__ import annotations

import json
import logging
import os
import sys
from types import ModuleType, SimpleNamespace

import pytest

from pipeline.bundle.verify import verify_bundle
from pipeline.engines import vllm as vllm_engine
from pipeline.engines.base import Completion, GenerationRequest, SamplingParams
from pipeline.engines.vllm import (batch_invariance, continuation_score, llm_kwargs, max_lora_rank, sampling_kwargs,
                                   take_tokens)
from pipeline.engines.vllm_async import AsyncVLLMEngine


def test_llm_kwargs_load_the_bundles_own_prequantized_base_and_tokenizer(tiny_pipeline):
    b = verify_bundle(tiny_pipeline["bundle"])
    kw = llm_kwargs(b.manifest, b.root)
    assert kw["model"] == str(b.root / "base_q") and kw["tokenizer"] == str(b.root / "tokenizer")
    assert kw["quantization"] == "bitsandbytes" and kw["trust_remote_code"] is False
    assert kw["max_model_len"] == b.manifest.inference.max_context_tokens
    assert kw["dtype"] == b.manifest.quantization.compute_dtype
    assert kw["enable_lora"] and kw["max_lora_rank"] >= b.manifest.adapter.lora_config["r"]
    # vLLM takes the quantization from the saved config: it must describe NF4 + double quant.
    qcfg = json.loads((b.root / "base_q/config.json").read_text())["quantization_config"]
    assert qcfg["load_in_4bit"] and qcfg["bnb_4bit_quant_type"] == "nf4" and qcfg["bnb_4bit_use_double_quant"]
    assert (b.root / "tokenizer/chat_template.jinja").is_file()


def test_a_4bit_base_computing_in_float32_runs_vllm_in_bfloat16(tiny_pipeline):
    """vllm-bnb-plugin packs 4-bit weights by the compute dtype's width; float32 would halve them."""
    from pipeline.engines.vllm import vllm_dtype

    b = verify_bundle(tiny_pipeline["bundle"])
    m = b.manifest
    f32 = m.model_copy(update={"quantization": m.quantization.model_copy(update={"compute_dtype": "float32"})})
    kw = llm_kwargs(f32, b.root, max_batch=2)
    assert kw["dtype"] == "bfloat16" and kw["quantization"] == "bitsandbytes"
    assert kw["kv_cache_memory_bytes"] == llm_kwargs(m.model_copy(update={"quantization": m.quantization.model_copy(
        update={"compute_dtype": "bfloat16"})}), b.root, max_batch=2)["kv_cache_memory_bytes"]
    assert vllm_dtype("none", "float32") == "float32" and vllm_dtype("nf4", "float16") == "float16"


def test_kv_cache_is_sized_for_the_batch_not_a_share_of_host_memory(tiny_pipeline):
    from pipeline.engines.vllm import KV_SPARE_TOKENS, kv_cache_bytes

    b = verify_bundle(tiny_pipeline["bundle"])
    kw = llm_kwargs(b.manifest, b.root, max_batch=4)
    cfg = json.loads((b.root / "base_q/config.json").read_text())
    assert kw["max_num_seqs"] == 4
    assert kw["kv_cache_memory_bytes"] == kv_cache_bytes(cfg, b.manifest.quantization.compute_dtype,
                                                         4 * b.manifest.inference.max_context_tokens + KV_SPARE_TOKENS)
    # SmolLM2-135M: 30 layers, 3 KV heads of 64 dims, bf16 -> 23,040 bytes per position
    smol = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "hidden_size": 576}
    assert kv_cache_bytes(smol, "bfloat16", 1) == 23_040
    assert kv_cache_bytes({**smol, "num_key_value_heads": None}, "float32", 2) == 2 * 30 * 9 * 64 * 4 * 2


def test_16bit_bundle_gets_no_quantization_and_unknown_methods_are_refused(tiny_pipeline):
    b = verify_bundle(tiny_pipeline["bundle"])
    m = b.manifest
    sixteen = m.model_copy(update={"quantization": m.quantization.model_copy(update={"method": "none"})})
    assert "quantization" not in llm_kwargs(sixteen, b.root)
    odd = m.model_copy(update={"quantization": m.quantization.model_copy(update={"method": "gptq"})})
    with pytest.raises(ValueError, match="gptq"):
        llm_kwargs(odd, b.root)


@pytest.mark.parametrize("r,expected", [(1, 1), (4, 8), (16, 16), (17, 32), (64, 64), (300, 320)])
def test_max_lora_rank_is_the_smallest_allowed_rank_that_fits(r, expected):
    assert max_lora_rank(r) == expected


def test_a_rank_vllm_cannot_serve_is_refused():
    with pytest.raises(ValueError, match="rank 600"):
        max_lora_rank(600)


def test_sampling_kwargs_mirror_the_hf_decoding():
    greedy = sampling_kwargs(GenerationRequest([1, 2], SamplingParams(max_new_tokens=5, temperature=0.0, top_p=0.5,
                                                                       seed=3)), default_stops=(7, 8))
    assert greedy["temperature"] == 0.0 and greedy["top_p"] == 1.0 and "seed" not in greedy
    assert greedy["stop_token_ids"] == [7, 8] and greedy["ignore_eos"] and greedy["logprobs"] == 0
    sampled = sampling_kwargs(GenerationRequest([1], SamplingParams(max_new_tokens=2, temperature=0.7, top_p=0.9,
                                                                    seed=11, stop_token_ids=(5,))), (7,))
    assert (sampled["temperature"], sampled["top_p"], sampled["seed"], sampled["stop_token_ids"]) == (0.7, 0.9, 11, [5])


def _lps(tokens, start=0):
    return [{t: SimpleNamespace(logprob=-0.1 * (start + i + 1))} for i, t in enumerate(tokens)]


def _read(tokens, stops, row=0, on_token=None):
    comp = Completion()
    return comp, take_tokens(comp, tokens, _lps(tokens), stops, row, on_token)


def test_outputs_read_back_like_the_hf_engine():
    seen = []
    c, ended = _read([4, 5, 9, 6], {9}, on_token=lambda row, t, lp: seen.append((row, t)))
    assert ended and c.token_ids == [4, 5] and c.finish_reason == "stop" and c.logprobs == pytest.approx([-0.1, -0.2])
    assert seen == [(0, 4), (0, 5)]
    c, ended = _read([4, 5], {9})
    assert not ended and c.token_ids == [4, 5]  # the caller reads vLLM's finish reason
    cancelled, ended = _read([4, 5, 6], {9}, row=2, on_token=lambda row, t, lp: t != 5)
    assert ended and cancelled.token_ids == [4, 5] and cancelled.finish_reason == "cancelled"
    # deltas accumulate: a second output adds to the first, and no log-probs read as NaN
    comp = Completion()
    take_tokens(comp, [4], _lps([4]), {9}, 0, None)
    assert not take_tokens(comp, [5], None, {9}, 0, None)
    assert comp.token_ids == [4, 5] and comp.logprobs[0] == pytest.approx(-0.1) and comp.logprobs[1] != comp.logprobs[1]


def _prompt_lps(ranks: dict[int, tuple[float, int]], ids):
    return [None] + [{t: SimpleNamespace(logprob=ranks[t][0], rank=ranks[t][1])} for t in ids[1:]]


def test_continuation_scores_read_from_prompt_logprobs():
    ids = [1, 2, 3, 4, 5]  # context [1, 2], continuation [3, 4, 5]
    lps = _prompt_lps({2: (-9.0, 7), 3: (-0.5, 1), 4: (-1.0, 1), 5: (-0.25, 2)}, ids)
    total, greedy = continuation_score(lps, 2, [3, 4, 5])
    assert total == pytest.approx(-1.75) and greedy is False  # token 5 was not the top choice
    assert continuation_score(lps, 2, [3, 4]) == (pytest.approx(-1.5), True)
    with pytest.raises(RuntimeError, match="no prompt log-prob"):
        continuation_score(lps[:4], 2, [3, 4, 5])  # vLLM returned too few positions


# -- batch invariance: the decision (pure) --

ENV = "VLLM_BATCH_INVARIANT"


@pytest.mark.parametrize("capability", [(8, 0), (8, 9), (9, 0), (12, 0)])
def test_requested_on_cuda_8_0_and_above_turns_the_mode_on(capability):
    bi = batch_invariance(True, "cuda", capability, environ={})
    assert bi.env == {ENV: "1"} and bi.invariant is True
    assert f"{capability[0]}.{capability[1]}" in bi.reason and bi.llm_kwargs == {}


def test_requested_below_8_0_runs_without_and_names_the_capability():
    bi = batch_invariance(True, "cuda", (7, 5), environ={})
    assert bi.env == {} and bi.invariant is False
    assert "7.5" in bi.reason and "8.0" in bi.reason
    unknown = batch_invariance(True, "cuda", None, environ={})
    assert unknown.env == {} and not unknown.invariant and "unknown" in unknown.reason


def test_requested_on_cpu_runs_without_and_says_cpu():
    bi = batch_invariance(True, "cpu", None, environ={})
    assert bi.env == {} and bi.invariant is False and "CPU" in bi.reason
    odd = batch_invariance(True, "mps", None, environ={})
    assert odd.env == {} and not odd.invariant and "'mps'" in odd.reason


def test_not_requested_sets_nothing_even_where_supported():
    bi = batch_invariance(False, "cuda", (9, 0), environ={})
    assert bi.env == {} and bi.invariant is False and "not requested" in bi.reason


@pytest.mark.parametrize("arch,ok", [("gfx942:sramecc+:xnack-", True), ("gfx90a", True), ("gfx950", True),
                                     ("gfx1100", False), (None, False)])
def test_amd_instinct_archs_only(arch, ok):
    bi = batch_invariance(True, "rocm", None, arch=arch, environ={})
    assert bi.invariant is ok and bi.env == ({ENV: "1"} if ok else {})
    if not ok:
        assert str(arch or "unknown") in bi.reason


def test_xpu_selects_the_triton_attention_backend():
    bi = batch_invariance(True, "xpu", None, environ={})
    assert bi.invariant and bi.env == {ENV: "1"}
    assert bi.llm_kwargs == {"attention_config": {"backend": "TRITON_ATTN"}}


def test_a_bitsandbytes_base_gets_the_mode_but_is_not_claimed_invariant(tiny_pipeline):
    b = verify_bundle(tiny_pipeline["bundle"])
    quant = llm_kwargs(b.manifest, b.root)["quantization"]
    bi = batch_invariance(True, "cuda", (9, 0), quantization=quant, environ={})
    assert bi.env == {ENV: "1"} and bi.invariant is False and "gemv_4bit" in bi.reason
    # a 16-bit base is not affected
    assert batch_invariance(True, "cuda", (9, 0), quantization=None, environ={}).invariant


def test_an_explicit_environment_setting_is_respected():
    off = batch_invariance(True, "cuda", (9, 0), environ={ENV: "0"})
    assert off.env == {} and off.invariant is False
    assert f"{ENV}=0" in off.reason and "environment" in off.reason and "requested" in off.reason
    on = batch_invariance(False, "cuda", (9, 0), environ={ENV: "1"})
    assert on.env == {} and on.invariant is True and f"{ENV}=1" in on.reason
    on_cpu = batch_invariance(False, "cpu", None, environ={ENV: "1"})
    assert on_cpu.env == {} and on_cpu.invariant is False and "CPU" in on_cpu.reason
    # read as vLLM reads it: not an integer is off; empty counts as unset
    assert not batch_invariance(True, "cuda", (9, 0), environ={ENV: "yes"}).invariant
    assert batch_invariance(True, "cuda", (9, 0), environ={ENV: ""}).env == {ENV: "1"}


# -- batch invariance: the engine applies it before vLLM is imported (a stand-in vLLM) --


def _keep_env(monkeypatch, *names):
    """Whatever from_bundle writes to these variables is undone after the test."""
    for name in names:
        monkeypatch.setenv(name, os.environ.get(name, ""))
        if name == ENV:
            monkeypatch.delenv(name)


@pytest.fixture
def fake_vllm(monkeypatch):
    """A stand-in `vllm` that records the environment when `AsyncLLM` is imported and built."""
    _keep_env(monkeypatch, ENV, "OMP_NUM_THREADS")
    seen = {"reports": None}

    class AsyncLLM:
        @classmethod
        def from_engine_args(cls, args):
            seen["kwargs"], seen["env_at_build"] = args, os.environ.get(ENV)
            return cls()

        def shutdown(self):
            seen["shut_down"] = True

    def module_getattr(name):
        if name == "AsyncLLM":
            seen["env_at_import"] = os.environ.get(ENV)
            return AsyncLLM
        raise AttributeError(name)

    def reports():
        return seen["reports"] if seen["reports"] is not None else os.environ.get(ENV) == "1"

    mods = {name: ModuleType(name) for name in ("vllm", "vllm.lora", "vllm.lora.request", "vllm.model_executor",
                                                "vllm.model_executor.layers",
                                                "vllm.model_executor.layers.batch_invariant", "vllm.engine",
                                                "vllm.engine.arg_utils", "vllm.v1", "vllm.v1.engine",
                                                "vllm.v1.engine.async_llm")}
    mods["vllm.v1.engine.async_llm"].__getattr__ = module_getattr
    mods["vllm.engine.arg_utils"].AsyncEngineArgs = lambda **kw: kw
    mods["vllm"].__version__ = "0.0-fake"
    mods["vllm.lora.request"].LoRARequest = lambda *a: ("lora",) + a
    mods["vllm.model_executor.layers.batch_invariant"].vllm_is_batch_invariant = reports
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    engines = []
    seen["build"] = lambda bundle, **kw: engines.append(AsyncVLLMEngine.from_bundle(bundle, **kw)) or engines[-1]
    yield seen
    for engine in engines:
        engine.close()
    assert all(not e._thread.is_alive() for e in engines) and (not engines or seen["shut_down"])


def _device(monkeypatch, device, capability=None):
    monkeypatch.setattr(vllm_engine, "detect_device", lambda: (device, capability, None))


def _sixteen_bit(bundle):
    m = bundle.manifest
    return SimpleNamespace(root=bundle.root, manifest=m.model_copy(
        update={"quantization": m.quantization.model_copy(update={"method": "none"})}))


def test_engine_sets_the_mode_before_vllm_is_imported_and_reports_it(tiny_pipeline, fake_vllm, monkeypatch):
    _device(monkeypatch, "cuda", (9, 0))
    engine = fake_vllm["build"](_sixteen_bit(verify_bundle(tiny_pipeline["bundle"])))
    assert fake_vllm["env_at_import"] == "1" and fake_vllm["env_at_build"] == "1"
    assert engine.batch_invariant is True and "9.0" in engine.batch_invariance_detail
    assert engine.exact is False and "batch-invariant" in engine.description
    assert "quantization" not in fake_vllm["kwargs"]


def test_engine_on_cpu_warns_and_runs_without(tiny_pipeline, fake_vllm, monkeypatch, caplog):
    _device(monkeypatch, "cpu")
    with caplog.at_level(logging.WARNING, logger=vllm_engine.__name__):
        engine = fake_vllm["build"](verify_bundle(tiny_pipeline["bundle"]))
    assert fake_vllm["env_at_import"] is None and ENV not in os.environ
    assert engine.batch_invariant is False and "CPU" in engine.batch_invariance_detail
    assert any("CPU" in r.getMessage() for r in caplog.records)
    assert "not batch-invariant" in engine.description


def test_engine_on_an_nf4_bundle_runs_the_mode_but_does_not_claim_it(tiny_pipeline, fake_vllm, monkeypatch, caplog):
    _device(monkeypatch, "cuda", (8, 0))
    with caplog.at_level(logging.WARNING, logger=vllm_engine.__name__):
        engine = fake_vllm["build"](verify_bundle(tiny_pipeline["bundle"]))
    assert fake_vllm["env_at_import"] == "1" and fake_vllm["kwargs"]["quantization"] == "bitsandbytes"
    assert engine.batch_invariant is False and "gemv_4bit" in engine.batch_invariance_detail
    assert any("gemv_4bit" in r.getMessage() for r in caplog.records)


def test_engine_not_requested_or_switched_off_by_the_environment(tiny_pipeline, fake_vllm, monkeypatch):
    _device(monkeypatch, "cuda", (9, 0))
    bundle = _sixteen_bit(verify_bundle(tiny_pipeline["bundle"]))
    engine = fake_vllm["build"](bundle, batch_invariant=False)
    assert fake_vllm["env_at_import"] is None and engine.batch_invariant is False
    monkeypatch.setenv(ENV, "0")
    engine = fake_vllm["build"](bundle)
    assert fake_vllm["env_at_import"] == "0" and os.environ[ENV] == "0"
    assert engine.batch_invariant is False and f"{ENV}=0" in engine.batch_invariance_detail


def test_engine_believes_vllm_over_the_environment(tiny_pipeline, fake_vllm, monkeypatch):
    """vLLM caches the variable: one initialised earlier in the process without it stays without."""
    _device(monkeypatch, "cuda", (9, 0))
    fake_vllm["reports"] = False
    engine = fake_vllm["build"](_sixteen_bit(verify_bundle(tiny_pipeline["bundle"])))
    assert engine.batch_invariant is False and "initialised earlier" in engine.batch_invariance_detail
