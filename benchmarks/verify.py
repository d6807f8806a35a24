"""Bundle verification against `sha256sum` on the same files: throughput as a ratio in one run.

`verify_bundle` does everything serving does before it loads a bundle: parse and validate the
manifest, recompute the bundle digest, refuse symlinks, foreign file types and extra or missing
files, compare sizes, re-hash every file (in parallel threads: hashlib releases the GIL) and
check the configs and the chat template. `sha256sum` only hashes, one file after another, and
is the bar: verification must be at least as fast while doing more.

Both read the same files from a warm page cache (one untimed pass of each first), alternating
(ours, sha256sum, ours, ...) so load from neighbours hits both; medians are reported. Needs
`dvc repro bundle` first (or --bundle DIR).

    python -m benchmarks.verify [--bundle artifacts/bundle] [--reps 7]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import load_avg, machine, write_result
from pipeline.bundle.manifest import MANIFEST_NAME, Manifest
from pipeline.bundle.verify import verify_bundle
from pipeline.files import read_json


def bundle_files(root: Path) -> list[Path]:
    """Every file the manifest pins, plus the manifest itself."""
    manifest = Manifest.model_validate(read_json(root / MANIFEST_NAME))
    return [root / rel for rel in sorted(manifest.all_files())] + [root / MANIFEST_NAME]


def time_ours(root: Path) -> float:
    t0 = time.perf_counter()
    verify_bundle(root)
    return time.perf_counter() - t0


def time_sha256sum(files: list[Path]) -> float:
    t0 = time.perf_counter()
    subprocess.run(["sha256sum", *map(str, files)], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default="artifacts/bundle")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out", default="benchmarks/results/verify.json")
    args = ap.parse_args(argv)
    if shutil.which("sha256sum") is None:
        raise SystemExit("sha256sum (coreutils) is not on PATH")
    root = Path(args.bundle).absolute()
    files = bundle_files(root)
    total_mb = sum(f.stat().st_size for f in files) / 1e6
    time_ours(root), time_sha256sum(files)  # warm the page cache for both
    load_before = load_avg()
    ours, theirs = [], []
    for _ in range(args.reps):
        ours.append(time_ours(root))
        theirs.append(time_sha256sum(files))
    med_ours, med_theirs = statistics.median(ours), statistics.median(theirs)
    result = {
        "benchmark": "verify",
        "machine": {**machine(), "load_avg_before": load_before, "load_avg_after": load_avg()},
        "bundle": str(args.bundle),
        "files": len(files),
        "largest_file_mb": round(max(f.stat().st_size for f in files) / 1e6, 1),
        "total_mb": round(total_mb, 1),
        "reps": args.reps,
        "verify_bundle_s": [round(x, 4) for x in ours],
        "sha256sum_s": [round(x, 4) for x in theirs],
        "median_verify_bundle_s": round(med_ours, 4),
        "median_sha256sum_s": round(med_theirs, 4),
        "verify_mb_per_s": round(total_mb / med_ours, 1),
        "sha256sum_mb_per_s": round(total_mb / med_theirs, 1),
        "throughput_ratio": round(med_theirs / med_ours, 3),
        "goal": "verification at least as fast as sha256sum on the same files (ratio >= 1)",
    }
    result["meets_goal"] = result["throughput_ratio"] >= 1.0
    write_result(args.out, result)
    print(f"verify_bundle {result['verify_mb_per_s']} MB/s vs sha256sum {result['sha256sum_mb_per_s']} MB/s "
          f"on {len(files)} files, {result['total_mb']} MB: {result['throughput_ratio']}x")
    return 0 if result["meets_goal"] else 1


if __name__ == "__main__":
    sys.exit(main())
