"""Run every benchmark, one after another, and write benchmarks/RESULTS.md from what they measured.

    python -m benchmarks                       # all of them (make bench), then the page
    python -m benchmarks --only verify,curate  # a subset; the others keep their last results
    python -m benchmarks --render-only         # the page from benchmarks/results/*.json, nothing run
    python -m benchmarks --quick --results-dir /tmp/bench   # smoke sizes, somewhere else

Each benchmark is a subprocess (`python -m benchmarks.NAME --out results/NAME.json`), never two
at once: they time the same cores. Its old result file is removed first, so a result on the page
is always one the last run of that benchmark wrote. The runner records, per benchmark, the
command, its exit code, wall time, load average before and after, and why it was skipped, in
results/run.json; the page is rendered from results/*.json alone (benchmarks/page.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

from benchmarks import machine, write_result
from benchmarks.page import RUN_RECORD, render
from benchmarks.suite import BENCHMARKS, NAMES, REPO, by_name, plan

TAIL_LINES = 40


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _git(*args: str) -> str:
    out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else ""


def _memory_gib() -> float | None:
    try:
        kib = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal:"))
    except (OSError, StopIteration):
        return None
    return round(kib / 2 ** 20, 1)


def _rel(path: Path) -> str:
    """Relative to the repository root where it lies inside (absolute, not resolved: a venv's
    python is a symlink out of the repository and must stay the venv's)."""
    path = Path(os.path.abspath(path))
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def run_one(name: str, results: Path, quick: bool, logs: Path) -> dict:
    bench = by_name(name)
    how = plan(bench)
    entry = {"started_at": _now(), "notes": how.notes}
    if how.skip_reason:
        print(f"== {name}: skipped: {how.skip_reason}", file=sys.stderr, flush=True)
        return {**entry, "status": "skipped", "reason": how.skip_reason}
    out = results / bench.result_file
    out.unlink(missing_ok=True)  # whatever is there afterwards, this run wrote
    args = list(bench.quick_args if quick else bench.full_args)
    cmd = [how.python, "-m", bench.module, *args, "--out", _rel(out)]
    # The command as a user retypes it from the repository root.
    python = _rel(Path(how.python))
    shown = [python if not os.path.isabs(python) else "python", *cmd[1:]]
    print(f"== {name}: {' '.join(shown)}", file=sys.stderr, flush=True)
    env = {**os.environ, "PATH": f"{Path(how.python).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    load_before, t0 = _load(), time.perf_counter()
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:  # echoed and kept: progress for people, the tail for the record
            sys.stderr.write(line)
            log.write(line)
            tail.append(line.rstrip("\n"))
        rc = proc.wait()
    wall = time.perf_counter() - t0
    entry.update(command=" ".join(shown), python=how.python, profile="quick" if quick else "full", rc=rc,
                 wall_s=round(wall, 1), load_avg_before=load_before, load_avg_after=_load())
    written = json.loads(out.read_text()) if out.exists() else None
    if written is None:
        entry.update(status="failed", reason=f"exited with {rc} and wrote no result", tail=list(tail))
    elif written.get("skipped"):
        entry.update(status="skipped", reason=written.get("reason", "the benchmark skipped itself"))
    else:
        # A non-zero exit with a result is the benchmark's own verdict (a missed target), not a crash.
        entry["status"] = "ok" if rc == 0 else "ran, exit code != 0"
        if rc:
            entry["tail"] = list(tail)[-10:]
    print(f"== {name}: {entry['status']} in {wall:.0f} s", file=sys.stderr, flush=True)
    return entry


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help=f"comma-separated subset of: {','.join(NAMES)}")
    ap.add_argument("--render-only", action="store_true", help="write the page from existing results, run nothing")
    ap.add_argument("--quick", action="store_true", help="smoke sizes (seconds, not comparable); use --results-dir")
    ap.add_argument("--results-dir", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--page", default=None, help="default: RESULTS.md beside results/ (benchmarks/RESULTS.md)")
    ap.add_argument("--list", action="store_true", help="print the benchmarks and whether each can run here")
    args = ap.parse_args(argv)
    results = Path(args.results_dir).resolve()
    page = Path(args.page) if args.page else results.parent / "RESULTS.md"
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(NAMES)
    for n in names:
        by_name(n)  # unknown names fail before anything runs
    if args.list:
        for b in BENCHMARKS:
            how = plan(b)
            print(f"{b.name:20} {'SKIP: ' + how.skip_reason if how.skip_reason else 'runs with ' + how.python}"
                  + "".join(f"\n{'':20} {n}" for n in how.notes))
        return 0
    if not args.render_only:
        record_path = results / RUN_RECORD
        record = json.loads(record_path.read_text()) if record_path.exists() else {}
        run_id = _now()
        run = {"run_id": run_id, "started_at": run_id, "commit": _git("rev-parse", "HEAD"),
               "dirty_paths": len([x for x in _git("status", "--porcelain").splitlines() if x.strip()]),
               "only": names if args.only else None, "profile": "quick" if args.quick else "full",
               "command": " ".join(["python -m benchmarks", *(argv if argv is not None else sys.argv[1:])]),
               "machine": {**machine(), "memory_gib": _memory_gib()}, "load_avg_before": _load()}
        t0 = time.perf_counter()
        benches = record.get("benchmarks", {})
        for n in names:
            benches[n] = {**run_one(n, results, args.quick, results / "logs"), "run_id": run_id}
            # written after every benchmark: an interrupted run keeps what it measured
            live = {b.get("run_id") for b in benches.values()}  # runs no benchmark's result comes from are dropped
            runs = {k: v for k, v in record.get("runs", {}).items() if k in live}
            run.update(total_wall_s=round(time.perf_counter() - t0, 1), load_avg_after=_load(), finished_at=_now())
            write_result(record_path, {"runs": {**runs, run_id: run}, "benchmarks": benches})
    page.write_text(render(results))
    print(f"wrote {page}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
