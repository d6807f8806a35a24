"""The gate stage's work: gather what the rules judge, then decide (decide.py).

Reads the bundle (verified file by file), the eval report, its per-item scores and the baseline
(baseline.py); a bundle that fails verification, a missing report or samples that are not the
report's become failing rules, never a traceback, so gate.json always says why.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.bundle.verify import BundleError, verify_bundle
from pipeline.files import read_json
from pipeline.gate.baseline import resolve
from pipeline.gate.decide import decide
from pipeline.gate.items import ItemScoresError, read_samples
from pipeline.params import GateParams

log = logging.getLogger(__name__)


def run_gate(params: GateParams, report_path: str | Path, bundle_dir: str | Path, *, samples_path: str | Path,
             repo_root: str | Path, cache_dir: str | Path) -> dict:
    """The gate decision for the bundle. repo_root is where `params.registry` resolves (its
    .dvc/config) and relative key paths start; cache_dir keeps baseline releases' evidence."""
    digest = template = error = None
    try:
        manifest = verify_bundle(bundle_dir).manifest
        digest, template = manifest.bundle_digest, manifest.tokenizer.chat_template_sha256
    except (BundleError, FileNotFoundError) as exc:
        error = str(exc)
    report = read_json(report_path) if Path(report_path).exists() else {}
    items = items_error = None
    if Path(samples_path).is_file():
        try:
            items = read_samples(samples_path, report)
        except ItemScoresError as exc:
            items_error = str(exc)
    root = Path(repo_root)
    key = root / params.registry_public_key if params.registry_public_key else None
    baseline = resolve(params, digest, report.get("suite") or {}, remote=params.registry, repo_root=root,
                       cache_dir=cache_dir, public_key=key)
    log.info("baseline: %s", baseline.describe()["note"] or baseline.bundle_digest)
    return decide(params, report, digest, chat_template_sha256=template, bundle_error=error, baseline=baseline,
                  items=items, items_error=items_error)
