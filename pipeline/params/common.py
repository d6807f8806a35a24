"""The base of every params model: frozen, and unknown keys are errors everywhere (a typo in
params.yaml must fail loudly, not be ignored)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
