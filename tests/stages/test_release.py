"""The release stage and the registry: only a passing gate releases; a release is signed,
pushed by digest, pulled into a fresh directory and opened exactly as serving opens it; every
kind of tampering, a missing signature and a wrong key are refused naming the file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import yaml
from huggingface_hub import ModelCard

from pipeline.bundle.verify import BundleError
from pipeline.release import Registry, ReleaseError, open_release
from pipeline.release.build import release
from pipeline.release.record import CARD_NAME, RECORD_NAME, SIGNATURE_NAME
from pipeline.release.sign import generate_key
from tests.conftest import REPO
from tests.releases import make_evidence, release_params
from tests.tamper import flip_byte


@pytest.fixture(scope="module")
def released(tiny_pipeline, tmp_path_factory):
    """One real release of the tiny bundle: (params, evidence paths, record, pointer, release dir)."""
    tmp = tmp_path_factory.mktemp("release")
    params = release_params(tmp)
    evidence = make_evidence(tiny_pipeline["bundle"], tmp / "reports")
    out = tmp / "artifacts/release"
    record, pointer = release(params, tiny_pipeline["bundle"], evidence["eval"], evidence["gate"],
                              evidence["golden"], out)
    return params, evidence, record, pointer, out


@pytest.fixture
def pulled(released, tmp_path):
    """A fresh copy of the release, pulled from the registry by digest."""
    params, _, record, _, _ = released
    root = Registry.from_name_or_url(params.remote).pull(record.bundle_digest, tmp_path / "fresh" / "r")
    for f in root.rglob("*"):  # DVC links files read-only from its cache; the tamperer can write
        f.chmod(0o755 if f.is_dir() else 0o644)
    return root


def test_release_is_signed_pushed_by_digest_and_opens_from_a_fresh_pull(released, pulled, tiny_pipeline):
    params, evidence, record, pointer, out = released
    digest = json.loads((tiny_pipeline["bundle"] / "manifest.json").read_text())["bundle_digest"]
    assert record.bundle_digest == pointer.bundle_digest == digest
    assert record.gate_passed and record.signing.method == "key" and len(record.signing.key_fingerprint) == 64
    assert set(record.evidence) == {"eval.json", "gate.json", "golden.json", CARD_NAME}
    assert [p.bundle_digest for p in Registry.from_name_or_url(params.remote).list()] == [digest]

    opened = open_release(pulled, public_key=params.signing.public_key, require_signature=True)
    assert opened.signature == "verified" and opened.bundle.manifest.bundle_digest == digest
    # the pulled release is the released directory, file for file
    assert sorted(p.relative_to(pulled).as_posix() for p in pulled.rglob("*") if p.is_file()) == \
        sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    card = (pulled / CARD_NAME).read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["base_model"] == "tiny/llama-test" and meta["base_model_relation"] == "adapter"
    assert digest in card
    # the card as the Hub client reads it: bound to this bundle, no dataset id it would reject
    data = ModelCard(card).data
    assert data.tailgate["bundle_digest"] == digest and data.get("datasets") is None
    assert data.tailgate["curated_data_digest"] == opened.bundle.manifest.provenance.curated_data_digest
    assert {r.metric_type for r in data.eval_results} == {json.loads(evidence["eval"].read_text())["headline_metric"]}


@pytest.mark.parametrize("gate_change, phrase", [
    ({"passed": False, "failed": ["field_accuracy"]}, "the gate did not pass"),
    ({"bundle_digest": "0" * 64}, "the gate report is for bundle 000000000000"),
])
def test_only_a_passing_gate_for_this_bundle_releases(tiny_pipeline, tmp_path, gate_change, phrase):
    params = release_params(tmp_path)
    evidence = make_evidence(tiny_pipeline["bundle"], tmp_path / "reports")
    gate = json.loads(evidence["gate"].read_text())
    evidence["gate"].write_text(json.dumps({**gate, **gate_change}))
    with pytest.raises(ReleaseError, match=phrase):
        release(params, tiny_pipeline["bundle"], evidence["eval"], evidence["gate"], evidence["golden"],
                tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "registry").exists()
    assert not (tmp_path / "keys").exists()  # refused before anything was created


def test_a_gate_that_really_fails_is_refused(tiny_pipeline, tmp_path):
    evidence = make_evidence(tiny_pipeline["bundle"], tmp_path / "reports",
                             rules=[{"metric": "overall.format_valid", "min": 1.0}])
    assert json.loads(evidence["gate"].read_text())["passed"] is False
    with pytest.raises(ReleaseError, match=r"overall\.format_valid"):
        release(release_params(tmp_path), tiny_pipeline["bundle"], evidence["eval"], evidence["gate"],
                evidence["golden"], tmp_path / "out")


def _edit_json(path, **changes):
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


TAMPERS = {
    "adapter weights": (lambda r: flip_byte(next((r / "bundle/adapter").glob("*.safetensors"))),
                        "bundle/adapter/adapter_model.safetensors"),
    "gate report": (lambda r: _edit_json(r / "gate.json", note="edited"), "gate.json"),
    "release record": (lambda r: _edit_json(r / RECORD_NAME, git_commit="f" * 40), RECORD_NAME),
    "model card": (lambda r: (r / CARD_NAME).write_text("# trust me\n"), CARD_NAME),
}


@pytest.mark.parametrize("name", sorted(TAMPERS))
def test_tampered_release_is_refused_naming_the_file(pulled, released, name):
    tamper, victim = TAMPERS[name]
    tamper(pulled)
    with pytest.raises(ReleaseError) as exc:
        open_release(pulled, public_key=released[0].signing.public_key, require_signature=True)
    assert exc.value.path == victim and victim in str(exc.value)


@pytest.mark.parametrize("name", ["adapter weights", "gate report", "model card"])
def test_tampering_is_caught_without_the_key_too(pulled, name):
    """Without a public key the signature is unchecked, but the record pins the evidence and the
    manifest pins the bundle: the edit is still refused, naming the file."""
    tamper, victim = TAMPERS[name]
    tamper(pulled)
    with pytest.raises((ReleaseError, BundleError)) as exc:
        open_release(pulled)
    assert victim.removeprefix("bundle/") in str(exc.value)


def test_extra_file_missing_signature_and_wrong_key_are_refused(pulled, released, tmp_path):
    key = released[0].signing.public_key
    (pulled / "bundle" / "notes.txt").write_text("unsigned\n")
    with pytest.raises(ReleaseError, match="not signed \\(extra\\): bundle/notes.txt"):
        open_release(pulled, public_key=key)
    (pulled / "bundle" / "notes.txt").unlink()

    generate_key(tmp_path / "other.key", tmp_path / "other.pub")
    with pytest.raises(ReleaseError, match="signature check failed"):
        open_release(pulled, public_key=tmp_path / "other.pub")

    (pulled / SIGNATURE_NAME).unlink()
    with pytest.raises(ReleaseError, match="is not signed and a signature is required"):
        open_release(pulled, public_key=key, require_signature=True)
    assert open_release(pulled).signature == "unsigned"  # allowed only when not required


def test_unknown_digest_and_malformed_digest_are_refused(released, tmp_path):
    registry = Registry.from_name_or_url(released[0].remote)
    with pytest.raises(ReleaseError, match="has no release"):
        registry.pull("ab" * 32, tmp_path / "x")
    with pytest.raises(ReleaseError, match="is not a bundle digest"):
        registry.pull("../../etc", tmp_path / "y")
    assert not (tmp_path / "x").exists()


def test_unsigned_release_method_none_is_refused_when_required(tiny_pipeline, tmp_path):
    params = release_params(tmp_path, method="none")
    evidence = make_evidence(tiny_pipeline["bundle"], tmp_path / "reports")
    record, _ = release(params, tiny_pipeline["bundle"], evidence["eval"], evidence["gate"], evidence["golden"],
                        tmp_path / "out")
    assert record.signing.method == "none" and not (tmp_path / "out" / SIGNATURE_NAME).exists()
    with pytest.raises(ReleaseError, match="not signed"):
        open_release(tmp_path / "out", require_signature=True)


def test_signing_refuses_a_mismatched_key_pair_and_a_missing_key(tiny_pipeline, tmp_path):
    evidence = make_evidence(tiny_pipeline["bundle"], tmp_path / "reports")
    args = (tiny_pipeline["bundle"], evidence["eval"], evidence["gate"], evidence["golden"], tmp_path / "out")
    with pytest.raises(ReleaseError, match="keygen"):
        release(release_params(tmp_path, create_key_if_missing=False), *args)
    generate_key(tmp_path / "keys/release.key", tmp_path / "keys/release.pub")
    generate_key(tmp_path / "b.key", tmp_path / "b.pub")
    shutil.copyfile(tmp_path / "b.pub", tmp_path / "keys/release.pub")
    with pytest.raises(ReleaseError, match="is not the public half"):
        release(release_params(tmp_path), *args)
    assert not (tmp_path / "out").exists()


def test_release_stage_entry_point_writes_record_and_card(tiny_pipeline, tmp_path):
    from stages.release import main

    params = release_params(tmp_path)
    params_file = tmp_path / "params.yaml"
    full = yaml.safe_load((REPO / "params.yaml").read_text())
    full["release"] = params.model_dump(mode="json")
    params_file.write_text(yaml.safe_dump(full))
    evidence = make_evidence(tiny_pipeline["bundle"], tmp_path / "reports")
    rc = main(["--params", str(params_file), "--bundle", str(tiny_pipeline["bundle"]), "--eval", str(evidence["eval"]),
               "--gate", str(evidence["gate"]), "--golden", str(evidence["golden"]), "--out", str(tmp_path / "rel"),
               # no export stage ran for the tiny bundle (the repository's own exports are of the default one)
               "--exports", str(tmp_path / "exports"), "--exports-reports", str(tmp_path / "exports_reports"),
               "--record", str(tmp_path / "release.json"), "--card", str(tmp_path / "card.md")])
    assert rc == 0
    written = json.loads((tmp_path / "release.json").read_text())
    assert written["record"]["bundle_digest"] == written["registry"]["bundle_digest"]
    assert (tmp_path / "card.md").read_text() == (tmp_path / "rel" / CARD_NAME).read_text()


def test_model_signing_cli_checks_a_release_without_tailgate_code(pulled, released):
    """The claim in the README: the public key and model-signing's own CLI are enough."""
    def verify():
        return subprocess.run([sys.executable, "-m", "model_signing", "verify", "key", str(pulled), "--signature",
                               str(pulled / SIGNATURE_NAME), "--public_key", released[0].signing.public_key],
                              capture_output=True, text=True, timeout=120)

    ok = verify()
    assert ok.returncode == 0 and "Verification succeeded" in ok.stdout + ok.stderr, ok.stdout + ok.stderr
    _edit_json(pulled / "eval.json", headline_metric="exact_match")
    assert verify().returncode != 0


def test_a_replay_added_after_the_release_is_refused(pulled, released):
    """A release made without a replay (its golden file has nothing to replay) cannot gain one
    later: an unpinned replay.json is refused by name, even where no key checks the signature."""
    assert "replay.json" not in released[2].evidence
    (pulled / "replay.json").write_text(json.dumps({"bundle_digest": released[2].bundle_digest, "different": 0}))
    with pytest.raises(ReleaseError, match="not pinned by the release record") as exc:
        open_release(pulled)
    assert exc.value.path == "replay.json"
