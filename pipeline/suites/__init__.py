"""Eval suites: loading (spec.py), scaffolding one from a JSONL file (scaffold.py) and checking
one before a release depends on it (check.py). `python -m pipeline.suites --help`.

Only the loader is re-exported here: curation reads suites through it, and DVC declares just
spec.py and this file for the curate stage, so editing the check or the scaffold does not
re-curate the data. Import `pipeline.suites.check` / `pipeline.suites.scaffold` directly."""

from pipeline.suites.spec import (
    SUITE_FILE, EvalItem, GenerationSpec, Suite, SuiteError, SuiteSpec, load_all_suites, load_suite,
)

__all__ = ["SUITE_FILE", "EvalItem", "GenerationSpec", "Suite", "SuiteError", "SuiteSpec", "load_all_suites",
           "load_suite"]
