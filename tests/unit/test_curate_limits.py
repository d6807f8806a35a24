"""curate.max_slice_loss_fraction: one number for every slice (as before) or one per slice."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from pipeline.params import CurateParams
from pipeline.params.curate import DEFAULT_SLICE_LOSS_FRACTION


def test_a_single_number_still_applies_to_every_slice():
    p = CurateParams(max_slice_loss_fraction=0.3)
    assert p.max_slice_loss_fraction == 0.3 and p.slice_loss_limit("anything") == 0.3
    assert CurateParams().slice_loss_limit("x") == DEFAULT_SLICE_LOSS_FRACTION == 0.5
    assert CurateParams(max_slice_loss_fraction=0).slice_loss_limit("x") == 0.0  # no loss at all is a limit too


def test_a_mapping_names_slices_and_star_covers_the_rest():
    p = CurateParams.model_validate(yaml.safe_load("max_slice_loss_fraction: {outage: 0, common: 0.8, '*': 0.4}"))
    assert p.slice_loss_limit("outage") == 0.0 and p.slice_loss_limit("common") == 0.8
    assert p.slice_loss_limit("negation") == 0.4
    assert list(p.max_slice_loss_fraction) == ["*", "common", "outage"]  # sorted: one params digest per meaning
    assert CurateParams(max_slice_loss_fraction={"outage": 0.0}).slice_loss_limit("common") == 0.5


@pytest.mark.parametrize("value, words", [
    (1.5, "not a share between 0 and 1"),
    (-0.1, "not a share between 0 and 1"),
    ({"outage": 1.2}, "less than or equal to 1"),
    ({"outage": -1}, "greater than or equal to 0"),
    ({"(none)": 0.1}, "not a slice"),
    ({" ": 0.1}, "slice name is empty"),
    ({"outage": "none"}, "valid number"),
])
def test_bad_limits_are_refused_naming_the_field(value, words):
    with pytest.raises(ValidationError) as err:
        CurateParams(max_slice_loss_fraction=value)
    assert "max_slice_loss_fraction" in str(err.value) and words in str(err.value)


def test_min_val_records_per_slice_is_a_count():
    assert CurateParams().min_val_records_per_slice == 1
    with pytest.raises(ValidationError, match="min_val_records_per_slice"):
        CurateParams(min_val_records_per_slice=-1)
