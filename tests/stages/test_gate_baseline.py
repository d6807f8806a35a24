"""The gate finds its own baseline: the latest release of the suite, compared item by item.

The tiny model is trained twice on a task it can learn (tests/data/gate_echo: reply with the
direction a note names): well, and with far fewer steps. The good bundle is evaluated, gated
and released into a real registry; then each candidate goes through the real gate stage with
no baseline configured, and the gate looks the release up itself.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.files import sha256_file
from tests.conftest import REPO, build_tiny_model_dir, tiny_params
from tests.releases import release_params

pytestmark = pytest.mark.slow

SUITE, SUITE_V2 = REPO / "tests/data/gate_echo", REPO / "tests/data/gate_echo_v2"
SYSTEM = "Reply with the direction only."
NOUNS = ["cart", "well", "barn", "mill", "shed", "pier", "gate", "camp", "fort", "dock", "farm", "hall", "yard",
         "lake", "hill", "cave", "reef", "dune", "moor", "glen"]
RULES = [{"metric": "overall.exact_match", "min": 0.0}]
BUDGETS = [{"metric": "overall.exact_match", "max_drop": 0.05}, {"metric": "slices.*.exact_match", "max_drop": 0.05}]


def _curated(out: Path, tokenizer_dir: Path) -> Path:
    """Training records of the same task (other nouns and note numbers than the suite's)."""
    out.mkdir(parents=True)
    rows = [{"id": f"t-{d}-{i}", "messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"Note {100 + i}: the {NOUNS[i % len(NOUNS)]} is to the {d}. Direction:"},
        {"role": "assistant", "content": d}]} for i in range(48) for d in ("north", "south")]
    (out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:88]))
    (out / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[88:]))
    files = {k: sha256_file(out / f"{k}.jsonl") for k in ("train", "val")}
    from transformers import AutoTokenizer

    from pipeline.files import sha256_bytes

    template = AutoTokenizer.from_pretrained(tokenizer_dir).chat_template
    (out / "meta.json").write_text(json.dumps({
        "digest": sha256_bytes(json.dumps(files, sort_keys=True).encode()), "files": files,
        "max_seq_len_tokens": 256, "tokenizer_chat_template_sha256": sha256_bytes(template.encode())}))
    return out


