"""Inputs of the release stage for a tiny bundle, shared by the release and serving tests.

The evaluation report is a fixed copy of a real default report (tests/data/gate_v1/eval.json) re-bound to the tiny
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


# A fixed copy of a real default report (tests/data/gate_v1); `dvc repro` never rewrites it.
REPORT = REPO / "tests/data/gate_v1/eval.json"
RULES = [{"metric": "overall.field_accuracy", "min": 0.0}]


def make_evidence(bundle_dir: Path, out: Path, golden: Path | None = None, rules: list | None = None) -> dict[str, Path]:
    manifest = verify_bundle(bundle_dir).manifest
    report = json.loads(REPORT.read_text())
    report["bundle_digest"] = manifest.bundle_digest
    report["bundle"]["chat_template_sha256"] = manifest.tokenizer.chat_template_sha256
    # The tiny bundle is evaluated and served by today's engine, which is batch-invariant (the
    # v1 report predates the field).
    report["engine"]["batch_invariant"] = True
    # ... and ran the whole suite (160 of 160 items), which the v1 report does not yet say.
    report["suite"].setdefault("suite_items", report["suite"]["items"])
    decision = decide(GateParams(rules=RULES if rules is None else rules), report, manifest.bundle_digest,
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
