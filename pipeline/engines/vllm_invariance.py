"""vLLM's batch-invariant mode: whether this platform and base can have it, and what vLLM runs with.

Pure decisions (`batch_invariance`) are separate from what is read off the machine
(`detect_device`) and off the imported vLLM (`vllm_batch_invariant`), so the configuration is
tested on any machine (tests/unit/test_vllm_config.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

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
    llm_kwargs: dict[str, Any] = field(default_factory=dict)  # extra engine arguments (AsyncEngineArgs)


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


def vllm_batch_invariant() -> bool | None:
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
