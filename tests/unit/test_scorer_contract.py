"""One scorer contract: a suite's own scorer is called with the same arguments as a library one
(the answer as an Output, a str carrying option_logprobs, and the item), declares each output's
meaning once (Metric), and may return bools and numpy scalars."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluate.scoring import Metric, Output, build_scorer, scorer
from pipeline.suites.spec import SuiteError
from tests.unit.test_scorer_library import make_suite

SCORERS = '''
import numpy as np
from pipeline.evaluate.scoring import Metric, scorer

@scorer(Metric("picked_first", correctness=True), Metric("long_answer", lower_is_better=True),
        Metric("mentions", partial=True), needs_choices=True)
def contract(output, item):
    lps = output.option_logprobs
    out = {"picked_first": bool(np.argmax(lps) == 0),             # a Python bool
           "long_answer": np.float32(len(output.text) > 20)}      # a numpy scalar
    if item.record.get("word") is not None:
        out["mentions"] = np.bool_(item.record["word"] in output)  # the output is the answer string
    return out

@scorer(Metric("x"))
def undeclared(output, item):
    return {"x": 1, "y": 0}
'''


@pytest.fixture
def suite(tmp_path):
    (tmp_path / "scorers.py").write_text(SCORERS)
    return make_suite(tmp_path, [{"completion": "a", "options": ["a", "b"], "word": "a"},
                                 {"completion": "a", "options": ["a", "b"], "word": None}],
                      scorers=["scorers:contract"], headline_metric="picked_first", choice_task="t_choice")


def test_a_suite_scorer_takes_what_a_library_scorer_takes_and_may_return_numpy_and_bools(suite):
    s = build_scorer(suite, "scorers:contract")
    assert s.needs_choices and s.correctness == ("picked_first",) and s.lower_is_better == ("long_answer",)
    assert s.partial == ("mentions",)
    first, second = suite.items()
    values = s(Output("a", (-0.1, -3.0)), first)
    assert values == {"picked_first": 1.0, "long_answer": 0.0, "mentions": 1.0}
    assert all(type(v) is float for v in values.values())
    assert s(Output("b" * 30, (-5.0, -1.0)), second) == {"picked_first": 0.0, "long_answer": 1.0}  # n/a: no word
    # the library's choice scorer reads the very same Output
    choice = build_scorer(suite, "choice")
    assert choice(Output("b" * 30, (-5.0, -1.0)), second)["choice_accuracy"] == 0.0


def test_an_output_a_scorer_does_not_declare_is_refused(suite):
    with pytest.raises(SuiteError, match="wrote \\['x', 'y'\\].*declares \\['x'\\]"):
        build_scorer(suite, "scorers:undeclared")(Output("a"), suite.items()[0])


def test_a_metric_cannot_be_correctness_and_lower_is_better():
    with pytest.raises(SuiteError, match="cannot be lower-is-better"):
        Metric("x", correctness=True, lower_is_better=True)
    with pytest.raises(SuiteError, match="twice"):
        scorer(Metric("x"), correctness=["x"])


def test_the_name_list_spelling_declares_the_same_metrics(suite):
    @scorer(correctness=["ok"], lower_is_better=["bad"], metrics=["ok", "bad", "score"])
    def old_style(output, item):
        return {"ok": True, "bad": np.int64(0), "score": np.float64(0.5)}

    assert old_style.declares == (Metric("ok", correctness=True), Metric("bad", lower_is_better=True), Metric("score"))
    assert old_style.declares_all


def test_a_suite_yaml_override_replaces_the_declared_meaning(suite):
    s = build_scorer(suite, {"scorer": "scorers:contract", "correctness": ["picked_first", "long_answer"],
                             "lower_is_better": []})
    assert s.correctness == ("picked_first", "long_answer") and s.lower_is_better == ()
    with pytest.raises(SuiteError, match="writes only"):
        build_scorer(suite, {"scorer": "exact_match", "correctness": ["nope"]})
