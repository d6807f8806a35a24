"""Quantization damage: the same suite, the same adapter, the base at reference precision.

The shipped bundle runs its adapter on the 4-bit base. The reference run swaps in the 16-bit
base the 4-bit one was made from (checked against the bundle's pinned base lock) and keeps
everything else: adapter, tokenizer, chat template, prompts, decoding. What differs between
the two runs is therefore what quantization did, item by item:

- delta NLL per item (shipped minus reference, nats/token; positive = the shipped model finds
  the reference answer less likely), summarised by its quantiles: damage pools in the tail.
- flips: a correctness value (the 0/1 per-item outputs the suite's scorers declare, e.g. one
  per summary field) right under the reference precision and wrong as shipped, over all
  (item, correctness metric) pairs; the reverse (wrong -> right) is reported beside it so
  noise is visible.
- per-slice deltas of the suite's headline metric and of the mean NLL.

A merged (adapter folded into the weights) variant is a different set of numbers: it would be
evaluated as its own bundle, never assumed equal to this one.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pipeline.evaluate import stats
from pipeline.files import hash_files

def check_reference_base(manifest, base_dir: str | Path) -> str:
    """The reference base must be the one the shipped base was quantized from: its lock file
    hashes to the manifest's pinned value and every file matches the lock. Returns the lock hash."""
    from pipeline.base import LOCK_NAME, check_lock

    base_dir = Path(base_dir)
    if not (base_dir / LOCK_NAME).is_file():
        raise FileNotFoundError(f"reference base {base_dir} has no {LOCK_NAME}")
    actual = hash_files(base_dir, [LOCK_NAME])[LOCK_NAME]
    if actual != manifest.base.source_sha256:
        raise ValueError(f"reference base {base_dir / LOCK_NAME}: sha256 {actual[:16]}... is not the bundle's "
                         f"pinned base {manifest.base.source_sha256[:16]}... (another base cannot be a reference)")
    check_lock(base_dir)
    return actual


def compare(shipped: list[dict], reference: list[dict], slice_names: list[str], description: str,
            headline: str, correctness: list[str], lower_is_better: bool = False) -> dict:
    """Damage statistics of shipped rows against reference rows (matched by item id). A drop is
    always a loss of quality: reference minus shipped for a higher-is-better headline, shipped
    minus reference for a lower-is-better one (an error rate, an NLL)."""
    ref = {r["id"]: r for r in reference}
    missing = [r["id"] for r in shipped if r["id"] not in ref]
    if missing:
        raise RuntimeError(f"reference run lacks items {missing[:5]}")
    metrics = sorted(correctness)
    deltas, flips, unflips, identical, pairs = [], 0, 0, 0, 0
    flipped_items = []
    for r in shipped:
        q = ref[r["id"]]
        if "nll_per_token" in r and "nll_per_token" in q and math.isfinite(r["nll_per_token"]):
            deltas.append(r["nll_per_token"] - q["nll_per_token"])
        both = [m for m in metrics if m in r and m in q]
        pairs += len(both)
        lost = [m for m in both if q[m] == 1.0 and r[m] == 0.0]
        flips += len(lost)
        unflips += sum(1 for m in both if q[m] == 0.0 and r[m] == 1.0)
        identical += r["output"] == q["output"]
        if lost:
            flipped_items.append({"id": r["id"], "slice": r["slice"], "metrics": lost})
    slices = {}
    for name in slice_names:
        s_rows = [r for r in shipped if r["slice"] == name and headline in r]
        if not s_rows:
            continue
        s_mean = float(np.mean([r[headline] for r in s_rows]))
        r_mean = float(np.mean([ref[r["id"]][headline] for r in s_rows]))
        d_nll = [r["nll_per_token"] - ref[r["id"]]["nll_per_token"] for r in s_rows
                 if "nll_per_token" in r and "nll_per_token" in ref[r["id"]]]
        slices[name] = {"n": len(s_rows), f"{headline}_shipped": s_mean, f"{headline}_reference": r_mean,
                        # positive = quantization lost quality on this slice, whichever way is better
                        f"{headline}_drop": (s_mean - r_mean) if lower_is_better else (r_mean - s_mean),
                        "delta_nll_mean": float(np.mean(d_nll)) if d_nll else None}
    out = {
        "reference": description,
        "items": len(shipped),
        "correctness_metrics": metrics,
        "flip_rate": flips / pairs if pairs else None,
        "unflip_rate": unflips / pairs if pairs else None,
        "correctness_pairs": pairs,
        "flipped_items": flipped_items,
        "identical_outputs": identical / len(shipped),
        "headline_lower_is_better": lower_is_better,
        "slices": slices,
        "worst_slice_drop": max((s[f"{headline}_drop"] for s in slices.values()), default=None),
    }
    if deltas:
        out["delta_nll_per_token"] = stats.quantiles(deltas)
    return out


def attach_reference(rows: list[dict], reference: list[dict], headline: str) -> None:
    """Put each item's output and numbers under the reference precision (the 16-bit base) beside
    the shipped ones (eval_samples), named as such: `reference_precision_*`, never to be read as
    the suite's reference answer (`gold`)."""
    ref = {r["id"]: r for r in reference}
    for r in rows:
        q = ref[r["id"]]
        r["reference_precision_output"] = q["output"]
        if headline in q:
            r[f"reference_precision_{headline}"] = q[headline]
        if "nll_per_token" in q:
            r["reference_precision_nll_per_token"] = q["nll_per_token"]
