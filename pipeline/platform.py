"""The platform a model computed on: what decides which kernels ran, so which numbers came out.

The same bundle gives bit-identical outputs on machines of one platform class and may not on
another. What differs between classes, and what it changes (docs/platforms.md has the list
with the tests that simulate each):

- bitsandbytes' 4-bit kernel (`kernel_4bit`): on CPUs with AVX512-BF16 an eval-mode layer is
  converted to a packed layout and multiplied by `gemv_4bit` with its activations rounded to
  bfloat16; elsewhere every call dequantizes the weights and multiplies in the compute dtype.
- ATen's vectorised CPU kernels (`torch_cpu_capability`, lowered by ATEN_CPU_CAPABILITY) and
  oneDNN/MKL's GEMM dispatch (`cpu_isa`, `cpu_vendor`; ONEDNN_MAX_CPU_ISA caps it): another
  accumulation order for the same float32 matmul, softmax or norm.
- torch's bfloat16 paths: fast (AVX512-BF16/AMX) or emulated, with different rounding.
- MKL's instruction set when capped (`mkl_max_isa`, MKL_ENABLE_INSTRUCTIONS): its AVX2 and
  AVX-512 GEMM kernels sum in other orders, and tile a block's rows differently.
- How a decode block is multiplied (`decode_matmul`, pipeline/engines/blockmm.py): where the
  BLAS would give a row other bits in another slot of the block, another orientation.
- The thread count (`threads`): how reductions are split.
- The GPU and its compute capability, and the library versions.

Evaluation records the platform of the shipped pass beside the golden outputs; serving detects
its own and compares before the parity probe; a release is attested on another platform only
by replaying every evaluated item there (pipeline/release/attest.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform as _platform
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# CPU flags that change which kernel torch, oneDNN or bitsandbytes dispatch to
KERNEL_ISA = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
              "amx_tile", "amx_bf16", "amx_int8")
# What a 4-bit layer multiplies with
KERNEL_4BIT = {
    "cpu-packed-bf16": "bitsandbytes' packed CPU gemv_4bit (AVX512-BF16): activations rounded to bfloat16",
    "cpu-dequantize": "bitsandbytes dequantizes the NF4 weights on every call, then torch matmul in the compute dtype",
    "cuda": "bitsandbytes' CUDA 4-bit kernels",
    "none": "no 4-bit layers (a 16-bit base)",
    "vllm": "vLLM's own bitsandbytes kernels",
}


# Fields a record may lack (written before they existed); unset, they leave the id as it was
LATER_FIELDS = ("mkl_max_isa", "decode_matmul")


class Platform(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    device: Literal["cpu", "cuda"]
    cpu_vendor: str = Field(description="vendor_id from the CPU (MKL and oneDNN pick code paths by vendor).")
    cpu_model: str = Field(description="The CPU's model name; informative only, not part of the class.")
    cpu_isa: list[str] = Field(description="The kernel-relevant ISA extensions the CPU reports (KERNEL_ISA).")
    torch_cpu_capability: str = Field(description="ATen's vectorised kernel level (AVX512, AVX2, DEFAULT...).")
    onednn_max_isa: str | None = Field(description="ONEDNN_MAX_CPU_ISA when set (caps oneDNN's dispatch).")
    gpu: str | None = Field(description="GPU name and compute capability, null on CPU.")
    kernel_4bit: str = Field(description="Which 4-bit kernel the model's layers ran (KERNEL_4BIT).")
    threads: int = Field(description="torch intra-op threads.")
    versions: dict[str, str] = Field(description="torch, transformers, peft, bitsandbytes versions.")
    mkl_max_isa: str | None = Field(default=None, description="MKL_ENABLE_INSTRUCTIONS when set (caps MKL).")
    decode_matmul: str | None = Field(
        default=None, description="The decode blocks' matmul shapes not multiplied by F.linear, and how "
        "(pipeline/engines/blockmm.py); null when every shape is.")

    def key(self) -> dict:
        """What decides the numbers: everything but the CPU's model name. The fields added
        later count only when set, so a platform recorded before them keeps its id."""
        return self.model_dump(exclude={"cpu_model", *self._unset_later()})

    def _unset_later(self) -> set[str]:
        return {f for f in LATER_FIELDS if getattr(self, f) is None}

    @property
    def platform_id(self) -> str:
        """16 hex digits naming the platform class (same id: the same kernels and versions)."""
        blob = json.dumps(self.key(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def describe(self) -> str:
        where = self.gpu if self.device == "cuda" else f"{self.cpu_vendor} CPU"
        bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in self.cpu_isa]
        isa = f"ATen {self.torch_cpu_capability}" + (f", {'+'.join(bf16)}" if bf16 else ", no bf16 ISA")
        if self.mkl_max_isa:
            isa += f", MKL capped at {self.mkl_max_isa}"
        libs = ", ".join(f"{k} {v}" for k, v in sorted(self.versions.items()))
        blocks = f", decode blocks {self.decode_matmul}" if self.decode_matmul else ""
        return (f"{self.device} ({where}; {isa}), 4-bit kernel {self.kernel_4bit}{blocks}, {self.threads} threads, "
                f"{libs} [platform {self.platform_id}]")

    def as_record(self) -> dict:
        return {**self.model_dump(exclude=self._unset_later()), "platform_id": self.platform_id,
                "description": self.describe()}

    @classmethod
    def from_record(cls, record: dict | None) -> Platform | None:
        if not record:
            return None
        return cls.model_validate({k: v for k, v in record.items() if k not in ("platform_id", "description")})


def differences(recorded: Platform, here: Platform) -> list[str]:
    """Each field of the platform class that differs, as 'field: recorded -> here'."""
    a, b = recorded.key(), here.key()  # a later field unset on one side is absent from its key
    return [f"{k}: {a.get(k)} -> {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def cpu_info() -> tuple[str, str, list[str]]:
    """(vendor, model name, flags) of the first CPU; /proc/cpuinfo on Linux."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read().split("\n\n", 1)[0]
    except OSError:
        return _platform.processor() or "unknown", _platform.machine(), []
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    flags = (fields.get("flags") or fields.get("Features") or "").split()
    return fields.get("vendor_id", _platform.machine()), fields.get("model name", "unknown"), flags


