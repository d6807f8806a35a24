"""No-op `dvc repro`: seconds to find out that nothing needs to run, against `dvc status`.

A team runs `dvc repro` after every edit; when nothing it depends on changed, it should cost
about what asking (`dvc status`) costs. Both are timed on the repository as it is, alternating
(status, repro, status, repro, ...) after one untimed pass of each (DVC's state database and
the page cache warm), median of --reps. `dvc --version` is timed too: the floor every dvc
command pays to start Python and import DVC.

Only a pipeline that is already up to date is timed (a stage DVC reruns on every repro by design,
`always_changed`, is part of the no-op's cost). When `dvc status` reports anything else stale
(before the first rep or before any later one) nothing is reproduced: the result records what
was stale and why it was not timed, since a "no-op" repro would then rebuild real stages. After
the run, dvc.lock must be byte-identical: a no-op repro that rewrote it would not be a no-op.

    python -m benchmarks.noop_repro [--reps 5] [--repo .]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import machine, write_result


class Stale(RuntimeError):
    """dvc status reported something to do: timing a repro would run real stages."""


def _env() -> dict:
    # The venv's bin first: dvc and the `python` its stage commands name are this interpreter's.
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def _dvc() -> str:
    found = shutil.which("dvc", path=_env()["PATH"])
    if found is None:
        raise SystemExit("dvc is not installed in this environment (pip install -e '.[dev]')")
    return found


def timed(cmd: list[str], repo: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=repo, env=_env(), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited with {out.returncode}: {(out.stderr or out.stdout)[-2000:]}")
    return wall, out.stdout


def status(dvc: str, repo: Path) -> float:
    """Time `dvc status --json`; raise Stale when it lists anything but a stage that runs on every
    repro by design (`always_changed`: the gate, which asks the registry for its baseline). Such a
    stage is part of what a no-op repro costs."""
    wall, out = timed([dvc, "status", "--json"], repo)
    stale = {k: v for k, v in json.loads(out or "{}").items() if v != ["always changed"]}
    if stale:
        raise Stale(json.dumps(stale)[:2000])
    return wall


def _sha(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--repo", default=".", help="the DVC repository (default: this one)")
    ap.add_argument("--out", default="benchmarks/results/noop_repro.json")
    args = ap.parse_args(argv)
    repo = Path(args.repo).resolve()
    dvc = _dvc()
    lock_before = _sha(repo / "dvc.lock")
    result = {"benchmark": "noop_repro", "repo": str(repo), "reps": args.reps,
              "dvc_version": timed([dvc, "--version"], repo)[1].strip(),
              "machine": {**machine(), "load_avg_before": [round(x, 2) for x in os.getloadavg()]}}
    times = {"version": [], "status": [], "repro": []}
    try:
        status(dvc, repo)  # untimed: warms DVC's state database, and refuses a stale pipeline
        repro_out = timed([dvc, "repro"], repo)[1]
        for _ in range(args.reps):
            times["version"].append(timed([dvc, "--version"], repo)[0])
            times["status"].append(status(dvc, repo))  # also the check that the next repro is a no-op
            times["repro"].append(timed([dvc, "repro"], repo)[0])
    except Stale as e:
        result.update(skipped=True, reason=f"dvc status reports stale stages, so `dvc repro` would run them "
                                           f"instead of being timed as a no-op: {e}")
        write_result(args.out, result)
        print(result["reason"], file=sys.stderr)
        return 0
    result["machine"]["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    med = {k: statistics.median(v) for k, v in times.items()}
    result.update({
        "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "median_s": {k: round(v, 3) for k, v in med.items()},
        "repro_over_status": round(med["repro"] / med["status"], 3),
        "repro_over_version": round(med["repro"] / med["version"], 3),
        "repro_said": repro_out.strip().splitlines()[-1] if repro_out.strip() else "",
        "stages": sum(1 for line in repro_out.splitlines() if "didn't change, skipping" in line),
        "dvc_lock_unchanged": _sha(repo / "dvc.lock") == lock_before,
    })
    write_result(args.out, result)
    print(f"no-op dvc repro {med['repro']:.2f} s, dvc status {med['status']:.2f} s "
          f"({result['repro_over_status']}x), dvc --version {med['version']:.2f} s; "
          f"dvc.lock unchanged: {result['dvc_lock_unchanged']}")
    return 0 if result["dvc_lock_unchanged"] else 1


if __name__ == "__main__":
    sys.exit(main())
