"""The platform is part of what was evaluated: serving compares its own with the release's,
refuses a differing replay naming both, and accepts another platform only through a signed
attestation of a full replay there.

A second platform is simulated: the tiny bundle's golden outputs are released as if recorded
on an AMD EPYC with AVX2 only (the tokens are this machine's, so they replay here), which
makes this machine, whatever it is, the "other" platform.
"""

from __future__ import annotations

import json

import httpx
import pytest
import yaml

from pipeline.files import sha256_file
from pipeline.platform import Platform, detect
from pipeline.release import Registry, ReleaseError
from pipeline.release.attest import attest, collect, payload, verify
from pipeline.release.build import release
from pipeline.release.record import RECORD_NAME
from serving.__main__ import EXIT_PARITY_REFUSED, main
from tests.releases import make_evidence, release_params
from tests.serving.conftest import free_port, serving_process, wait_ready

EPYC = {"cpu_vendor": "AuthenticAMD", "cpu_model": "AMD EPYC 7B13", "cpu_isa": ["avx2", "fma"],
        "torch_cpu_capability": "AVX2", "onednn_max_isa": None, "gpu": None, "kernel_4bit": "cpu-dequantize"}


def _epyc(record: dict) -> dict:
    fields = {k: v for k, v in record.items() if k not in ("platform_id", "description")}
    return Platform.model_validate({**fields, **EPYC}).as_record()


def _release(tiny_pipeline, served, tmp, change_token: bool = False):
    golden = json.loads(served.golden_path.read_text())
    golden["platform"] = _epyc(golden["platform"])
    if change_token:  # what another platform's kernels would have produced
        golden["prompts"][0]["token_ids"][0] += 1
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "golden.json").write_text(json.dumps(golden))
    base = release_params(tmp)
    params = type(base).model_validate({**base.model_dump(), "replay": {"enabled": False}})
    evidence = make_evidence(tiny_pipeline["bundle"], tmp / "reports", golden=tmp / "golden.json")
    record, _ = release(params, tiny_pipeline["bundle"], evidence["eval"], evidence["gate"], evidence["golden"],
                        tmp / "artifacts/release")
    return params, record.bundle_digest, tmp / "artifacts/release"


@pytest.fixture(scope="module")
def epyc_release(tiny_pipeline, served, tmp_path_factory):
    return _release(tiny_pipeline, served, tmp_path_factory.mktemp("epyc-release"))


@pytest.fixture(scope="module")
def attested(epyc_release, here, tmp_path_factory):
    """The EPYC-evaluated release attested on this machine: every golden item replayed here."""
    params, digest, root = epyc_release
    out = tmp_path_factory.mktemp("attestations")
    path, result = attest(root, private_key=params.signing.private_key, public_key=params.signing.public_key,
                          concurrency=4, out=out / f"{digest[:16]}-{here.platform_id}.intoto.json")
    return path, result


def _serve_args(params, root, *extra, port: int | None = 1):
    """Arguments of `python -m serving` for the release at root (port None: the caller adds it)."""
    return ["--bundle", str(root), "--public-key", params.signing.public_key, "--require-signature",
            *(["--port", str(port)] if port is not None else []), *extra]


@pytest.fixture(scope="module")
def here(served) -> Platform:
    """This machine's platform as the served engine computes on it."""
    return detect(served.engine.model)


def test_an_uncovered_platform_is_refused_on_request_naming_both(epyc_release, tmp_path, capsys):
    params, _digest, root = epyc_release
    code = main(_serve_args(params, root, "--require-attested-platform", "--attestations", str(tmp_path)))
    err = capsys.readouterr().err
    assert code == EXIT_PARITY_REFUSED, err
    assert "neither evaluated nor attested" in err
    assert "AuthenticAMD" in err and detect().cpu_vendor in err  # both platforms
    assert "pipeline.release attest" in err


def test_a_differing_replay_on_another_platform_names_both(tiny_pipeline, served, tmp_path, capsys):
    params, _digest, root = _release(tiny_pipeline, served, tmp_path / "r", change_token=True)
    code = main(_serve_args(params, root, "--attestations", str(tmp_path)))
    err = capsys.readouterr().err
    assert code == EXIT_PARITY_REFUSED, err
    assert "generated token ids differ at position 0" in err
    assert "evaluated on" in err and "AuthenticAMD" in err and "serving on" in err
    with pytest.raises(ReleaseError) as refused:  # and nothing is attested where it differs
        attest(root, private_key=params.signing.private_key, public_key=params.signing.public_key, concurrency=4,
               out=tmp_path / "never.intoto.json")
    assert "evaluated on:" in str(refused.value) and "served on:" in str(refused.value)
    assert not (tmp_path / "never.intoto.json").exists()


