"""Inputs of the release stage for a tiny bundle, shared by the release and serving tests.

The evaluation report is the repository's committed reports/eval.json re-bound to the tiny
bundle (so the model card renders a real report's structure); the gate decision comes from the
real gate function over it, so a release is only ever made from a decision the gate produced.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.bundle.verify import verify_bundle
from pipeline.gate import decide
from pipeline.params import GateParams, ReleaseParams
from tests.conftest import REPO


def make_evidence(bundle_dir: Path, out: Path, golden: Path | None = None, **gate_overrides) -> dict[str, Path]:
    manifest = verify_bundle(bundle_dir).manifest
    report = json.loads((REPO / "reports/eval.json").read_text())
    report["bundle_digest"] = manifest.bundle_digest
    report["bundle"]["chat_template_sha256"] = manifest.tokenizer.chat_template_sha256
    decision = decide(GateParams(**gate_overrides), report, manifest.bundle_digest,
                      chat_template_sha256=manifest.tokenizer.chat_template_sha256)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"eval": out / "eval.json", "gate": out / "gate.json", "golden": out / "golden.json"}
    paths["eval"].write_text(json.dumps(report))
    paths["gate"].write_text(json.dumps(decision))
    if golden is not None:
        paths["golden"].write_bytes(golden.read_bytes())
    else:
        paths["golden"].write_text(json.dumps({"bundle_digest": manifest.bundle_digest, "engine": "hf",
                                               "prompts": []}))
    return paths


def release_params(tmp: Path, **signing) -> ReleaseParams:
    """Params that release into a registry and sign with keys under tmp."""
    return ReleaseParams(remote=str(tmp / "registry"),
                         signing={"private_key": str(tmp / "keys/release.key"),
                                  "public_key": str(tmp / "keys/release.pub"), **signing},
                         card={"base_model": "tiny/llama-test", "license": "apache-2.0", "language": ["en"]})
