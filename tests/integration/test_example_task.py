"""The triage example (examples/triage/) end to end on the tiny random model, by params alone.

A second task with another output shape (a JSON object) goes through curate, train, bundle,
evaluate, gate, a signed release and a served request with nothing under pipeline/, stages/
or serving/ knowing it: its data, suite,
scorer and rules come from its folder and its params.yaml. The params are the example's own
with the tiny-model overrides tests/conftest.py `tiny_params` applies to the default ones, and
its gate rules keep their metric paths and bounds with thresholds a random model meets, so
every path the example names is proven to exist in a real report.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, build_tiny_model_dir

EXAMPLE = REPO / "examples/triage"
SLICES = {"common", "outage", "negation", "long"}
KEYS = ("queue", "priority", "product", "refund")


def _generator():
    spec = importlib.util.spec_from_file_location("triage_generate", EXAMPLE / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def relaxed(rule: dict) -> dict:
    """The rule with a threshold any model meets: floors 0.0; ceilings 1.0 on rates, none on
    NLL (nats, unbounded). Metric, bound and note are kept."""
    rule = dict(rule)
    if rule.get("min") is not None:
        rule["min"] = 0.0
    else:
        rule["max"] = 1e9 if "nll" in rule["metric"] else 1.0
    return rule


def example_params(tmp: Path) -> Path:
    """examples/triage/params.yaml with the tiny-model overrides (as conftest.tiny_params)."""
    params = yaml.safe_load((EXAMPLE / "params.yaml").read_text())
    params["base"] = {"source": "local_dir", "local_dir": str(tmp / "tiny_hf"), "dtype": "bfloat16"}
    # the tiny BPE (trained on discharge notes) spends about 3x SmolLM2's tokens on a ticket
    params["curate"]["max_seq_len_tokens"] = 4096
    params["train"].update(max_steps=4, batch_size=2, val_every_steps=2, warmup_steps=1, learning_rate=1e-3)
    params["evaluate"].update(limit=1, batch_size=4, max_new_tokens=8, bootstrap_samples=50)
    # The stages run from the repository root, where the example names its suite.
    params["evaluate"]["suite"] = str(REPO / params["evaluate"]["suite"])
    params["gate"]["rules"] = [relaxed(r) for r in params["gate"]["rules"]]
    params["gate"]["allow_limited_evaluation"] = True  # one item per slice, said so
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def test_committed_data_is_the_generators_output():
    assert _generator().main(["--check"]) == 0


@pytest.mark.slow
def test_triage_example_runs_the_whole_pipeline_by_params_alone(tmp_path):
    from pipeline.base import fetch_base
    from pipeline.bundle.build import build_bundle
    from pipeline.curate import curate
    from pipeline.evaluate import evaluate
    from pipeline.evaluate.report import write_reports
    from pipeline.gate import decide, expand
    from pipeline.params import load_section
    from pipeline.quantize import quantize_base
    from pipeline.suites import load_suite
    from pipeline.suites.check import check_suite
    from pipeline.train import train

    build_tiny_model_dir(tmp_path / "tiny_hf")
    params = example_params(tmp_path)
    base, base_q = tmp_path / "artifacts/base", tmp_path / "artifacts/base_q"
    data, adapter, bundle = tmp_path / "data/curated", tmp_path / "artifacts/adapter", tmp_path / "artifacts/bundle"
    fetch_base(load_section("base", params), base)
    quantize_base(load_section("quantize", params), base, base_q)

    # curate: the example's raw tickets, decontaminated against the example's suite
    curated = curate(load_section("curate", params), EXAMPLE / "data/raw", EXAMPLE, base, data)
    generated = _generator().TRAIN_PER_SLICE
    assert set(curated["slices"]) == SLICES
    for name, counts in curated["slices"].items():
        # the tickets are varied enough that no check strips a slice, the tails included
        assert counts["input"] == generated[name] and counts["kept"] == counts["input"] > 0, (name, counts)
        assert curated["splits"]["train"]["slices"][name] > 0
    assert curated["leaked_eval_items"] == {} and curated["slice_loss"]["flagged"] == []
    system = load_section("curate", params).system
    first = json.loads((data / "train.jsonl").open(encoding="utf-8").readline())
    assert first["messages"][0] == {"role": "system", "content": system}

    train(load_section("train", params), base_q, base, data, adapter)
    manifest = build_bundle(load_section("bundle", params), base, base_q, adapter, bundle)
    # the system prompt trained with is pinned, and it is the one the suite asks with
    suite = load_suite(EXAMPLE / "suite")
    assert manifest.tokenizer.system_prompt == system == suite.spec.system_prompt

    gate = load_section("gate", params)
    report, rows, golden = evaluate(load_section("evaluate", params), bundle, base, gate=gate,
                                    unscored_path=tmp_path / "reports/eval_samples.jsonl.unscored.jsonl")
    assert report["bundle_digest"] == manifest.bundle_digest
    assert report["suite"]["name"] == "triage" and report["suite"]["system_prompt"] == {"text": system,
                                                                                         "source": "suite"}
    assert report["headline_metric"] == "json_key_accuracy" and set(report["slices"]) == SLICES
    key_metrics = [f"key_{k}" for k in KEYS]
    per_item = ["json_valid", "json_schema_valid", "json_key_accuracy", "json_object_match", *key_metrics,
                "negated_queue_avoided", "empty_or_refusal"]
    for m in per_item:
        assert m in report["overall"] and all(m in s for s in report["slices"].values()), m
    # the suite's own scorer: recall on items that must be urgent (the outage slice's),
    # over-escalation on the rest
    assert set(report["slices"]["outage"]) >= {"urgent_recall"} and "false_urgent" not in report["slices"]["outage"]
    for name in SLICES - {"outage"}:
        assert "false_urgent" in report["slices"][name] and "urgent_recall" not in report["slices"][name]
    assert {"urgent_recall", "false_urgent"} <= set(report["overall"])
    assert report["worst_slice"]["slice"] in SLICES and "nll_per_token" in report
    correctness = {"json_valid", "json_schema_valid", "json_object_match", *key_metrics, "urgent_recall"}
    assert set(report["suite"]["correctness_metrics"]) == correctness
    damage = report["damage"]
    assert set(damage["correctness_metrics"]) == correctness and damage["flip_rate"] is not None
    assert set(damage["slices"]) == SLICES and "delta_nll_per_token" in damage
    assert len(rows) == len(SLICES) and golden["bundle_digest"] == manifest.bundle_digest
    # the stage's writers take a report whose metrics cover only some items (urgent_recall)
    out = tmp_path / "reports"
    write_reports(report, rows, golden, str(out / "eval.json"), str(out / "eval_samples.jsonl"),
                  str(out / "golden.json"), str(out / "plots"), str(out / "metrics/eval.json"))
    assert "urgent_recall" in (out / "eval.md").read_text()

    # gate: every rule of the example is evaluated on a metric the report has, and passes
    decision = decide(gate, report, manifest.bundle_digest,
                      chat_template_sha256=manifest.tokenizer.chat_template_sha256)
    names = {r["name"]: r for r in decision["rules"]}
    example_rules = load_section("gate", EXAMPLE / "params.yaml").rules
    assert len(example_rules) == len(gate.rules)
    for rule in example_rules:
        suffix = "" if rule.bound == "mean" else f" [{rule.bound}]"
        concrete = [path + suffix for path, _ in expand(report, rule.metric)]
        assert concrete and all(c in names for c in concrete), (rule.metric, concrete)
        for c in concrete:
            assert names[c]["value"] is not None and math.isfinite(names[c]["value"]), names[c]
    assert decision["passed"], decision["failed"]

    # and the suite, with the example's real (unrelaxed) rules, checks clean
    check = check_suite(suite, gate=load_section("gate", EXAMPLE / "params.yaml"))
    assert check.ok, check.problems
    assert check.slices == {name: 32 for name in sorted(SLICES)}

    # release: signed, pushed; then served from a fresh process, which applies the pinned
    # system prompt to a request that brings none
    _release_and_serve(tmp_path, params, bundle, out, decision, system)


def _release_and_serve(tmp: Path, params: Path, bundle: Path, reports: Path, decision: dict, system: str) -> None:
    import httpx

    from pipeline.params import load_section
    from pipeline.release.build import release
    from tests.serving.conftest import free_port, serving_process, wait_ready

    (reports / "gate.json").write_text(json.dumps(decision))
    rel = load_section("release", params).model_copy(update={"remote": str(tmp / "registry")})
    # the release-time replay under load has its own tests (tests/serving/test_release_serving.py);
    # this test serves the release itself below
    rel = rel.model_copy(update={"signing": rel.signing.model_copy(update={
        "private_key": str(tmp / "keys/release.key"), "public_key": str(tmp / "keys/release.pub")}),
        "replay": rel.replay.model_copy(update={"enabled": False})})
    record, _ = release(rel, bundle, reports / "eval.json", reports / "gate.json", reports / "golden.json",
                        tmp / "artifacts/release")
    args = ["--bundle", str(tmp / "artifacts/release"), "--public-key", str(tmp / "keys/release.pub"),
            "--require-signature"]
    with serving_process(args, free_port(), cwd=REPO) as (proc, url):
        assert wait_ready(proc, url, 180).json()["parity"]["status"] == "passed"
        [card] = httpx.get(f"{url}/v1/models").json()["data"]
        assert card["bundle_digest"] == record.bundle_digest and card["system_prompt"]["text"] == system
        ask = {"model": card["id"], "max_tokens": 4, "temperature": 0,
               "messages": [{"role": "user", "content": "My smoke detector is offline."}]}
        bare = httpx.post(f"{url}/v1/chat/completions", json=ask, timeout=60).json()
        pinned = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
            **ask, "messages": [{"role": "system", "content": system}, *ask["messages"]]}).json()
        assert bare["usage"] == pinned["usage"]  # the pinned prompt was applied: same prompt tokens
        assert bare["choices"][0]["message"]["content"] == pinned["choices"][0]["message"]["content"]
