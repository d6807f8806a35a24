"""evaluate stage: the exact bundle, through the shipped engine, scored per slice with tails.
See run.py for what it reads and writes."""

from pipeline.evaluate.run import ScoringError, evaluate, golden_outputs

__all__ = ["ScoringError", "evaluate", "golden_outputs"]
