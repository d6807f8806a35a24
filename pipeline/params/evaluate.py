"""The `evaluate` section: evaluating the exact bundle on the tail-focused suite."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.params.common import _Strict


class EvaluateParams(_Strict):
    """Evaluating the exact bundle on the tail-focused suite."""

    suite: str = Field("eval_suites/discharge", description="Suite directory (holds suite.yaml).")
    batch_size: int = Field(32, gt=0, description=(
        "Prompts decoding at a time (the next admitted as one finishes). The hf engine runs every "
        "matmul on blocks of 8 rows, so this changes no output; more rows share each pass's weight reads."))
    max_new_tokens: int | None = Field(
        None, gt=0, description="Generation budget per item; null = the suite's `generation.max_new_tokens`.")
    limit: int | None = Field(
        None, gt=0, description="Evaluate only the first N items of every slice (smoke runs); null = all items.")
    bootstrap_samples: int = Field(1000, gt=0, description="Bootstrap resamples for the per-slice 95% CI.")
    seed: int = Field(0, description="Seed of the bootstrap.")
    damage: bool = Field(
        True, description="Run the suite again on the 16-bit base with the same adapter and report quantization "
        "damage (delta NLL, flips, per-slice deltas). Doubles evaluation time; a 16-bit bundle is its own reference.")
