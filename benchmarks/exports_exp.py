"""The default task's exports through DVC itself: `dvc exp run` with the export params turned on,
read back with `dvc exp show` beside the workspace's own run.

    python -m benchmarks.exports_exp --out benchmarks/results/exports_exp.json [--gguf-types q8_0]

Runs `dvc exp run --temp -S export.merged=true -S 'export.gguf=[q8_0]'`: DVC copies the committed
pipeline to a temporary workspace, finds every stage up to the bundle's evaluation unchanged (the
cache holds their outputs), and runs the export stage, the gate and the release there (its release
goes to that copy's own registry, signed with a key made there: the workspace, its registry and
its key are untouched). Then `dvc exp show --json` gives, for the experiment and for the
workspace's baseline, the params each ran with and every metric `dvc metrics show` reads
(reports/metrics/*.json, the exports' among them). The experiment is removed afterwards
(`dvc exp remove`); this file keeps what it showed.

benchmarks/release_exports.py measures the same two stages through their functions (the card,
the replays, the files released); this one is the user's path through DVC.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NAME = "tailgate-exports"
SHOWN = ("reports/metrics/exports.json", "reports/metrics/eval.json", "reports/metrics/gate.json")


def _dvc(*args: str, timeout: float = 3600) -> subprocess.CompletedProcess:
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    return subprocess.run([str(bin_dir / "dvc"), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _entries(tree, out: list[dict]) -> list[dict]:
    """Every revision record `dvc exp show --json` holds (the baseline's and each experiment's),
    wherever its nesting puts it: a dict with `rev` and `data`."""
    if isinstance(tree, dict):
        if "rev" in tree and isinstance(tree.get("data"), dict):
            out.append(tree)
        for v in tree.values():
            _entries(v, out)
    elif isinstance(tree, list):
        for v in tree:
            _entries(v, out)
    return out


def _shown(entry: dict) -> dict:
    """The params of the export section and the metrics files SHOWN, as DVC shows them."""
    data = entry["data"]
    params = (data.get("params") or {}).get("params.yaml", {}).get("data", {})
    metrics = data.get("metrics") or {}
    return {"name": entry.get("name"), "rev": entry.get("rev"),
            "params_export": params.get("export"),
            "metrics": {path: (metrics.get(path) or {}).get("data") for path in SHOWN}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.exports_exp", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--gguf-types", default="q8_0", help="comma-separated; empty for none")
    args = p.parse_args(argv)
    from benchmarks import load_avg, machine, write_result

    types = [t for t in args.gguf_types.split(",") if t]
    sets = ["-S", "export.merged=true", "-S", f"export.gguf=[{','.join(types)}]"]
    _dvc("exp", "remove", NAME)  # a leftover of an interrupted run
    before = load_avg()
    t0 = time.perf_counter()
    run = _dvc("exp", "run", "--temp", "--name", NAME, *sets)
    wall = time.perf_counter() - t0
    after = load_avg()
    if run.returncode:
        raise SystemExit(f"dvc exp run failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    ran = sorted({line.split("'")[1] for line in run.stdout.splitlines() if line.startswith("Running stage '")})
    skipped = sorted({line.split("'")[1] for line in run.stdout.splitlines()
                      if line.startswith("Stage '") and "didn't change" in line})
    show = _dvc("exp", "show", "--json")
    if show.returncode:
        raise SystemExit(f"dvc exp show failed: {show.stderr[-2000:]}")
    entries = _entries(json.loads(show.stdout), [])
    exp = next((e for e in entries if e.get("name") == NAME), None)
    base = next((e for e in entries if e.get("rev") == "workspace"), None)
    if exp is None or base is None:
        raise SystemExit(f"dvc exp show did not list {NAME} beside the workspace")
    result = {"machine": machine(), "load_avg_before": before, "load_avg_after": after,
              "command": "dvc exp run --temp " + " ".join(sets), "wall_s": round(wall, 1),
              "stages_ran": ran, "stages_skipped": skipped,
              "experiment": _shown(exp), "workspace": _shown(base)}
    _dvc("exp", "remove", NAME)
    write_result(args.out, result)
    print(json.dumps({k: result[k] for k in ("wall_s", "stages_ran", "stages_skipped")}))
    return 0


def page(r: dict) -> tuple[list[tuple[str, str, str, str]], list[str]]:
    """RESULTS.md's headline rows and section: what `dvc exp show` compared."""
    exp = r["experiment"]["metrics"]["reports/metrics/exports.json"] or {}  # {configuration: numbers}
    rows = [(f"dvc exp run with export {name}: gate", "passed" if c.get("gate_passed") else "refused",
             "passed", "pass" if c.get("gate_passed") else "FAIL") for name, c in sorted(exp.items())]
    lines = [f"`{r['command']}`: {r['wall_s']:g} s; stages run {', '.join(r['stages_ran'])}; unchanged "
             f"{', '.join(r['stages_skipped'])}. Load average {r['load_avg_before']} before, "
             f"{r['load_avg_after']} after.",
             "", "```json", json.dumps(exp, indent=1, sort_keys=True), "```"]
    return rows, lines


if __name__ == "__main__":
    sys.exit(main())
