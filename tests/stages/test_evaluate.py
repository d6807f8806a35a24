"""evaluate: lm-eval runs through the bundle's engine; the report is bound to the bundle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.bundle.verify import verify_bundle
from pipeline.params import load_section
from tests.conftest import REPO


@pytest.fixture(scope="module")
def evaluated(tiny_pipeline):
    from pipeline.evaluate import evaluate

    params = load_section("evaluate", tiny_pipeline["params"]).model_copy(
        update={"suite": str(REPO / "eval_suites/discharge")})
    return evaluate(params, tiny_pipeline["bundle"], tiny_pipeline["base"]), params


def test_report_is_bound_to_the_bundle_digest(tiny_pipeline, evaluated):
    (report, rows, golden), _ = evaluated
    digest = verify_bundle(tiny_pipeline["bundle"]).manifest.bundle_digest
    assert report["bundle_digest"] == digest == golden["bundle_digest"]
    assert report["engine"] == {"name": "hf", "exact": True, "batch_invariant": True,
                                "description": report["engine"]["description"]}


def test_per_slice_tails_and_golden(evaluated):
    (report, rows, golden), params = evaluated
    # evaluate.limit takes the first `limit` items of every slice
    assert len(rows) == params.limit * 4 == report["suite"]["items"]
    assert {r["slice"] for r in rows} == {"allergy", "common", "interaction", "long"}
    assert sum(s["n"] for s in report["slices"].values()) == len(rows)
    # ... and says so wherever a count appears: the suite's size, per slice too
    from pipeline.suites import load_suite

    full = load_suite(REPO / "eval_suites/discharge").items()
    assert report["suite"]["suite_items"] == len(full) > len(rows) and report["suite"]["limited"] is True
    assert report["suite"]["limit_per_slice"] == params.limit
    assert {k: s["suite_n"] for k, s in report["slices"].items()} == {
        k: sum(it.slice == k for it in full) for k in report["slices"]}
    # the interval each metric has: exact for the 0/1 ones, bootstrap for fractions
    for name, summary in report["overall"].items():
        values = [r[name] for r in rows if name in r]
        assert summary["interval"] == ("clopper-pearson" if set(values) <= {0.0, 1.0} else "bca-bootstrap"), name
    for s in report["slices"].values():
        lo, hi = s["field_accuracy"]["ci95"]
        assert 0.0 <= lo <= s["field_accuracy"]["mean"] <= hi <= 1.0
        assert s["too_small"]  # 4 items are far below min_slice_n and must be flagged
    q = report["nll_per_token"]
    assert 0 < q["p50"] <= q["p90"] <= q["p99"] <= q["max"]
    assert all(r["nll_per_token"] > 0 and r["reply_tokens"] > 0 for r in rows)
    # every evaluated item is golden, with the tokens its output was scored on, slices interleaved
    assert sorted(g["id"] for g in golden["prompts"]) == sorted(r["id"] for r in rows)
    assert len({g["slice"] for g in golden["prompts"][:4]}) == 4
    outputs = {r["id"]: r["output"] for r in rows}
    for g in golden["prompts"]:
        assert g["text"].startswith(outputs[g["id"]])  # the suite's stop strings may cut the output
    for g in golden["prompts"]:
        assert len(g["token_ids"]) == len(g["logprobs"]) and all(lp <= 0 for lp in g["logprobs"])


def test_golden_replays_exactly(tiny_pipeline, evaluated):
    """The parity probe's premise: the same engine replays golden prompts token for token, one
    at a time or all in one batch (the evaluation generated them in batches)."""
    from pipeline.engines.base import GenerationRequest, SamplingParams
    from pipeline.engines.hf import HFEngine

    (_report, _rows, golden), _ = evaluated
    engine = HFEngine.from_bundle(verify_bundle(tiny_pipeline["bundle"]))
    reqs = [GenerationRequest(g["prompt_ids"], SamplingParams(max_new_tokens=g["max_new_tokens"]))
            for g in golden["prompts"]]
    for g, req in zip(golden["prompts"], reqs):
        c = engine.generate([req])[0]
        assert c.token_ids == g["token_ids"] and c.logprobs == g["logprobs"]
    for g, c in zip(golden["prompts"], engine.generate(reqs)):
        assert c.token_ids == g["token_ids"] and c.logprobs == g["logprobs"]


def test_stage_writes_reports(tiny_pipeline, tmp_path):
    from stages.evaluate import main

    params = tmp_path / "params.yaml"
    text = tiny_pipeline["params"].read_text().replace("suite: eval_suites/discharge",
                                                       f"suite: {REPO / 'eval_suites/discharge'}")
    params.write_text(text)
    rc = main(["--params", str(params), "--bundle", str(tiny_pipeline["bundle"]), "--report", str(tmp_path / "eval.json"),
               "--samples", str(tmp_path / "s.jsonl"), "--golden", str(tmp_path / "g.json"), "--plots", str(tmp_path / "plots"),
               "--metrics", str(tmp_path / "metrics.json"),
               "--reference-base", str(tiny_pipeline["base"])])
    assert rc == 0
    assert json.loads((tmp_path / "eval.json").read_text())["suite"]["name"] == "discharge"
    md = (tmp_path / "eval.md").read_text()
    assert md.startswith("# Evaluation") and "4 of the suite's 160 items (**limited**" in md
    assert "95% CIs:" in md
    assert (tmp_path / "plots/eval_slices.csv").read_text().startswith("slice,")
    for png in ("eval_slices.png", "nll_cdf.png", "length_buckets.png"):
        assert (tmp_path / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"](plots/{png})" in (tmp_path / "eval.md").read_text()
    quantiles = (tmp_path / "plots/nll_quantiles.csv").read_text().splitlines()
    assert quantiles[0] == "percentile,shipped,reference" and len(quantiles) == 102
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["slices"]) == set(json.loads((tmp_path / "eval.json").read_text())["slices"])


def test_stage_refuses_a_tampered_bundle_with_exit_1(bundle_copy, tmp_path, caplog):
    from stages.evaluate import main

    (bundle_copy / "adapter/adapter_config.json").write_text("{}")
    rc = main(["--params", str(REPO / "params.yaml"), "--bundle", str(bundle_copy),
               "--report", str(tmp_path / "eval.json"), "--samples", str(tmp_path / "s.jsonl"),
               "--golden", str(tmp_path / "g.json"), "--plots", str(tmp_path / "plots"),
               "--metrics", str(tmp_path / "m.json")])
    assert rc == 1 and "adapter/adapter_config.json" in caplog.text
    assert not (tmp_path / "eval.json").exists()


def test_quantization_damage_is_measured_against_the_16bit_base(evaluated):
    """The reference pass really ran on other weights: per-item NLLs differ, and the damage
    statistics are consistent with the rows they summarise."""
    (report, rows, _golden), _ = evaluated
    d = report["damage"]
    assert d["items"] == len(rows) and "bfloat16 base" in d["reference"]
    deltas = sorted(r["nll_per_token"] - r["reference_precision_nll_per_token"] for r in rows)
    assert any(abs(x) > 1e-6 for x in deltas)  # NF4 weights are not the bf16 weights
    assert d["delta_nll_per_token"]["max"] == pytest.approx(deltas[-1])
    assert d["delta_nll_per_token"]["p50"] <= d["delta_nll_per_token"]["p99"] <= d["delta_nll_per_token"]["max"]
    assert 0.0 <= d["flip_rate"] <= 1.0 and d["correctness_pairs"] == 5 * len(rows)  # the five field_* values
    for name, s in d["slices"].items():
        shipped = [r["field_accuracy"] for r in rows if r["slice"] == name]
        ref = [r["reference_precision_field_accuracy"] for r in rows if r["slice"] == name]
        assert s["field_accuracy_drop"] == pytest.approx(sum(ref) / len(ref) - sum(shipped) / len(shipped))
    assert set(report["reference"]["slices"]) == set(report["slices"])


def test_reference_base_must_be_the_pinned_one(tiny_pipeline, tmp_path):
    """Another 16-bit model cannot stand in as the reference: the lock hash is pinned."""
    import shutil

    from pipeline.evaluate import evaluate

    other = tmp_path / "base"
    shutil.copytree(tiny_pipeline["base"], other)
    lock = json.loads((other / "base.lock.json").read_text())
    lock["source"] = {"kind": "local_dir", "path": "/elsewhere"}
    (other / "base.lock.json").write_text(json.dumps(lock))
    params = load_section("evaluate", tiny_pipeline["params"]).model_copy(
        update={"suite": str(REPO / "eval_suites/discharge")})
    with pytest.raises(ValueError, match="pinned base"):
        evaluate(params, tiny_pipeline["bundle"], other)
    with pytest.raises(ValueError, match="--reference-base"):
        evaluate(params, tiny_pipeline["bundle"], None)


def _suite_variant(tmp_path, **changes) -> Path:
    """A copy of the default suite with suite.yaml keys changed (None deletes a key)."""
    import shutil

    import yaml

    dst = tmp_path / "suite"
    shutil.copytree(REPO / "eval_suites/discharge", dst)
    spec = yaml.safe_load((dst / "suite.yaml").read_text())
    for k, v in changes.items():
        spec.pop(k, None) if v is None else spec.__setitem__(k, v)
    (dst / "suite.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return dst


def _no_engine(monkeypatch):
    from pipeline.engines.hf import HFEngine

    def refuse(*a, **kw):
        raise AssertionError("the model was loaded before the suite was checked")
    monkeypatch.setattr(HFEngine, "from_bundle", refuse)


def test_a_broken_suite_fails_before_the_model_loads(tiny_pipeline, tmp_path, monkeypatch):
    from pipeline.evaluate import evaluate
    from pipeline.params import GateParams
    from pipeline.suites import SuiteError

    suite = _suite_variant(tmp_path, scorers=["scorers:field_exact_match", "scorers:too_strict"])
    (suite / "scorers.py").write_text((suite / "scorers.py").read_text() + """

