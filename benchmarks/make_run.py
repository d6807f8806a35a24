"""`make run`, stage by stage: the wall time of each stage of one real `dvc repro`.

    python -m benchmarks.make_run --out benchmarks/results/make_run.json [--force] [STAGE ...]

Runs `dvc repro` (with `--force`: every stage, as a fresh clone's `make run` does) with the
project's python first on PATH, streams DVC's output, and times each stage from its
"Running stage" line to the next one (or the end): the stage's command plus DVC's hashing and
caching of its outputs, which is what a user waits for. Stages DVC skipped are listed as such.
The result records the commit, the load average before and after, the bundle digest built and
whether `dvc status` was clean afterwards (a stage DVC reruns on every repro by design,
`always_changed`, aside).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import load_avg, machine, write_result
from benchmarks.noop_repro import _dvc, _env

RUNNING = re.compile(r"^Running stage '([^']+)'")
SKIPPED = re.compile(r"^Stage '([^']+)' didn't change, skipping")


def run(repo: Path, force: bool, targets: list[str]) -> dict:
    cmd = [_dvc(), "repro", *(["--force"] if force else []), *targets]
    stages: dict[str, float] = {}
    skipped: list[str] = []
    current, since = None, None
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=repo, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1)
    tail: list[str] = []
    for line in proc.stdout:
        sys.stdout.write(line)
        tail = (tail + [line])[-40:]
        now = time.perf_counter()
        if m := RUNNING.match(line):
            if current is not None:
                stages[current] = round(now - since, 1)
            current, since = m.group(1), now
        elif m := SKIPPED.match(line):
            skipped.append(m.group(1))
    rc = proc.wait()
    end = time.perf_counter()
    if current is not None:
        stages[current] = round(end - since, 1)
    if rc:
        raise RuntimeError(f"dvc repro exited with {rc}: {''.join(tail)[-3000:]}")
    status = json.loads(subprocess.run([_dvc(), "status", "--json"], cwd=repo, env=_env(), capture_output=True,
                                       text=True, check=True).stdout or "{}")
    always = {name for name, spec in _stages(repo).items() if spec.get("always_changed")}
    manifest = repo / "artifacts/bundle/manifest.json"
    return {"command": " ".join(["dvc", *cmd[1:]]), "forced": force, "stages_wall_s": stages, "skipped": skipped,
            "total_wall_s": round(end - t0, 1), "stale_after": sorted(set(status) - always),
            "bundle_digest": json.loads(manifest.read_text())["bundle_digest"] if manifest.exists() else None}


def _stages(repo: Path) -> dict:
    import yaml

    return yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.make_run", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--repo", default=".")
    p.add_argument("--force", action="store_true", help="rerun every stage (a fresh clone's make run)")
    p.add_argument("targets", nargs="*")
    args = p.parse_args(argv)
    repo = Path(args.repo).resolve()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True).stdout
    record = {"machine": machine(), "cpus": os.cpu_count(), "commit": commit, "dirty_paths": len(dirty.splitlines()),
              "load_avg_before": load_avg()}
    record.update(run(repo, args.force, args.targets))
    record["load_avg_after"] = load_avg()
    write_result(args.out, record)
    print(json.dumps({k: record[k] for k in ("stages_wall_s", "total_wall_s", "stale_after")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
