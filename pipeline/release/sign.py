"""Signing a release directory with OpenSSF model-signing, and checking a signature.

The signature covers every file of the release (bundle weights, manifest, evaluation and gate
reports, golden outputs, model card, release record), so anyone can check it with the
`model_signing verify` CLI and the public key alone, without this project's code. Methods:

- key: a local elliptic-curve key (P-256, PEM); works offline. The private key never enters
  the repository; the public key is handed to whoever serves.
- sigstore: keyless signing through Sigstore (needs network and an OIDC identity); verified
  against the expected identity and issuer.

model_signing (and pyopenssl, which it imports without declaring) load only here, lazily.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

from pipeline.files import atomic_open
from pipeline.release.record import SIGNATURE_NAME, ReleaseError, SigningInfo

log = logging.getLogger(__name__)


def _hashing_config():
    from model_signing import hashing

    # Git files are hashed like any other (a release has none; an extra one must not slip by
    # unhashed); only the signature itself is left out.
    return hashing.Config().set_ignored_paths(paths=[SIGNATURE_NAME], ignore_git_paths=False)


def generate_key(private_key: str | Path, public_key: str | Path) -> None:
    """A new P-256 key pair; the private half is written owner-readable only."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private_key, public_key = Path(private_key), Path(public_key)
    if private_key.exists():
        raise ReleaseError(f"{private_key} already exists; refusing to overwrite a signing key", str(private_key))
    key = ec.generate_private_key(ec.SECP256R1())
    # Public half first: a crash between the two leaves no private key, so the next release
    # creates a fresh pair instead of refusing to overwrite a key whose public half is missing.
    with atomic_open(public_key, "wb") as f:
        f.write(key.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo))
    with atomic_open(private_key, "wb", permissions=0o600) as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    log.warning("created signing key %s (public key %s): keep the private key out of the repository and "
                "give the public key to whoever serves releases", private_key, public_key)


def key_fingerprint(public_key: str | Path) -> str:
    """sha256 of the DER public key: names the key in release records without shipping it."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_public_key(Path(public_key).read_bytes())
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def check_key_pair(private_key: str | Path, public_key: str | Path, password: str | None = None) -> None:
    """Refuse to sign with a private key whose public half is not the one verifiers were given."""
    from cryptography.hazmat.primitives import serialization

    priv = serialization.load_pem_private_key(Path(private_key).read_bytes(),
                                              password.encode() if password else None)
    ours = priv.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if hashlib.sha256(ours).hexdigest() != key_fingerprint(public_key):
        raise ReleaseError(f"{public_key} is not the public half of {private_key}", str(public_key))


def sign_release(root: str | Path, method: str, *, private_key: str | Path | None = None,
                 public_key: str | Path | None = None, password: str | None = None,
                 sigstore_staging: bool = False) -> SigningInfo:
    """Write root/release.sig over every other file under root."""
    from model_signing import signing

    root = Path(root)
    if method == "none":
        return SigningInfo(method="none")
    config = signing.Config().set_hashing_config(_hashing_config())
    if method == "key":
        if private_key is None or public_key is None:
            raise ReleaseError("signing method 'key' needs a private and a public key path")
        check_key_pair(private_key, public_key, password)
        config.use_elliptic_key_signer(private_key=private_key, password=password.encode() if password else None)
        info = SigningInfo(method="key", key_fingerprint=key_fingerprint(public_key))
    elif method == "sigstore":
        config.use_sigstore_signer(use_staging=sigstore_staging, use_ambient_credentials=True)
        info = SigningInfo(method="sigstore")
    else:
        raise ReleaseError(f"unknown signing method {method!r}")
    config.sign(root, root / SIGNATURE_NAME)
    return info


def verify_signature(root: str | Path, *, public_key: str | Path | None = None,
                     sigstore_identity: str | None = None, sigstore_issuer: str | None = None,
                     sigstore_staging: bool = False) -> None:
    """Check root/release.sig against every file under root; raise ReleaseError naming the
    files that differ, are extra or are missing."""
    from model_signing import verifying

    root = Path(root)
    sig = root / SIGNATURE_NAME
    if not sig.is_file():
        raise ReleaseError(f"release {root} is not signed ({SIGNATURE_NAME} missing)", SIGNATURE_NAME)
    config = verifying.Config()
    if public_key is not None:
        if not Path(public_key).is_file():
            raise ReleaseError(f"public key {public_key} not found", str(public_key))
        config.use_elliptic_key_verifier(public_key=public_key)
    elif sigstore_identity and sigstore_issuer:
        config.use_sigstore_verifier(identity=sigstore_identity, oidc_issuer=sigstore_issuer,
                                     use_staging=sigstore_staging)
    else:
        raise ReleaseError("verifying a signature needs a public key (or a Sigstore identity and issuer)")
    try:
        config.verify(root, sig)
    except Exception as exc:  # model_signing raises ValueError and its own verification errors
        problem, path = _describe(str(exc))
        raise ReleaseError(f"signature check failed for release {root}: {problem}", path) from None


def _describe(message: str) -> tuple[str, str]:
    """model_signing's mismatch message lists raw digests as Python bytes; name the files."""
    # The list is repr()'d, so a quote may come escaped.
    changed = re.findall(r"Hash mismatch for \\?'([^'\\]+)\\?'", message)
    extra = re.search(r"Extra files found in model \\?'[^']*\\?': ([^'\"\\\]]+)", message)
    missing = re.search(r"Missing files in model \\?'[^']*\\?': ([^'\"\\\]]+)", message)
    parts = []
    if changed:
        parts.append("changed since signing: " + ", ".join(changed))
    if extra:
        parts.append("not signed (extra): " + extra.group(1).strip())
    if missing:
        parts.append("signed but missing: " + missing.group(1).strip())
    if not parts:
        return message.strip(), SIGNATURE_NAME
    first = (changed or [s.strip() for s in (extra or missing).group(1).split(",")])[0]
    return "; ".join(parts), first
