"""evaluate on a task of another shape, by configuration alone: prompt/completion items with a
label answer and no per-item options (the labels are the options), library scorers only, a
multiple-choice task scored by log-likelihood through lm-eval, every task built from suite.yaml
(the folder has no task YAML), no suite system prompt (the bundle's pinned one applies)."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from pipeline.params import load_section

LABELS = ["approve", "refer", "decline"]


def _suite(root):
    root.mkdir()
    items = []
    for i in range(6):
        answer = LABELS[i % 3]
        # no per-item options: the suite's labels are the choice task's options
        items.append({"id": f"c-{i}", "slice": "easy" if i < 3 else "hard",
                      "prompt": f"Claim {i}: amount {100 * (i + 1)} for treatment {i}. Decide: approve, refer or decline.",
                      "completion": answer})
    (root / "data").mkdir()
    (root / "data/test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    (root / "suite.yaml").write_text(yaml.safe_dump({
        "name": "claims", "version": 1, "data": "data/test.jsonl", "format": "prompt_completion",
        "headline_metric": "choice_accuracy", "labels": LABELS, "min_slice_n": 3,
        "scorers": ["label", "choice", {"scorer": "exact_match", "normalize": ["case", "whitespace"]},
                    {"scorer": "contains", "must_not": ["I cannot"], "name": "no_refusal"}, "refusal"],
        "generation": {"max_new_tokens": 4, "stop": ["\n"]},
        "generate_task": "claims", "loglikelihood_task": "claims_nll", "choice_task": "claims_choice",
        "length_buckets_tokens": [64, 128]}))
    return root


@pytest.fixture(scope="module")
def evaluated(tiny_pipeline, tmp_path_factory):
    from pipeline.evaluate import evaluate
    from pipeline.params import GateParams

    suite = _suite(tmp_path_factory.mktemp("shapes") / "claims")
    params = load_section("evaluate", tiny_pipeline["params"]).model_copy(
        update={"suite": str(suite), "limit": None, "damage": True, "max_new_tokens": None})
    gate = GateParams(rules=[{"metric": "slices.*.choice_accuracy", "min": 0.0, "bound": "ci_low"},
                             {"metric": "overall.label_valid", "min": 0.0}])
    return evaluate(params, tiny_pipeline["bundle"], tiny_pipeline["base"], gate=gate)


def test_choice_is_scored_from_the_option_loglikelihoods(evaluated):
    report, rows, _golden = evaluated
    assert len(rows) == 6 and report["headline_metric"] == "choice_accuracy"
    for r in rows:
        lp = r["option_logprobs"]
        assert len(lp) == 3 and all(math.isfinite(x) and x < 0 for x in lp)
        best = max(range(3), key=lambda k: lp[k])
        assert r["choice_accuracy"] == float(LABELS[best] == LABELS[int(r["id"].split("-")[1]) % 3])
    assert set(report["slices"]) == {"easy", "hard"}
    for m in ("label_accuracy", "label_valid", "exact_match", "no_refusal", "empty_or_refusal", "choice_accuracy"):
        assert m in report["overall"], m


def test_stop_strings_budget_and_system_prompt_come_from_the_suite_and_bundle(evaluated, tiny_pipeline):
    from pipeline.bundle.verify import verify_bundle

    report, rows, golden = evaluated
    assert report["suite"]["max_new_tokens"] == 4 and report["suite"]["stop"] == ["\n"]
    assert all("\n" not in r["output"] for r in rows)
    pinned = verify_bundle(tiny_pipeline["bundle"]).manifest.tokenizer.system_prompt
    assert report["suite"]["system_prompt"] == {"text": pinned, "source": "bundle" if pinned else "none"}
    if pinned:  # what serving sends for a request without a system turn
        assert all(g["messages"][0] == {"role": "system", "content": pinned} for g in golden["prompts"])


def test_damage_counts_flips_on_the_declared_correctness_metrics(evaluated):
    report, rows, _ = evaluated
    d = report["damage"]
    assert d["correctness_metrics"] == sorted(["label_accuracy", "choice_accuracy", "exact_match"])
    assert d["correctness_pairs"] == 3 * len(rows)
    assert set(d["slices"]["easy"]) >= {"choice_accuracy_shipped", "choice_accuracy_reference", "choice_accuracy_drop"}
