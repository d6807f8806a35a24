"""A release registry with faults in it, as a user meets them: each fault gets its own message
naming it, a bad pull never lands in the cache, a bad cached copy is set aside and pulled again,
and a push that stops midway leaves no release visible until a later push completes it."""

from __future__ import annotations

import shutil
import subprocess
import sys

import httpx
import pytest

from pipeline.release import Registry, ReleaseError, open_release
from pipeline.release.build import release
from pipeline.release.open import open_from_registry
from pipeline.release.record import RECORD_NAME
from serving.__main__ import EXIT_RELEASE_REFUSED
from tests.registry_faults import blob, corrupt_blob, objects, unwritable_after
from tests.releases import make_evidence, release_params
from tests.serving.conftest import free_port, serving_process, wait_ready
from tests.tamper import flip_byte

WEIGHTS = "bundle/base_q/model.safetensors"  # the file of the report: the base weights


@pytest.fixture(scope="module")
def released(tiny_pipeline, tmp_path_factory):
    """One signed release of the tiny bundle in a registry: (params, digest, release dir)."""
    tmp = tmp_path_factory.mktemp("registry-faults")
    params = release_params(tmp)
    evidence = make_evidence(tiny_pipeline["bundle"], tmp / "reports")
    record, _ = release(params, tiny_pipeline["bundle"], evidence["eval"], evidence["gate"], evidence["golden"],
                        tmp / "artifacts/release")
    assert (tmp / "artifacts/release" / WEIGHTS).is_file()
    return params, record.bundle_digest, tmp / "artifacts/release"


@pytest.fixture
def copy_of_registry(released, tmp_path):
    """A private copy of the good registry, to damage."""
    dst = tmp_path / "registry-copy"
    shutil.copytree(released[0].remote, dst)
    return dst


# -- each fault its own message -------------------------------------------------------------------