def test_the_attestation_is_a_signed_in_toto_statement_of_every_item(epyc_release, attested, here):
    params, digest, root = epyc_release
    path, result = attested
    assert result["different"] == 0 and result["identical"] == result["items"] > 0
    stmt = payload(path)
    assert stmt["_type"] == "https://in-toto.io/Statement/v1"
    assert stmt["predicateType"] == "https://in-toto.io/attestation/test-result/v0.1"
    subjects = {s["name"]: s["digest"]["sha256"] for s in stmt["subject"]}
    assert subjects == {RECORD_NAME: sha256_file(root / RECORD_NAME), "bundle": digest}
    assert stmt["predicate"]["result"] == "PASSED" and len(stmt["predicate"]["passedTests"]) == result["items"]
    att = verify(path.read_bytes(), str(path), params.signing.public_key, sha256_file(root / RECORD_NAME), digest)
    assert att.platform.platform_id == here.platform_id and att.items == result["items"]


def test_a_forged_or_foreign_attestation_is_not_trusted(epyc_release, attested, tmp_path):
    from pipeline.release.sign import generate_key

    params, digest, root = epyc_release
    path, _ = attested
    record_sha = sha256_file(root / RECORD_NAME)
    envelope = json.loads(path.read_text())
    import base64

    stmt = payload(path)
    stmt["predicate"]["passedTests"].append("an item never replayed")
    envelope["payload"] = base64.b64encode(json.dumps(stmt).encode()).decode()
    forged = json.dumps(envelope).encode()
    with pytest.raises(ReleaseError, match="not signed by the release key"):
        verify(forged, "forged", params.signing.public_key, record_sha, digest)
    generate_key(tmp_path / "other.key", tmp_path / "other.pub")
    with pytest.raises(ReleaseError, match="not signed by the release key"):
        verify(path.read_bytes(), "other key", tmp_path / "other.pub", record_sha, digest)
    with pytest.raises(ReleaseError, match="another release"):
        verify(path.read_bytes(), "other release", params.signing.public_key, "0" * 64, digest)
    good, problems = collect({"forged": forged, "real": path.read_bytes()}, params.signing.public_key, root)
    assert [a.source for a in good] == ["real"] and len(problems) == 1 and "forged" in problems[0]


def test_the_registry_keeps_attestations_beside_the_release(epyc_release, attested, here):
    params, digest, root = epyc_release
    path, _ = attested
    registry = Registry.from_name_or_url(params.remote)
    assert registry.attestations(digest) == {}
    where = registry.push_attestation(digest, path)
    assert where.endswith(path.name) and digest in where
    good, problems = collect(registry.attestations(digest), params.signing.public_key, root)
    assert not problems and [a.platform.platform_id for a in good] == [here.platform_id]


def test_an_attested_platform_is_served_and_models_lists_it(epyc_release, attested, here):
    params, _digest, root = epyc_release
    path, _ = attested
    args = _serve_args(params, root, "--require-attested-platform", "--attestations", str(path.parent), port=None)
    with serving_process(args, free_port()) as (proc, url):
        assert wait_ready(proc, url, 180).status_code == 200
        [card] = httpx.get(f"{url}/v1/models").json()["data"]
        p = card["platform"]
        assert p["coverage"] == "attested" and p["serving"]["platform_id"] == here.platform_id
        assert p["evaluated"]["cpu_vendor"] == "AuthenticAMD" and any(d.startswith("cpu_vendor") or
                                                                      d.startswith("cpu_isa") for d in p["differences"])
        assert [a["platform_id"] for a in p["attested"]] == [here.platform_id]
    assert proc.returncode == 0


def test_the_attest_command_pulls_by_digest_and_pushes_beside_the_release(tiny_pipeline, served, here, tmp_path,
                                                                          capsys, monkeypatch):
    """`python -m pipeline.release attest <digest>` as documented: pulled from the registry,
    replayed here, the attestation written and put in the registry, where serving finds it."""
    from pipeline.release.__main__ import main as release_main

    params, digest, root = _release(tiny_pipeline, served, tmp_path / "own")  # a registry of its own
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({"release": json.loads(params.model_dump_json())}))
    monkeypatch.chdir(tmp_path)  # the attestation's default place is ./attestations
    assert release_main(["--params", str(params_file), "attest", digest, "--concurrency", "4"]) == 0
    out = capsys.readouterr().out
    written = tmp_path / "attestations" / f"{digest[:16]}-{here.platform_id}.intoto.json"
    assert written.is_file() and str(written.name) in out
    in_registry = Registry.from_name_or_url(params.remote).attestations(digest)
    assert [p.rsplit("/", 1)[-1] for p in in_registry] == [written.name]
    good, problems = collect(in_registry, params.signing.public_key, root)
    assert not problems and good[0].platform.platform_id == here.platform_id
