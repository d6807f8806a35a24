"""The `release` section: where a bundle that passed the gate goes, and how it is signed."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.params.common import _Strict


class ReleaseSigningParams(_Strict):
    """How a release is signed (OpenSSF model-signing)."""

    method: Literal["key", "sigstore", "none"] = Field(
        "key", description="key: a local elliptic-curve key, offline; sigstore: keyless through Sigstore (network "
        "and an OIDC identity); none: unsigned (serving with --require-signature refuses it).")
    private_key: str = Field(".tailgate/signing/release.key",
                             description="PEM private key (method=key). Keep it out of the repository.")
    public_key: str = Field(".tailgate/signing/release.pub",
                            description="PEM public key matching private_key; hand it to whoever serves.")
    create_key_if_missing: bool = Field(
        True, description="Create a new key pair on the first release when private_key does not exist (a local "
        "default; a team sets false and points private_key at its own key).")
    password_env: str | None = Field(None, description="Environment variable holding the private key's password.")
    sigstore_staging: bool = Field(False, description="Use Sigstore's staging instance (testing only).")


class ReleaseCardParams(_Strict):
    """Metadata of the model card every release carries."""

    base_model: str | None = Field(None, description="Hugging Face id of the base model, for the card's "
                                   "base_model field (null: left out; the card still names the base's source).")
    license: str = Field("apache-2.0", description="License of the released adapter (the card's license field).")
    language: list[str] = Field(default_factory=list, description="ISO 639-1 codes of the languages it serves.")
    model_name: str | None = Field(None, description="Title of the card (null: derived from the base and suite).")


class ReleaseReplayParams(_Strict):
    """Before signing, serve the bundle with `python -m serving` and send it every golden item,
    several at a time, as traffic would arrive; compare the served tokens with the evaluation's."""

    enabled: bool = Field(True, description="Replay at release time; the result (replay.json) is signed with the "
                          "release, shown on the model card and on the server's /v1/models.")
    concurrency: int = Field(8, ge=1, le=256, description="Requests in flight at once.")
    required: bool = Field(True, description="Refuse the release when any served answer differs from the evaluated "
                           "one (false: release it and say so on the card).")


class ReleaseParams(_Strict):
    """Where a bundle that passed the gate is released to, and how it is signed."""

    remote: str = Field("releases", description="DVC remote releases are pushed to: a remote name from the "
                        "repository's DVC config (.dvc/config), or a URL/path.")
    signing: ReleaseSigningParams = Field(default_factory=ReleaseSigningParams,
                                          description="How the release is signed.")
    card: ReleaseCardParams = Field(default_factory=ReleaseCardParams, description="Model card metadata.")
    replay: ReleaseReplayParams = Field(default_factory=ReleaseReplayParams,
                                        description="The served-under-load check run before signing.")