def test_a_missing_or_unreadable_registry_is_named_as_such(released, tmp_path):
    _, digest, _ = released
    with pytest.raises(ReleaseError, match=r"release registry \S+/no-such-registry does not exist: check --remote"):
        Registry({"url": str(tmp_path / "no-such-registry")}).pull(digest, tmp_path / "out")
    (tmp_path / "a-file").write_text("not a registry\n")
    with pytest.raises(ReleaseError, match=r"release registry \S+/a-file is not a directory"):
        Registry({"url": str(tmp_path / "a-file")}).pull(digest, tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReleaseError, match=r"holds no releases at all .* check that --remote names the registry"):
        Registry({"url": str(tmp_path / "empty")}).pull(digest, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_release_missing_from_a_registry_with_others_says_so(released, tmp_path):
    params, digest, _ = released
    other = "ab" * 32
    with pytest.raises(ReleaseError) as exc:
        Registry({"url": params.remote}).pull(other, tmp_path / "out")
    msg = str(exc.value)
    assert f"bundle {other} has no release in" in msg and "which holds 1 other release (newest: " \
        f"{digest[:12]}" in msg and "never released there" in msg, msg
    assert "does not exist" not in msg and not (tmp_path / "out").exists()


def test_a_missing_blob_is_named(released, copy_of_registry, tmp_path):
    _, digest, _ = released
    blob(copy_of_registry, digest, WEIGHTS).unlink()
    with pytest.raises(ReleaseError) as exc:
        Registry({"url": str(copy_of_registry)}).pull(digest, tmp_path / "out")
    msg = str(exc.value)
    assert f"is incomplete: 1 file ('{WEIGHTS}') missing from the remote; nothing was pulled" in msg, msg
    assert exc.value.path == WEIGHTS and "Push the release again" in msg and not (tmp_path / "out").exists()


def test_a_corrupted_blob_is_named_and_nothing_lands(released, copy_of_registry, tmp_path):
    _, digest, _ = released
    damaged = corrupt_blob(copy_of_registry, digest, WEIGHTS)
    with pytest.raises(ReleaseError) as exc:
        Registry({"url": str(copy_of_registry)}).pull(digest, tmp_path / "out")
    msg = str(exc.value)
    assert f"the remote's copy of release {digest[:12]} in {copy_of_registry} is corrupted: 1 file ('{WEIGHTS}')" \
        in msg, msg
    assert str(damaged) in msg and "Delete that object from the remote" in msg and exc.value.path == WEIGHTS
    assert not (tmp_path / "out").exists()


# -- the cache holds only verified copies, and heals ------------------------------------------------

def test_a_bad_remote_is_refused_then_a_good_one_serves_the_same_digest(released, copy_of_registry, tmp_path):
    """The issue's report, end to end: one flipped byte in the remote's base weights is refused
    and caches nothing; the same digest then serves from the good remote, no manual step."""
    params, digest, _ = released
    corrupt_blob(copy_of_registry, digest, WEIGHTS)
    cache = tmp_path / "releases"
    base = ["--release", digest, "--releases-dir", str(cache), "--public-key", params.signing.public_key,
            "--require-signature", "--skip-parity-probe"]
    proc_args = [*base, "--remote", str(copy_of_registry)]
    refused = subprocess.run([sys.executable, "-m", "serving", *proc_args, "--port", "1"], capture_output=True,
                             text=True, timeout=300, cwd=tmp_path)
    assert refused.returncode == EXIT_RELEASE_REFUSED, refused.stderr
    assert f"is corrupted: 1 file ('{WEIGHTS}')" in refused.stderr
    assert not (cache / digest).exists() and list(cache.iterdir()) == []  # no temp directory left either

    with serving_process([*base, "--remote", params.remote], free_port(), cwd=tmp_path) as (proc, url):
        assert wait_ready(proc, url, 180).status_code == 200
        [card] = httpx.get(f"{url}/v1/models").json()["data"]
        assert card["bundle_digest"] == digest and card["release"]["signature"] == "verified"
        r = httpx.post(f"{url}/v1/chat/completions", timeout=60,
                       json={"model": card["id"], "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
        assert r.status_code == 200
    assert proc.returncode == 0
    assert open_release(cache / digest, public_key=params.signing.public_key, require_signature=True)


def test_a_consistent_but_unsigned_remote_copy_is_verified_before_it_lands(released, copy_of_registry, tmp_path):
    """A remote whose objects match their md5s but not the signature (the release re-pushed
    after an edit): caught in the temporary directory by the signature check, nothing cached."""
    params, digest, out = released
    edited = tmp_path / "edited"
    shutil.copytree(out, edited)
    (edited / "README.md").write_text("# a card nobody signed\n")
    Registry({"url": str(copy_of_registry)}).push(edited, open_release(out).record)
    cache = tmp_path / "releases"
    with pytest.raises(ReleaseError) as exc:
        open_from_registry(Registry({"url": str(copy_of_registry)}), digest, cache,
                           public_key=params.signing.public_key, require_signature=True)
    msg = str(exc.value)
    assert msg.startswith(f"the copy pulled from {copy_of_registry} failed verification: signature check failed")
    assert "changed since signing: README.md" in msg and "nothing was cached" in msg and exc.value.path == "README.md"
    assert list(cache.iterdir()) == []


def test_a_bad_cached_copy_is_moved_aside_and_pulled_again(released, tmp_path, caplog):
    params, digest, _ = released
    cache = tmp_path / "releases"
    key = dict(public_key=params.signing.public_key, require_signature=True)
    first = open_from_registry(Registry({"url": params.remote}), digest, cache, **key)
    assert first.root == cache / digest and first.bundle.root == cache / digest / "bundle"
    victim = cache / digest / WEIGHTS
    victim.chmod(0o644)
    flip_byte(victim)

    again = open_from_registry(Registry({"url": params.remote}), digest, cache, **key)
    assert again.signature == "verified" and again.root == cache / digest
    [aside] = [p for p in cache.iterdir() if p.name.startswith(f"{digest}.failed-")]
    assert (aside / WEIGHTS).read_bytes() != (cache / digest / WEIGHTS).read_bytes()  # kept as it was found
    assert f"the cached copy failed verification" in caplog.text and str(aside) in caplog.text
    assert f"changed since signing: {WEIGHTS}" in caplog.text


def test_a_bad_cache_and_a_bad_remote_name_both_copies(released, copy_of_registry, tmp_path):
    params, digest, _ = released
    cache = tmp_path / "releases"
    key = dict(public_key=params.signing.public_key, require_signature=True)
    open_from_registry(Registry({"url": params.remote}), digest, cache, **key)
    (cache / digest / RECORD_NAME).chmod(0o644)
    flip_byte(cache / digest / RECORD_NAME, 5)
    corrupt_blob(copy_of_registry, digest, WEIGHTS)
    with pytest.raises(ReleaseError) as exc:
        open_from_registry(lambda: Registry({"url": str(copy_of_registry)}), digest, cache, **key)
    msg = str(exc.value)
    assert msg.startswith("the cached copy failed verification") and f"moved aside to {cache / digest}.failed-" in msg
    assert f"then the remote's copy of release {digest[:12]} in {copy_of_registry} is corrupted" in msg, msg
    assert not (cache / digest).exists() and not [p for p in cache.iterdir() if p.name.startswith(".pulling")]


def test_two_starts_pulling_at_once_both_open_one_cached_copy(released, tmp_path):
    """Another server caches the release while this one is pulling it: the rename into place
    finds the directory taken, this copy is dropped and the other one opened (and verified)."""
    params, digest, _ = released
    cache = tmp_path / "releases"

    class Racing(Registry):
        def pull(self, digest, dest):
            super().pull(digest, cache / digest)  # the other start wins the race
            return super().pull(digest, dest)

    opened = open_from_registry(Racing({"url": params.remote}), digest, cache, public_key=params.signing.public_key,
                                require_signature=True)
    assert opened.root == cache / digest and opened.signature == "verified"
    assert [p.name for p in cache.iterdir()] == [digest]  # our temporary copy is gone


def test_a_missing_key_is_not_blamed_on_the_cache(released, tmp_path):
    params, digest, _ = released
    cache = tmp_path / "releases"
    open_from_registry(Registry({"url": params.remote}), digest, cache)
    with pytest.raises(ReleaseError, match="public key .*nope.pub not found"):
        open_from_registry(Registry({"url": params.remote}), digest, cache, public_key=tmp_path / "nope.pub",
                           require_signature=True)
    assert [p.name for p in cache.iterdir()] == [digest]  # nothing moved aside


# -- push is all or nothing ----------------------------------------------------------------------

def test_an_interrupted_push_leaves_no_release_and_the_next_push_completes_it(released, tmp_path):
    params, digest, out = released
    record = open_release(out).record
    registry = Registry({"url": str(tmp_path / "fresh-registry")})
    with unwritable_after(3) as written, pytest.raises(ReleaseError) as exc:
        registry.push(out, record)
    assert len(written) == 3 and len(objects(tmp_path / "fresh-registry")) == 3  # partway: 3 objects landed
    assert f"push of release {digest[:12]}" in str(exc.value) and "push again to complete it" in str(exc.value)
    assert registry.pointer(digest) is None and registry.list() == []
    with pytest.raises(ReleaseError, match="holds no releases at all"):
        registry.pull(digest, tmp_path / "out")

    pointer = registry.push(out, record)
    assert registry.pointer(digest) == pointer and [p.bundle_digest for p in registry.list()] == [digest]
    assert len(objects(tmp_path / "fresh-registry")) == pointer.dvc.nfiles + 1  # every file and the listing
    index = tmp_path / "fresh-registry/tailgate/releases"
    assert [p.name for p in index.iterdir()] == [f"{digest}.json"]  # no temp entry left behind
    pulled = registry.pull(digest, tmp_path / "out")
    assert open_release(pulled, public_key=params.signing.public_key, require_signature=True).signature == "verified"


def test_the_index_entry_is_written_after_every_object(released, tmp_path):
    """Stopped after every file's object landed but before the listing (DVC uploads it last):
    still nothing visible by the digest."""
    _, digest, out = released
    record = open_release(out).record
    Registry({"url": str(tmp_path / "scratch")}).push(out, record)
    every = objects(tmp_path / "scratch")
    registry = Registry({"url": str(tmp_path / "r")})
    with unwritable_after(len(every) - 1), pytest.raises(ReleaseError, match="did not finish"):
        registry.push(out, record)
    landed = objects(tmp_path / "r")
    assert len(landed) == len(every) - 1 and not any(o.endswith(".dir") for o in landed)
    assert registry.pointer(digest) is None and not (tmp_path / "r/tailgate").exists()