def four_bit_layers(model) -> list:
    """(name, module) of every bitsandbytes 4-bit linear layer; none without bitsandbytes."""
    try:
        import bitsandbytes as bnb
    except ImportError:  # a 16-bit base (quantization: none) on a machine without it
        return []
    return [(name, m) for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]


def is_packed(module) -> bool:
    """Whether bitsandbytes converted this layer to its CPU inference layout (no backward)."""
    state = getattr(module.weight, "quant_state", None)
    return bool(getattr(state, "packing_format_for_cpu", False))


def kernel_4bit(model) -> str:
    """Which 4-bit kernel the model's layers run (or will run at their first eval forward)."""
    layers = four_bit_layers(model)
    if not layers:
        return "none"
    _name, first = layers[0]
    if first.weight.device.type == "cuda":
        return "cuda"
    # a layer not yet run converts at its first eval-mode, no-grad forward when the flag is on
    if any(is_packed(m) or getattr(m, "support_avx512bf16_for_cpu", False) for _n, m in layers):
        return "cpu-packed-bf16"
    return "cpu-dequantize"


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("torch", "transformers", "peft", "bitsandbytes"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out


def detect(model=None, kernel: str | None = None) -> Platform:
    """This process's platform; the 4-bit kernel from `model` (or given as `kernel`)."""
    import torch

    vendor, model_name, flags = cpu_info()
    gpu = None
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        gpu = f"{torch.cuda.get_device_name(0)} (sm_{major}{minor}, CUDA {torch.version.cuda})"
    if kernel is None:
        kernel = kernel_4bit(model) if model is not None else "none"
    return Platform(
        device="cuda" if gpu else "cpu", cpu_vendor=vendor, cpu_model=model_name,
        cpu_isa=sorted(f for f in set(flags) if f in KERNEL_ISA),
        torch_cpu_capability=torch.backends.cpu.get_cpu_capability(),
        onednn_max_isa=os.environ.get("ONEDNN_MAX_CPU_ISA") or None, gpu=gpu, kernel_4bit=kernel,
        threads=torch.get_num_threads(), versions=library_versions(),
        mkl_max_isa=(os.environ.get("MKL_ENABLE_INSTRUCTIONS") or "").upper() or None, decode_matmul=decode_matmul(model))


def decode_matmul(model) -> str | None:
    """What a batch-invariant engine multiplies its decode blocks with, when not F.linear
    throughout (pipeline/engines/rowwise.py sets it on the model it runs)."""
    plan = getattr(model, "tailgate_decode_plan", None) if model is not None else None
    if not plan:
        return None
    from pipeline.engines.blockmm import summary

    text = summary(plan)
    return None if text == "linear" else text
