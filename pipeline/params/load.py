"""Loading one section of params.yaml, validated by the model of the same name."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.params.base import BaseParams, QuantizeParams
from pipeline.params.common import _Strict
from pipeline.params.curate import CurateParams
from pipeline.params.evaluate import EvaluateParams
from pipeline.params.export import ExportParams
from pipeline.params.gate import GateParams
from pipeline.params.release import ReleaseParams
from pipeline.params.train import BundleParams, TrainParams


SECTIONS: dict[str, type[_Strict]] = {
    "base": BaseParams,
    "quantize": QuantizeParams,
    "curate": CurateParams,
    "train": TrainParams,
    "bundle": BundleParams,
    "evaluate": EvaluateParams,
    "gate": GateParams,
    "export": ExportParams,
    "release": ReleaseParams,
}


def load_section(name: str, path: str | Path = "params.yaml"):
    """Load and validate one section of params.yaml (missing section = all defaults)."""
    if name not in SECTIONS:
        raise KeyError(f"unknown params section {name!r}; known: {sorted(SECTIONS)}")
    data = yaml.safe_load(Path(path).read_text()) or {}
    unknown = set(data) - set(SECTIONS)
    if unknown:
        raise ValueError(f"{path}: unknown sections {sorted(unknown)}; known: {sorted(SECTIONS)}")
    return SECTIONS[name].model_validate(data.get(name) or {})
