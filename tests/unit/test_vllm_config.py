"""The vllm engine's configuration, checked without vLLM: what `vllm.LLM` and
`vllm.SamplingParams` would be given for the tiny bundle, and how outputs are read back."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from pipeline.bundle.verify import verify_bundle
from pipeline.engines.base import GenerationRequest, SamplingParams
from pipeline.engines.vllm import completion_from_output, llm_kwargs, max_lora_rank, sampling_kwargs


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


def test_kv_cache_is_sized_for_the_batch_not_a_share_of_host_memory(tiny_pipeline):
    from pipeline.engines.vllm import kv_cache_bytes

    b = verify_bundle(tiny_pipeline["bundle"])
    kw = llm_kwargs(b.manifest, b.root, max_batch=4)
    cfg = json.loads((b.root / "base_q/config.json").read_text())
    assert kw["max_num_seqs"] == 4
    assert kw["kv_cache_memory_bytes"] == kv_cache_bytes(cfg, b.manifest.quantization.compute_dtype, 4 * b.manifest.inference.max_context_tokens)
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


def _out(tokens, finish="length"):
    return SimpleNamespace(token_ids=tokens, finish_reason=finish,
                           logprobs=[{t: SimpleNamespace(logprob=-0.1 * (i + 1))} for i, t in enumerate(tokens)])


def test_outputs_read_back_like_the_hf_engine():
    seen = []
    c = completion_from_output(_out([4, 5, 9, 6], "stop"), {9}, 0, lambda row, t, lp: seen.append((row, t)))
    assert c.token_ids == [4, 5] and c.finish_reason == "stop" and c.logprobs == pytest.approx([-0.1, -0.2])
    assert seen == [(0, 4), (0, 5)]
    assert completion_from_output(_out([4, 5], "stop"), {9}, 0, None).finish_reason == "stop"  # id left out
    assert completion_from_output(_out([4, 5]), {9}, 0, None).finish_reason == "length"
    cancelled = completion_from_output(_out([4, 5, 6]), {9}, 2, lambda row, t, lp: t != 5)
    assert cancelled.token_ids == [4, 5] and cancelled.finish_reason == "cancelled"
