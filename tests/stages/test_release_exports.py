"""A release carries each export that passed its own gate beside the bundle: its files, its own
evaluation, gate decision, golden answers and replay, pinned by the record and under the one
signature; the card shows the configurations side by side. An export refused by its gate is
named on the card and not shipped. The served export is the one evaluated: `python -m serving
--export` replays its own golden answers, and refuses another configuration's."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest
import yaml

from pipeline.params import load_section
from pipeline.release import Registry, ReleaseError, open_release
from pipeline.release.build import release
from pipeline.release.record import CARD_NAME, RECORD_NAME
from serving.replay import launched_server
from tests.conftest import REPO
from tests.releases import release_params
from tests.tamper import flip_byte


@pytest.fixture(scope="module")
def evaluated(tiny_pipeline, tmp_path_factory):
    """The bundle's real evaluation (one item per slice, as the tiny params ask), its gate decision
    and golden answers, and the export stage run on it: (reports folder, exports stage params)."""
    from pipeline.evaluate import evaluate
    from pipeline.gate import decide

    root = tmp_path_factory.mktemp("evaluated")
    params = load_section("evaluate", tiny_pipeline["params"]).model_copy(
        update={"suite": str(REPO / "eval_suites/discharge"), "damage": False})
    report, rows, golden = evaluate(params, tiny_pipeline["bundle"])
    gate = load_section("gate", tiny_pipeline["params"])
    decision = decide(gate, report, report["bundle_digest"], chat_template_sha256=report["bundle"]["chat_template_sha256"])
    assert decision["passed"], decision["failed"]
    for name, data in (("eval.json", report), ("gate.json", decision), ("golden.json", golden)):
        (root / name).write_text(json.dumps(data))
    (root / "eval_samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = yaml.safe_load(tiny_pipeline["params"].read_text())
    data["evaluate"]["suite"] = str(REPO / "eval_suites/discharge")
    (root / "params.yaml").write_text(yaml.safe_dump(data))
    return root


def _export(tiny_pipeline, evaluated, out, **export) -> None:
    from stages.export import main

    data = yaml.safe_load((evaluated / "params.yaml").read_text())
    data["export"] = export
    (out / "params.yaml").write_text(yaml.safe_dump(data))
    assert main(["--params", str(out / "params.yaml"), "--bundle", str(tiny_pipeline["bundle"]),
                 "--eval", str(evaluated / "eval.json"), "--samples", str(evaluated / "eval_samples.jsonl"),
                 "--out", str(out / "exports"), "--reports", str(out / "reports"),
                 "--metrics", str(out / "metrics.json")]) == 0


def _release(tiny_pipeline, evaluated, tmp):
    params = release_params(tmp)
    record, _ = release(params, tiny_pipeline["bundle"], evaluated / "eval.json", evaluated / "gate.json",
                        evaluated / "golden.json", tmp / "release", exports_dir=tmp / "exports",
                        exports_reports=tmp / "reports")
    return params, record


@pytest.fixture(scope="module")
def released(tiny_pipeline, evaluated, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("with_exports")
    _export(tiny_pipeline, evaluated, tmp, merged=True, merged_dtype="float32")
    params, record = _release(tiny_pipeline, evaluated, tmp)
    return params, record, tmp / "release"


def test_the_passing_export_is_released_beside_the_bundle_with_its_own_evidence(released):
    params, record, root = released
    entry = record.exports["merged"]
    assert entry.kind == "merged" and entry.gate_passed
    assert sorted(entry.evidence) == ["eval.json", "gate.json", "golden.json", "replay.json"]
    assert (root / "exports/merged/release.sig").is_file()
    assert (root / "exports/merged/model/model.safetensors").is_file()
    replay = json.loads((root / "exports/merged/replay.json").read_text())
    assert replay["export"]["name"] == "merged" and replay["export"]["digest"] == entry.digest
    assert replay["items"] > 0 and replay["identical"] == replay["items"]
    card = (root / CARD_NAME).read_text()
    assert "## Configurations" in card
    rows = [line for line in card.splitlines() if line.startswith("| bundle (NF4 + LoRA) |")
            or line.startswith("| merged |")]
    assert len(rows) == 2, rows
    # opened as serving opens it, signature included, from a fresh pull
    opened = open_release(root, public_key=params.signing.public_key, require_signature=True)
    folder, golden, replayed = opened.export("merged")
    assert folder == root / "exports/merged/model" and replayed is not None
    with pytest.raises(ReleaseError, match="carries no export 'gguf_q8_0'.*merged"):
        opened.export("gguf_q8_0")


def test_a_changed_export_file_is_refused_naming_it(released, tmp_path):
    params, record, _root = released
    pulled = Registry.from_name_or_url(params.remote).pull(record.bundle_digest, tmp_path / "r")
    for f in pulled.rglob("*"):
        f.chmod(0o755 if f.is_dir() else 0o644)
    flip_byte(pulled / "exports/merged/model/model.safetensors")
    with pytest.raises(ReleaseError, match="exports/merged/model/model.safetensors"):
        open_release(pulled)  # no key: the record and the export's own record still catch it
    with pytest.raises(ReleaseError, match="model.safetensors"):
        open_release(pulled, public_key=params.signing.public_key, require_signature=True)
    (pulled / "exports/merged/release.sig").unlink()
    with pytest.raises(ReleaseError, match="release export merged is not signed"):
        open_release(pulled)


def test_an_export_carries_its_own_signature_and_is_checked_alone(released, tmp_path):
    """A user deploying only the export (an Ollama host takes the GGUF folder) checks it without
    the rest of the release; a changed file is named."""
    import shutil

    from pipeline.release.sign import verify_signature

    params, _record, root = released
    alone = tmp_path / "merged"
    shutil.copytree(root / "exports/merged", alone)
    verify_signature(alone, public_key=params.signing.public_key)
    flip_byte(alone / "model/config.json", offset=-3)
    with pytest.raises(ReleaseError, match="model/config.json"):
        verify_signature(alone, public_key=params.signing.public_key)


def test_an_unpinned_export_folder_is_refused(released, tmp_path):
    params, record, _root = released
    pulled = Registry.from_name_or_url(params.remote).pull(record.bundle_digest, tmp_path / "r")
    for f in pulled.rglob("*"):
        f.chmod(0o755 if f.is_dir() else 0o644)
    (pulled / "exports/gguf_q8_0").mkdir()
    with pytest.raises(ReleaseError, match="exports/gguf_q8_0 is not pinned"):
        open_release(pulled)
    (pulled / "exports/gguf_q8_0").rmdir()
    (pulled / "exports/merged/notes.txt").write_text("added later")
    with pytest.raises(ReleaseError, match="exports/merged/notes.txt is not pinned"):
        open_release(pulled)


def test_an_export_refused_by_its_gate_is_named_and_not_shipped(tiny_pipeline, evaluated, tmp_path):
    _export(tiny_pipeline, evaluated, tmp_path, merged=True, merged_dtype="float32",
            rules=[{"metric": "damage.abs_delta_nll_per_token.p99", "max": -1.0}])
    _params, record = _release(tiny_pipeline, evaluated, tmp_path)
    assert record.exports == {} and not (tmp_path / "release/exports").exists()
    card = (tmp_path / "release" / CARD_NAME).read_text()
    assert "merged: refused by its gate, not shipped** (damage.abs_delta_nll_per_token.p99)" in card
    assert json.loads((tmp_path / "release" / RECORD_NAME).read_text())["exports"] == {}


def test_the_export_is_served_with_its_own_golden_answers_and_names_itself(released):
    params, record, root = released
    key = params.signing.public_key
    with launched_server(str(root), ["--export", "merged", "--public-key", key, "--require-signature",
                                     "--probe-prompts", "0"]) as url:
        card = httpx.get(f"{url}/models").json()["data"][0]
        assert card["id"] == f"tailgate-{record.bundle_digest[:12]}-merged"
        assert card["configuration"] == {"name": "merged", "kind": "merged", "digest": record.exports["merged"].digest}
        assert card["parity"]["status"] == "passed" and card["replay"]["identical"] == card["replay"]["items"]
        assert card["engine"]["batch_invariant"] is True
    # the bundle's own golden answers are not the export's: refused before any weights load
    out = subprocess.run([sys.executable, "-m", "serving", "--bundle", str(root), "--export", "merged",
                          "--golden", str(root / "golden.json"), "--public-key", key, "--port", "9"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 3 and "the bundle itself, and export merged" in out.stderr
    out = subprocess.run([sys.executable, "-m", "serving", "--bundle", str(root), "--export", "gguf_f16",
                          "--public-key", key, "--port", "9"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 4 and "carries no export 'gguf_f16'" in out.stderr
