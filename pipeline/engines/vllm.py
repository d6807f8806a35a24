"""`vllm` engine: the bundle's pre-quantized NF4 base loaded by vLLM (bitsandbytes through
`vllm-bnb-plugin` since vLLM 0.28) with the bundle's LoRA adapter attached per request.

vLLM is imported only when this engine is built: the rest of the project, and every test that
does not ask for vLLM, runs without it. `llm_kwargs` and `sampling_kwargs` are plain
functions of the manifest and the request so the configuration is checked on any machine
(tests/unit/test_vllm_config.py); the engine itself is exercised by `make test-vllm`.

vLLM's kernels are not the ones evaluation ran, so the engine never claims exactness
(`exact = False`): the serving parity probe measures how far its greedy tokens and log-probs
are from the golden outputs and refuses to start beyond the tolerance.

Batch invariance (a prompt's answer does not depend on what else is in the batch) is vLLM's
own mode, switched on by VLLM_BATCH_INVARIANT=1 before vLLM is imported; `batch_invariance`
decides it from the platform and the base, and the engine reports what it got in
`batch_invariant` / `batch_invariance_detail`.

This module is the vllm engine's configuration: the arguments built from the bundle
(`llm_kwargs`, `sampling_kwargs`), the setup before vLLM starts (`prepare`) and the reading of
vLLM's outputs (`take_tokens`, `continuation_score`), all plain functions checked on any machine.
The engine itself (vllm_async.py) runs vLLM's async engine, the one path for serving, lm-eval
evaluation and the tests: there is no second, offline vLLM path whose answers could differ.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pipeline.engines.base import Completion, GenerationRequest, TokenCallback
from pipeline.engines.vllm_invariance import (  # noqa: F401  (re-exported: the engine's configuration)
    BATCH_INVARIANT_ENV, BatchInvariance, batch_invariance, detect_device, vllm_batch_invariant,
)

log = logging.getLogger(__name__)

# vLLM accepts only these LoRA ranks for max_lora_rank; the adapter's r must fit under one.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def max_lora_rank(r: int) -> int:
    for allowed in VLLM_LORA_RANKS:
        if r <= allowed:
            return allowed
    raise ValueError(f"LoRA rank {r} is above what vLLM serves ({VLLM_LORA_RANKS[-1]})")


# Above any block size vLLM uses (16 on GPUs, 128 on its CPU backend).
KV_SPARE_TOKENS = 256

_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


def kv_cache_bytes(config: dict, dtype: str, tokens: int) -> int:
    """Bytes of K and V for `tokens` positions: 2 x layers x kv_heads x head_dim x dtype size.

    Given to vLLM explicitly: by default it reserves a fraction of all memory (92% of the host
    RAM on the CPU backend, and refuses to start when other processes hold more than that)."""
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    return 2 * config["num_hidden_layers"] * kv_heads * head_dim * _DTYPE_BYTES[dtype] * tokens


def vllm_dtype(method: str, compute_dtype: str) -> str:
    """The dtype vLLM computes in: the bundle's, except a 4-bit base with float32 compute.

    vllm-bnb-plugin 0.0.3 sizes a packed 4-bit weight by the compute dtype's width (32 bits /
    8 = 4 weights a byte under float32 instead of 2) and then fails to load it (an assertion on
    the weight's shape, seen here on the default bundle). Such a bundle runs under bfloat16: the
    same 4-bit codes, other rounding, which the parity probe measures against the golden
    outputs (and refuses to start beyond its tolerance); the engine's description says so."""
    if method in ("nf4", "fp4") and compute_dtype == "float32":
        return "bfloat16"
    return compute_dtype


def llm_kwargs(manifest, bundle_root: str | Path, *, seed: int = 0, max_batch: int = 8,
               tensor_parallel_size: int = 1) -> dict[str, Any]:
    """Arguments of vLLM's `AsyncEngineArgs` for a verified bundle: its own base, tokenizer
    and context, a KV cache sized for `max_batch` full-context sequences (the server's batch
    size), and the scale a user sets (`tensor_parallel_size` GPUs)."""
    if tensor_parallel_size < 1:
        raise ValueError("tensor_parallel_size must be at least 1")
    root = Path(bundle_root)
    method = manifest.quantization.method
    config = json.loads((root / "base_q" / "config.json").read_text(encoding="utf-8"))
    context = manifest.inference.max_context_tokens
    dtype = vllm_dtype(method, manifest.quantization.compute_dtype)
    kwargs: dict[str, Any] = {
        "model": str(root / "base_q"),
        # The bundle keeps the tokenizer (with the pinned chat template) apart from the weights.
        "tokenizer": str(root / "tokenizer"),
        "trust_remote_code": False,
        "dtype": dtype,
        "max_model_len": context,
        "max_num_seqs": max_batch,
        # one block more than the sequences fill: vLLM keeps a block aside, and a cache of exactly
        # one full context leaves a lone sequence (lm-eval's batch size 1) a block short
        "kv_cache_memory_bytes": kv_cache_bytes(config, dtype, context * max_batch + KV_SPARE_TOKENS),
        "enable_lora": True,
        "max_loras": 1,
        "max_lora_rank": max_lora_rank(int(manifest.adapter.lora_config["r"])),
        "seed": seed,
        # Generation config of the bundle is ignored on purpose: sampling comes from the request,
        # defaults from the manifest's inference section.
        "generation_config": "vllm",
        "tensor_parallel_size": tensor_parallel_size,
    }
    if method in ("nf4", "fp4"):
        # The saved config carries bitsandbytes' quantization_config: vLLM loads the packed
        # 4-bit weights as they are, never re-quantizing from 16 bits.
        kwargs["quantization"] = "bitsandbytes"
    elif method != "none":
        raise ValueError(f"the vllm engine cannot load quantization method {method!r}")
    return kwargs


def sampling_kwargs(req: GenerationRequest, default_stops: Sequence[int]) -> dict[str, Any]:
    """Arguments of `vllm.SamplingParams` for one request, matching the hf engine's decoding."""
    s = req.sampling
    kw: dict[str, Any] = {
        "max_tokens": s.max_new_tokens,
        "temperature": s.temperature if not s.greedy else 0.0,
        "top_p": s.top_p if not s.greedy else 1.0,
        "stop_token_ids": list(s.stop_token_ids or default_stops),
        # The bundle's stop ids are the whole truth; vLLM's own EOS handling would add the
        # tokenizer's eos even when a request named other stops.
        "ignore_eos": True,
        "logprobs": 0,  # the chosen token's log-prob only (raw model log-probs, as hf computes)
        "detokenize": False,  # serving detokenizes itself (UTF-8-safe, stop strings)
        "skip_special_tokens": False,
    }
    if not s.greedy and s.seed is not None:
        kw["seed"] = s.seed
    return kw


@dataclass
class Setup:
    """What the vllm engine builds from a verified bundle before vLLM starts."""

    kwargs: dict[str, Any]  # AsyncEngineArgs arguments
    invariance: BatchInvariance
    lora_request: Any
    tokenizer: Any
    requested: bool

    def confirm(self) -> tuple[bool, str]:
        """(batch_invariant, detail) once vLLM runs: what it actually runs with."""
        invariant, detail = self.invariance.invariant, self.invariance.reason
        if invariant and vllm_batch_invariant() is False:
            # An earlier engine in this process initialised vLLM without the mode; it is cached.
            invariant, detail = False, detail + "; but vLLM in this process runs without it (initialised earlier)"
        if self.requested and not invariant:
            log.warning("vllm engine: not batch-invariant: %s", detail)
        return invariant, detail


def prepare(bundle, *, seed: int, max_batch: int, batch_invariant: bool, tensor_parallel_size: int) -> Setup:
    # In-process, vLLM's CPU backend would otherwise drop the whole process to one torch
    # thread ("Reducing Torch threads ... for serving") unless OMP_NUM_THREADS is set.
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
    kwargs = llm_kwargs(bundle.manifest, bundle.root, seed=seed, max_batch=max_batch,
                        tensor_parallel_size=tensor_parallel_size)
    device, capability, arch = detect_device()
    bi = batch_invariance(batch_invariant, device, capability, arch=arch,
                          quantization=kwargs.get("quantization"), environ=os.environ)
    # vLLM reads the variable once (at import, or when its engine starts) and its workers
    # inherit it, so it goes in before anything imports vLLM.
    os.environ.update(bi.env)
    kwargs.update(bi.llm_kwargs)
    from transformers import AutoTokenizer
    from vllm.lora.request import LoRARequest

    lora = LoRARequest("bundle-adapter", 1, str(bundle.root / "adapter"))
    tokenizer = AutoTokenizer.from_pretrained(bundle.root / "tokenizer", trust_remote_code=False)
    return Setup(kwargs, bi, lora, tokenizer, batch_invariant)


def take_tokens(comp: Completion, token_ids: Sequence[int], logprobs, stops: set[int], row: int,
                on_token: TokenCallback | None) -> bool:
    """Append one vLLM output's new tokens to `comp` the way the hf engine reports them: a stop
    id ends the answer and is not part of it; log-probs are the chosen tokens'. True when the
    answer ended here (a stop id, or the caller's callback returned False: cancelled)."""
    logprobs = logprobs or [None] * len(token_ids)
    for tok, lps in zip(token_ids, logprobs):
        if tok in stops:
            comp.finish_reason = "stop"
            return True
        lp = float(lps[tok].logprob) if lps is not None and tok in lps else float("nan")
        comp.token_ids.append(tok)
        comp.logprobs.append(lp)
        if on_token is not None and on_token(row, tok, lp) is False:
            comp.finish_reason = "cancelled"
            return True
    return False


def continuation_score(prompt_logprobs, context_len: int, continuation: Sequence[int]) -> tuple[float, bool]:
    """(sum of the continuation's log-probs, every token the model's top choice) from vLLM's
    prompt log-probs (one entry per prompt position, None for the first; rank 1 = greedy)."""
    steps = prompt_logprobs[context_len:context_len + len(continuation)]
    if len(steps) != len(continuation) or any(step is None or tok not in step
                                              for tok, step in zip(continuation, steps)):
        raise RuntimeError("vLLM returned no prompt log-prob for part of the continuation")
    total, greedy = 0.0, True
    for tok, step in zip(continuation, steps):
        total += step[tok].logprob
        greedy &= step[tok].rank == 1
    return total, greedy


def _version() -> str:
    try:
        import vllm

        return vllm.__version__
    except Exception:  # version string only decorates the description
        return "?"
