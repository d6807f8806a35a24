"""Typed parameters: one pydantic model per `params.yaml` section, one module per stage group.

Every stage loads only its own section through `load_section`, and `dvc.yaml` declares
exactly that section for the stage (checked by tests/unit/test_params.py),
so DVC's idea of what a stage depends on matches what the code reads. Every stage depends on
this whole package (its loader knows every section).
"""

from pipeline.params.base import DEFAULT_GGUF_SHA256, BaseParams, QuantizeParams
from pipeline.params.curate import (CurateDecontamParams, CurateNearDupParams, CurateParams, CuratePiiParams,
                                    CurateQualityParams)
from pipeline.params.evaluate import EvaluateParams
from pipeline.params.export import EXPORT_RULES, ExportParams
from pipeline.params.gate import GateParams, GateRegressionRule, GateRule
from pipeline.params.load import SECTIONS, load_section
from pipeline.params.release import ReleaseCardParams, ReleaseParams, ReleaseReplayParams, ReleaseSigningParams
from pipeline.params.train import BundleParams, TrainParams

__all__ = [
    "DEFAULT_GGUF_SHA256", "EXPORT_RULES", "ExportParams", "SECTIONS", "BaseParams", "BundleParams", "CurateDecontamParams", "CurateNearDupParams",
    "CurateParams", "CuratePiiParams", "CurateQualityParams", "EvaluateParams", "GateParams", "GateRegressionRule",
    "GateRule", "QuantizeParams", "ReleaseCardParams", "ReleaseParams", "ReleaseReplayParams", "ReleaseSigningParams",
    "TrainParams", "load_section",
]
