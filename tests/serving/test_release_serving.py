"""Serving from the release registry: a fresh directory serves a release by digest (pulled,
signature checked, parity probed) over real HTTP; unreleased, unsigned, tampered and unknown
releases are refused with exit 4 before any weights are built."""

from __future__ import annotations

import copy
import json

import httpx
import pytest
from huggingface_hub import ModelCard

from pipeline.release import Registry, ReleaseError, open_release
from pipeline.release.build import release
from pipeline.release.record import CARD_NAME, SIGNATURE_NAME
from serving.__main__ import EXIT_RELEASE_REFUSED, main
from tests.releases import make_evidence, release_params
from tests.serving.conftest import free_port, serving_process, wait_ready
from tests.tamper import flip_byte


@pytest.fixture(scope="module")
def registry_release(tiny_pipeline, served, tmp_path_factory):
    """The tiny bundle released (signed, pushed) with the golden outputs the served engine gave."""
    tmp = tmp_path_factory.mktemp("served-release")
    params = release_params(tmp)
    evidence = make_evidence(tiny_pipeline["bundle"], tmp / "reports", golden=served.golden_path)
    record, _ = release(params, tiny_pipeline["bundle"], evidence["eval"], evidence["gate"], evidence["golden"],
                        tmp / "artifacts/release")
    return params, record.bundle_digest, tmp


