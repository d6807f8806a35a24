"""Every shipped eval suite loads, its items are well formed and its lm-eval tasks match."""

from __future__ import annotations

from collections import Counter

import pytest
import yaml

from pipeline.evaluate.scorers import SCORERS
from pipeline.suites import load_all_suites, load_suite
from tests.conftest import REPO

SUITES = load_all_suites(REPO / "eval_suites")


def test_there_is_a_default_suite():
    assert "discharge" in {s.name for s in SUITES}


@pytest.mark.parametrize("suite", SUITES, ids=lambda s: s.name)
def test_suite_is_well_formed(suite):
    items = suite.items()
    assert items
    slices = Counter(suite.slice_of(i) for i in items)
    assert all(n >= suite.spec.min_slice_n for n in slices.values()), slices
    assert set(suite.spec.scorers) <= set(SCORERS)
    for name, kind in ((suite.spec.generate_task, "generate_until"), (suite.spec.loglikelihood_task, "loglikelihood")):
        task = yaml.safe_load((suite.task_dir / f"{name}.yaml").read_text())
        assert task["task"] == name and task["output_type"] == kind and task["dataset_path"] == "json"


def test_include_overrides_keys(tmp_path):
    variant = tmp_path / "variant"
    variant.mkdir()
    (variant / "suite.yaml").write_text(
        f"include: {REPO / 'eval_suites/discharge/suite.yaml'}\nname: variant\nmin_slice_n: 5\n")
    suite = load_suite(variant)
    assert suite.name == "variant" and suite.spec.min_slice_n == 5
    assert suite.spec.generate_task == "discharge_summary"


def test_unknown_keys_are_errors(tmp_path):
    (tmp_path / "suite.yaml").write_text((REPO / "eval_suites/discharge/suite.yaml").read_text() + "scorer: typo\n")
    with pytest.raises(ValueError):
        load_suite(tmp_path)