@scorer(correctness=["strict"], metrics=["strict"])
def too_strict(text, item):
    return {"strict": float(text.startswith("Summary:"))}  # the references never do
""")
    _no_engine(monkeypatch)
    params = load_section("evaluate", tiny_pipeline["params"]).model_copy(update={"suite": str(suite)})
    with pytest.raises(SuiteError, match="strict") as err:
        evaluate(params, tiny_pipeline["bundle"], tiny_pipeline["base"])
    assert "ev-0001" in str(err.value)  # names items whose reference it marks wrong
    params = params.model_copy(update={"suite": str(REPO / "eval_suites/discharge")})
    gate = GateParams(rules=[{"metric": "slices.negation.field_accuracy", "min": 0.5}])
    with pytest.raises(SuiteError, match="negation"):
        evaluate(params, tiny_pipeline["bundle"], tiny_pipeline["base"], gate=gate)


def test_outputs_survive_a_scorer_that_fails_on_them(tiny_pipeline, tmp_path):
    from pipeline.evaluate import evaluate
    from pipeline.evaluate.run import ScoringError

    suite = _suite_variant(tmp_path, scorers=["scorers:field_exact_match", "scorers:picky"])
    (suite / "scorers.py").write_text((suite / "scorers.py").read_text() + """

@scorer(metrics=["picky"])
def picky(text, item):
    if text != item.reference:
        raise KeyError("a bug that only model outputs reach")
    return {"picky": 1.0}
""")
    params = load_section("evaluate", tiny_pipeline["params"]).model_copy(update={"suite": str(suite), "damage": False})
    unscored = tmp_path / "out/samples.jsonl.unscored.jsonl"
    with pytest.raises(ScoringError, match=str(unscored)):
        evaluate(params, tiny_pipeline["bundle"], tiny_pipeline["base"], unscored_path=unscored)
    saved = [json.loads(line) for line in unscored.read_text().splitlines()]
    assert len(saved) == 4 and all("output" in r and "nll_per_token" in r for r in saved)