def _evaluate(params_path: Path, bundle: Path, base: Path, suite: Path, out: Path) -> Path:
    from pipeline.evaluate import evaluate
    from pipeline.evaluate.report import write_reports
    from pipeline.params import load_section

    params = load_section("evaluate", params_path).model_copy(update={"suite": str(suite), "limit": None})
    report, rows, golden = evaluate(params, bundle, base)
    out.mkdir(parents=True)
    write_reports(report, rows, golden, str(out / "eval.json"), str(out / "eval_samples.jsonl"),
                  str(out / "golden.json"), str(out / "plots"), str(out / "metrics.json"))
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two trained adapters (good, undertrained), three bundles (good, bad, and the good adapter
    again with another default top_p: another digest, the same greedy answers), each evaluated."""
    from pipeline.base import fetch_base
    from pipeline.bundle.build import build_bundle
    from pipeline.params import load_section
    from pipeline.quantize import quantize_base
    from pipeline.train import train

    tmp = tmp_path_factory.mktemp("gate_baseline")
    build_tiny_model_dir(tmp / "tiny_hf")
    params = tiny_params(tmp, evaluate={"max_new_tokens": 4, "bootstrap_samples": 50, "damage": False},
                         gate={"rules": RULES, "regression": BUDGETS, "registry": str(tmp / "registry"),
                               "registry_public_key": str(tmp / "keys/release.pub"),
                               "allow_limited_evaluation": False})
    base, base_q = tmp / "base", tmp / "base_q"
    fetch_base(load_section("base", params), base)
    quantize_base(load_section("quantize", params), base, base_q)
    data = _curated(tmp / "curated", base)
    trained = load_section("train", params).model_copy(
        update={"max_steps": 60, "learning_rate": 1e-2, "batch_size": 8, "warmup_steps": 2, "val_every_steps": 60})
    train(trained, base_q, base, data, tmp / "adapter_good")
    train(trained.model_copy(update={"max_steps": 1, "learning_rate": 1e-4}), base_q, base, data, tmp / "adapter_bad")
    bundle_params = load_section("bundle", params)
    w = {"tmp": tmp, "params": params, "base": base}
    for name, adapter, bp in (("good", "adapter_good", bundle_params), ("bad", "adapter_bad", bundle_params),
                              ("again", "adapter_good", bundle_params.model_copy(update={"top_p": 0.9}))):
        build_bundle(bp, base, base_q, tmp / adapter, tmp / f"bundle_{name}")
        w[name] = _evaluate(params, tmp / f"bundle_{name}", base, SUITE, tmp / f"eval_{name}")
    w["again_v2"] = _evaluate(params, tmp / "bundle_again", base, SUITE_V2, tmp / "eval_again_v2")
    return w


def _gate(w: dict, name: str, out: Path, evaluated: str | None = None, **gate) -> tuple[int, dict, str]:
    from stages.gate import main

    params = w["params"]
    out.mkdir(parents=True, exist_ok=True)
    if gate:
        data = yaml.safe_load(params.read_text())
        data["gate"].update(gate)
        params = out / "params.yaml"
        params.write_text(yaml.safe_dump(data, sort_keys=False))
    ev = w[evaluated or name]
    code = main(["--params", str(params), "--report", str(ev / "eval.json"),
                 "--bundle", str(w["tmp"] / f"bundle_{name}"), "--out", str(out / "gate.json"), "--summary", str(out / "gate.md"), "--metrics", str(out / "m.json"),
                 "--baseline-cache", str(w["tmp"] / "cache")])
    return code, json.loads((out / "gate.json").read_text()), (out / "gate.md").read_text()


@pytest.fixture(scope="module")
def released(world):
    """The good bundle, gated with no previous release, released into the registry."""
    from pipeline.params import ReleaseParams
    from pipeline.release.build import release

    tmp = world["tmp"]
    code, decision, summary = _gate(world, "good", tmp / "gate_good")
    assert code == 0, decision["failed"]
    params = ReleaseParams.model_validate({**release_params(tmp).model_dump(), "replay": {"enabled": False}})
    ev = world["good"]
    record, _ = release(params, tmp / "bundle_good", ev / "eval.json", tmp / "gate_good/gate.json",
                        ev / "golden.json", tmp / "release_good", repo_root=tmp)
    return {"decision": decision, "summary": summary, "record": record}


def test_the_trained_model_learned_the_task_and_the_undertrained_one_did_not(world):
    good = json.loads((world["good"] / "eval.json").read_text())
    bad = json.loads((world["bad"] / "eval.json").read_text())
    assert good["overall"]["exact_match"]["mean"] >= 0.5  # otherwise nothing could regress
    assert bad["overall"]["exact_match"]["mean"] < good["overall"]["exact_match"]["mean"]


def test_the_first_release_has_no_baseline_and_says_so(released):
    d, summary = released["decision"], released["summary"]
    assert d["passed"] and d["baseline"]["source"] == "none" and d["baseline"]["bundle_digest"] is None
    assert d["baseline"]["note"].startswith("no previous release: no regression check")
    assert "no previous release: no regression check" in summary.lower()
    # its per-item scores travel with the release, for the next gate
    assert len(d["items"]["ids"]) == 32 and set(d["items"]["metrics"]) >= {"exact_match"}


def test_a_worse_model_is_refused_per_slice_with_no_baseline_configured(world, released, tmp_path):
    code, d, summary = _gate(world, "bad", tmp_path)
    assert code == 1 and not d["passed"]
    good_digest = released["record"].bundle_digest
    assert d["baseline"]["source"] == "registry" and d["baseline"]["bundle_digest"] == good_digest
    assert d["baseline"]["sha256"]["eval.json"] == sha256_file(world["tmp"] / "release_good/eval.json")
    assert d["comparison"]["paired"] and d["comparison"]["common_items"] == 32
    rows = {r["metric"]: r for r in d["comparison"]["rows"]}
    # named per slice: every slice lost far more than its budget, on items that flipped
    assert {"regression.slices.north.exact_match", "regression.slices.south.exact_match"} <= set(d["failed"])
    for s in ("north", "south"):
        row = rows[f"slices.{s}.exact_match"]
        assert row["n"] == 16 and row["worse"] > row["better"] and row["baseline"] - row["now"] > 0.05
    overall = rows["overall.exact_match"]
    assert overall["test"] == "mcnemar-exact" and overall["worse"] > overall["better"]
    assert overall["p_value"] < 0.05 and not overall["passed"]
    assert "## Against the baseline" in summary and good_digest in summary and "**FAIL**" in summary


def test_an_equal_model_passes_against_the_release(world, released, tmp_path):
    code, d, summary = _gate(world, "again", tmp_path)
    assert code == 0, d["failed"]
    assert d["baseline"]["bundle_digest"] == released["record"].bundle_digest != d["bundle_digest"]
    for r in d["comparison"]["rows"]:
        assert (r["worse"], r["better"], r["p_value"], r["passed"]) == (0, 0, 1.0, True), r
    # the card of a release gated this way shows the comparison
    from pipeline.bundle.verify import verify_bundle
    from pipeline.release.card import render_card

    card = render_card(verify_bundle(world["tmp"] / "bundle_again").manifest,
                       json.loads((world["again"] / "eval.json").read_text()), d, base_model=None,
                       license="apache-2.0")
    assert "## Against the previous release" in card and released["record"].bundle_digest in card
    assert "| slices.north.exact_match | 16 |" in card and "baseline_digest" in card


def test_a_new_suite_version_is_compared_on_the_common_items_only(world, released, tmp_path):
    code, d, summary = _gate(world, "again", tmp_path, evaluated="again_v2")
    assert code == 0, d["failed"]
    c = d["comparison"]
    assert (c["common_items"], c["only_baseline"], c["only_now"], c["rewritten"]) == (23, 8, 8, 1)
    assert {r["metric"]: r["n"] for r in c["rows"]} == {"overall.exact_match": 23, "slices.north.exact_match": 11,
                                                         "slices.south.exact_match": 12}
    assert "another version" in d["baseline"]["note"] and "23 items both runs scored" in summary
    assert "1 rewritten under the same id" in summary


def test_the_released_bundle_is_never_its_own_baseline(world, released, tmp_path):
    """After its release, the same bundle's gate reads the registry again and decides the same
    bytes: DVC sees gate.json unchanged and does not release again."""
    code, d, _ = _gate(world, "good", tmp_path)
    assert code == 0 and d["baseline"]["source"] == "none"
    assert (tmp_path / "gate.json").read_bytes() == (world["tmp"] / "gate_good/gate.json").read_bytes()


def test_none_turns_it_off_and_a_named_release_wins(world, released, tmp_path):
    code, d, summary = _gate(world, "bad", tmp_path / "off", baseline="none")
    assert code == 0 and d["baseline"]["source"] == "off" and not d["comparison"]["rows"]
    digest = released["record"].bundle_digest
    code, d, _ = _gate(world, "good", tmp_path / "named", baseline=digest)  # itself, named: compared, equal
    assert code == 0 and d["baseline"]["bundle_digest"] == digest and d["comparison"]["common_items"] == 32
    code, d, _ = _gate(world, "good", tmp_path / "missing", baseline="f" * 64)
    assert code == 1 and d["failed"] == ["baseline_present"] and "has no release" in d["baseline"]["note"]


def test_a_tampered_cache_is_pulled_again(world, released, tmp_path):
    cached = world["tmp"] / "cache" / released["record"].bundle_digest / "eval.json"
    assert cached.is_file()
    cached.write_text(cached.read_text().replace('"exact_match"', '"exact_match" ', 1))
    code, d, _ = _gate(world, "bad", tmp_path)
    assert code == 1 and d["baseline"]["sha256"]["eval.json"] == sha256_file(world["tmp"] / "release_good/eval.json")
    shutil.rmtree(world["tmp"] / "cache")
