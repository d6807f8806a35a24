"""The `export` section: exports of the bundle, each evaluated and gated against it (off by default)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from pipeline.params.common import _Strict
from pipeline.params.gate import GateRule

# Damage against the shipped bundle an export may carry, on top of the suite's own gate.rules.
# Measured on the default bundle (docs/exports.md, benchmarks/results/exports.json): the float32
# merged export answered every item as the bundle did, the q8_0 GGUF moved the reference answers'
# NLL by 0.02 nats/token at the 99th percentile; the adapter merged into the 16-bit original base
# flipped a fifth of the fields the bundle got right and is refused by all three.
EXPORT_RULES = (
    GateRule(metric="damage.abs_delta_nll_per_token.p99", max=0.05,
             note="the export finds the reference answers as likely as the shipped bundle does, either way"),
    GateRule(metric="damage.flip_rate", max=0.05, note="fields right as shipped, wrong in the export"),
    GateRule(metric="damage.worst_slice_drop", max=0.05, note="no slice loses more than this against the bundle"),
)


class ExportParams(_Strict):
    """What the export stage writes; each export is evaluated on the bundle's suite and gated."""

    merged: bool = Field(False, description="Write and evaluate the merged model: the adapter merged into the "
                                            "dequantized NF4 base (docs/exports.md).")
    merged_dtype: Literal["bfloat16", "float16", "float32"] | None = Field(
        None, description="dtype of the merged weights; null = the bundle's compute dtype.")
    gguf: list[Literal["f32", "f16", "bf16", "q8_0"]] = Field(
        default_factory=list, description="GGUF types to write and evaluate through llama.cpp (needs "
        "llama-cpp-python: pip install -c constraints.txt -e '.[bench]'); [] = none.")
    gguf_pre_tokenizer: str = Field("default", description="llama.cpp's name for the tokenizer's pre-tokenization "
                                                           "(`tokenizer.ggml.pre`; SmolLM2: smollm).")
    rules: list[GateRule] = Field(default_factory=lambda: list(EXPORT_RULES),
                                  description="Gate rules an export must also pass, on its damage against the "
                                              "bundle (damage.*), beside gate.rules.")

    @field_validator("gguf")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"export.gguf lists a type twice: {v}")
        return v

    def requested(self) -> list[str]:
        """The configurations asked for, by name (merged, gguf_<type>)."""
        return (["merged"] if self.merged else []) + [f"gguf_{t}" for t in self.gguf]
