"""bundle diff lists every pinned difference, and nothing when the bundles pin the same model."""

from __future__ import annotations

import json

from pipeline.bundle.diff import diff_manifests, main
from pipeline.bundle.manifest import MANIFEST_NAME, compute_bundle_digest


def test_same_bundle_has_no_differences(tiny_pipeline, bundle_copy, capsys):
    assert main([str(tiny_pipeline["bundle"]), str(bundle_copy)]) == 0
    assert "no pinned differences" in capsys.readouterr().out


def test_configuration_differences_are_listed(tiny_pipeline, bundle_copy, capsys):
    raw = json.loads((bundle_copy / MANIFEST_NAME).read_text())
    raw["inference"]["max_context_tokens"] = 512
    raw["provenance"]["versions"]["transformers"] = "0.0.0"
    raw["quantization"]["compute_dtype"] = "float32"
    raw["bundle_digest"] = compute_bundle_digest(raw)
    (bundle_copy / MANIFEST_NAME).write_text(json.dumps(raw))
    assert main([str(tiny_pipeline["bundle"]), str(bundle_copy)]) == 1
    out = capsys.readouterr().out
    for path in ("inference.max_context_tokens", "provenance.versions.transformers", "quantization.compute_dtype"):
        assert path in out
    assert "3 pinned difference(s)" in out


def test_build_details_are_not_differences_unless_asked():
    a = {"built": {"host": "a"}, "inference": {"max_context_tokens": 1}}
    b = {"built": {"host": "b"}, "inference": {"max_context_tokens": 1}}
    assert diff_manifests(a, b) == []
    assert diff_manifests(a, b, include_build=True) == [("built.host", "a", "b")]


def test_tampered_bundle_is_not_diffed(tiny_pipeline, bundle_copy):
    (bundle_copy / "adapter/adapter_config.json").write_text("{}")
    assert main([str(tiny_pipeline["bundle"]), str(bundle_copy)]) == 2