def test_a_fresh_directory_serves_a_signed_release_by_digest(registry_release, tmp_path):
    params, digest, _ = registry_release
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    args = ["--release", digest, "--remote", params.remote, "--releases-dir", str(fresh / "releases"),
            "--public-key", params.signing.public_key, "--require-signature"]
    with serving_process(args, free_port(), cwd=fresh) as (proc, url):
        ready = wait_ready(proc, url, 180)
        assert ready.status_code == 200 and ready.json()["parity"]["status"] == "passed"
        [card] = httpx.get(f"{url}/v1/models").json()["data"]
        assert card["bundle_digest"] == digest
        assert card["release"]["signature"] == "verified" and card["release"]["bundle_digest"] == digest
        # the replay under load the release carries, as /v1/models reports it
        assert card["replay"]["items"] == card["replay"]["identical"] > 0 and card["replay"]["concurrency"] == 8
        r = httpx.post(f"{url}/v1/chat/completions", timeout=60,
                       json={"model": card["id"], "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 2
    assert proc.returncode == 0
    assert (fresh / "releases" / digest / SIGNATURE_NAME).is_file()  # pulled where it was told


def test_a_tampered_cached_release_is_set_aside_and_pulled_again(registry_release, tmp_path, no_weights, capsys):
    """The cache is verified whenever it is opened: a changed file is named, the copy is moved
    aside for inspection, and a fresh copy is pulled and verified; only then are weights built
    (the tripwire)."""
    params, digest, _ = registry_release
    root = Registry.from_name_or_url(params.remote).pull(digest, tmp_path / "releases" / digest)
    victim = next((root / "bundle/adapter").glob("*.safetensors"))
    victim.chmod(0o644)
    flip_byte(victim)
    with pytest.raises(AssertionError, match="engine was built"):
        main(["--release", digest, "--remote", params.remote, "--releases-dir", str(tmp_path / "releases"),
              "--public-key", params.signing.public_key, "--require-signature", "--port", "1"])
    err = capsys.readouterr().err
    assert "the cached copy failed verification" in err and "changed since signing: bundle/adapter/" in err
    [aside] = (tmp_path / "releases").glob(f"{digest}.failed-*")
    assert str(aside) in err and open_release(root, public_key=params.signing.public_key, require_signature=True)


def test_unsigned_release_is_refused_when_a_signature_is_required(registry_release, tmp_path, no_weights, capsys):
    params, digest, _ = registry_release
    root = Registry.from_name_or_url(params.remote).pull(digest, tmp_path / "releases" / digest)
    (root / SIGNATURE_NAME).unlink()
    code = main(["--bundle", str(root), "--public-key", params.signing.public_key, "--require-signature",
                 "--port", "1"])
    assert code == EXIT_RELEASE_REFUSED and "is not signed" in capsys.readouterr().err


def test_unreleased_and_unknown_bundles_are_refused(registry_release, served, tmp_path, no_weights, capsys):
    params, _, _ = registry_release
    bare = str(served.bundle.root)
    assert main(["--bundle", bare, "--port", "1"]) == EXIT_RELEASE_REFUSED
    assert "is not a release" in capsys.readouterr().err
    assert main(["--bundle", bare, "--allow-unreleased", "--require-signature", "--port", "1"]) == \
        EXIT_RELEASE_REFUSED
    assert "bare bundle, not a signed release" in capsys.readouterr().err
    code = main(["--release", "cd" * 32, "--remote", params.remote, "--releases-dir", str(tmp_path), "--port", "1"])
    assert code == EXIT_RELEASE_REFUSED and "has no release" in capsys.readouterr().err


def test_allow_unreleased_reaches_the_engine(served, no_weights):
    """The tripwire: with --allow-unreleased a bare bundle gets past every release check."""
    with pytest.raises(AssertionError, match="engine was built"):
        main(["--bundle", str(served.bundle.root), "--golden", str(served.golden_path), "--allow-unreleased",
              "--port", "1"])


def test_a_release_filed_under_another_digest_is_refused(registry_release, tmp_path, no_weights, capsys):
    """The cache directory name is not trusted: the signed record must hold the digest asked for."""
    params, digest, _ = registry_release
    other = "ef" * 32
    Registry.from_name_or_url(params.remote).pull(digest, tmp_path / "releases" / other)
    code = main(["--release", other, "--remote", params.remote, "--releases-dir", str(tmp_path / "releases"),
                 "--public-key", params.signing.public_key, "--require-signature", "--port", "1"])
    assert code == EXIT_RELEASE_REFUSED and f"holds bundle {digest}, not {other}" in capsys.readouterr().err


def test_the_release_carries_its_replay_under_load(registry_release, served):
    """Before signing, the release stage served the bundle and replayed every golden item at
    concurrency 8; the result is pinned and signed with the release and the card states it."""
    params, digest, tmp = registry_release
    opened = open_release(tmp / "artifacts/release", public_key=params.signing.public_key, require_signature=True)
    assert opened.replay_path is not None and opened.replay_path.name in opened.record.evidence
    replayed = json.loads(opened.replay_path.read_text())
    golden = json.loads(served.golden_path.read_text())
    assert replayed["bundle_digest"] == digest and replayed["concurrency"] == params.replay.concurrency == 8
    assert replayed["items"] == replayed["identical"] == len(golden["prompts"]) and replayed["different"] == 0
    assert sorted(i["id"] for i in replayed["per_item"]) == sorted(g["id"] for g in golden["prompts"])
    card = (opened.root / CARD_NAME).read_text()
    assert f"{replayed['items']} of {replayed['items']} answers came back token for token as evaluated." in card
    assert ModelCard(card).data.tailgate["served_under_load"] == {
        "items": replayed["items"], "identical": replayed["items"], "different": 0, "concurrency": 8}


def test_a_served_answer_that_differs_refuses_the_release(tiny_pipeline, served, tmp_path):
    """Nine golden items: the first eight are what the bundle answers (so the server's own startup
    probe passes), the ninth claims an answer the server does not give. The replay finds it and
    nothing is released, and the refusal names the item and the first differing token."""
    golden = json.loads(served.golden_path.read_text())
    items = [{**g, "id": f"{g['id']}#{k}"} for k in range(4) for g in golden["prompts"]][:8]
    wrong = copy.deepcopy(items[0])
    wrong["id"] = "claimed-answer"
    wrong["token_ids"][1] = (wrong["token_ids"][1] + 1) % served.engine.tokenizer.vocab_size
    path = tmp_path / "golden.json"
    path.write_text(json.dumps({**golden, "prompts": items + [wrong]}))
    evidence = make_evidence(tiny_pipeline["bundle"], tmp_path / "reports", golden=path)
    params = release_params(tmp_path)
    with pytest.raises(ReleaseError, match=r"1 of 9 answers differ(.|\n)*claimed-answer \(\w+\): first difference "
                                           r"at token 1") as exc:
        release(params, tiny_pipeline["bundle"], evidence["eval"], evidence["gate"], evidence["golden"],
                tmp_path / "out")
    assert exc.value.path == "golden.json"
    assert not (tmp_path / "out").exists() and not (tmp_path / "registry").exists()


def test_replay_evidence_is_pinned(registry_release, tmp_path):
    params, digest, _ = registry_release
    root = Registry.from_name_or_url(params.remote).pull(digest, tmp_path / "r")
    (root / "replay.json").chmod(0o644)
    record = json.loads((root / "replay.json").read_text())
    (root / "replay.json").write_text(json.dumps({**record, "different": 0, "identical": 10 ** 6}))
    with pytest.raises(ReleaseError) as exc:  # edited after signing: refused naming it, key or not
        open_release(root)
    assert exc.value.path == "replay.json"
