"""Loading is verifying: the one gate every consumer of a bundle goes through.

`verify_bundle` re-hashes every file against the manifest and refuses, naming the file:
missing, extra, changed or symlinked files, paths escaping the bundle, file types that could
carry code (pickles), configs that ask for remote code, a manifest whose digest does not
match its content, and an adapter trained on another base. It builds nothing; engines build
models only from the VerifiedBundle it returns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.bundle.manifest import (
    ALLOWED_SUFFIXES, MANIFEST_NAME, SCHEMA_VERSION, Manifest, compute_bundle_digest, files_digest,
)
from pipeline.files import hash_files, list_files, sha256_bytes


class BundleError(ValueError):
    """A bundle failed verification. `path` names the offending file (relative to the bundle).

    A ValueError, so every stage entry point reports it as a one-line error and exit code 1."""

    def __init__(self, path: str, problem: str, expected: str | None = None, actual: str | None = None):
        self.path, self.problem, self.expected, self.actual = path, problem, expected, actual
        msg = f"bundle file {path!r}: {problem}"
        if expected is not None or actual is not None:
            msg += f" (expected {expected}, actual {actual})"
        super().__init__(msg)


@dataclass(frozen=True)
class VerifiedBundle:
    root: Path
    manifest: Manifest


def _check_paths(root: Path, rel_paths) -> None:
    """Manifest paths must stay inside the bundle: no absolute paths, no `..`."""
    for rel in rel_paths:
        p = Path(rel)
        if p.is_absolute() or ".." in p.parts or not (root / p).resolve().is_relative_to(root.resolve()):
            raise BundleError(rel, "path escapes the bundle")


def _check_config_has_no_code(root: Path, rel: str) -> None:
    try:
        data = json.loads((root / rel).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(rel, f"is not valid JSON: {exc}") from None
    if isinstance(data, dict):
        for key in ("auto_map", "auto_mapping"):
            if data.get(key):
                raise BundleError(rel, f"declares {key} (remote code); bundles never run code")


def shipped_base_digest(manifest: Manifest) -> str:
    return files_digest({k.split("/", 1)[1]: v for k, v in manifest.base.files.items()})


def adapter_trained_on(manifest: Manifest) -> str | None:
    """"shipped" (QLoRA: trained on base_q itself), "reference" (trained on the 16-bit base
    base_q was quantized from, i.e. post-training quantization of the adapter), None (another
    base: refused)."""
    if manifest.adapter.base_digest == shipped_base_digest(manifest):
        return "shipped"
    if manifest.adapter.base_digest == manifest.base.source_sha256:
        return "reference"
    return None


def verify_bundle(root: str | Path) -> VerifiedBundle:
    root = Path(root).absolute()
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file() or manifest_path.is_symlink():
        raise BundleError(MANIFEST_NAME, "missing (not a bundle?)")
    try:
        raw = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(MANIFEST_NAME, f"is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise BundleError(MANIFEST_NAME, "is not a JSON object")
    if raw.get("schema_version") != SCHEMA_VERSION:
        # Older manifests do not pin everything this version serves by (v1: the system prompt); rebuild.
        raise BundleError(MANIFEST_NAME, "unsupported schema_version (rebuild the bundle with this version)",
                          str(SCHEMA_VERSION), str(raw.get("schema_version")))
    try:
        manifest = Manifest.model_validate(raw)
    except Exception as exc:  # pydantic's message lists every bad field
        raise BundleError(MANIFEST_NAME, f"does not match the manifest schema: {exc}") from None
    digest = compute_bundle_digest(manifest.model_dump(mode="json"))
    if digest != manifest.bundle_digest:
        raise BundleError(MANIFEST_NAME, "bundle_digest does not match the manifest content",
                          manifest.bundle_digest, digest)

    expected = manifest.all_files()
    present = set(list_files(root)) - {MANIFEST_NAME}
    for rel in sorted(present):
        if (root / rel).is_symlink():
            raise BundleError(rel, "is a symlink; bundles hold real files only")
        if not rel.endswith(ALLOWED_SUFFIXES):
            raise BundleError(rel, f"file type not allowed in a bundle (allowed: {', '.join(ALLOWED_SUFFIXES)})")
    _check_paths(root, expected)
    for rel in sorted(set(expected) - present):
        raise BundleError(rel, "missing")
    for rel in sorted(present - set(expected)):
        raise BundleError(rel, "not in the manifest (extra file)")

    # Cheap size check first: a truncated file is refused without hashing gigabytes.
    for rel, entry in sorted(expected.items()):
        size = (root / rel).stat().st_size
        if size != entry.size:
            raise BundleError(rel, "size changed", str(entry.size), str(size))
    actual = hash_files(root, sorted(expected))
    for rel, entry in sorted(expected.items()):
        if actual[rel] != entry.sha256:
            raise BundleError(rel, "sha256 mismatch", entry.sha256, actual[rel])

    for rel in expected:
        if rel.endswith(".json"):
            _check_config_has_no_code(root, rel)

    if adapter_trained_on(manifest) is None:
        raise BundleError("adapter/", "adapter was trained on another base", shipped_base_digest(manifest),
                          manifest.adapter.base_digest)
    template = root / "tokenizer" / "chat_template.jinja"
    if template.exists():
        got = sha256_bytes(template.read_bytes())
        if got != manifest.tokenizer.chat_template_sha256:
            raise BundleError("tokenizer/chat_template.jinja", "chat template differs from the one pinned",
                              manifest.tokenizer.chat_template_sha256, got)
    return VerifiedBundle(root=root, manifest=manifest)
