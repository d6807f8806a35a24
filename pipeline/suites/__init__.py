"""Eval suites: loading (spec.py), scaffolding one from a JSONL file (scaffold.py) and checking
one before a release depends on it (check.py). `python -m pipeline.suites --help`."""

from pipeline.suites.spec import (
    SUITE_FILE, EvalItem, GenerationSpec, Suite, SuiteError, SuiteSpec, load_all_suites, load_suite,
)

__all__ = ["SUITE_FILE", "EvalItem", "GenerationSpec", "Suite", "SuiteError", "SuiteSpec", "load_all_suites",
           "load_suite"]
from pipeline.suites.check import SuiteCheck, check_suite  # noqa: E402  (after spec: check imports it)
from pipeline.suites.scaffold import ScaffoldResult, scaffold_suite  # noqa: E402

__all__ += ["ScaffoldResult", "SuiteCheck", "check_suite", "scaffold_suite"]
