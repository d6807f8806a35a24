"""Run the curate filters on a cluster executor (datatrove): map over shards, then one reduce.

The same checks, params and decisions as the DVC stage (`stages/curate.py`); for the same input
the outputs are byte for byte the stage's. See docs/curate-cluster.md. Needs the `cluster` extra
(`pip install -e ".[cluster]"`).

Local (tasks run as processes on this machine):

    python examples/cluster/curate_datatrove.py --executor local --raw data/raw \
        --work-dir /tmp/curate-work --out /tmp/curated --report /tmp/curate.json --tasks 4 --workers 2

Slurm (run on the login node; submits a job array for the map and a reduce job after it):

    python examples/cluster/curate_datatrove.py --executor slurm --raw /shared/corpus \
        --tokenizer /shared/tailgate/artifacts/base --work-dir /shared/curate-work \
        --out /shared/curated --report /shared/curate.json \
        --tasks 512 --workers 64 --partition cpu --time 02:00:00 --account my-team
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: the repository's own package

from pipeline.curate.cluster import SlurmOptions, build_executors  # noqa: E402
from pipeline.params import load_section  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--executor", choices=["local", "slurm"], required=True)
    p.add_argument("--params", default=str(REPO / "params.yaml"), help="the `curate` section is used")
    p.add_argument("--raw", required=True, help="raw files (the stage's --raw); every task must see this path")
    p.add_argument("--suites", default=str(REPO / "eval_suites"))
    p.add_argument("--tokenizer", default=str(REPO / "artifacts/base"))
    p.add_argument("--work-dir", required=True,
                   help="shard files (map/) and datatrove's logging dirs (logs/map, logs/reduce): logs, stats, "
                        "completion markers; a rerun skips completed tasks")
    p.add_argument("--out", required=True, help="train/val/quarantine/meta, as the stage's --out")
    p.add_argument("--report", required=True, help="the stage's report JSON")
    p.add_argument("--tasks", type=int, default=4, help="map tasks (shards); files are dealt round-robin")
    p.add_argument("--workers", type=int, default=-1, help="map tasks running at once (-1: all)")
    s = p.add_argument_group("slurm")
    s.add_argument("--partition")
    s.add_argument("--time", default="02:00:00", help="per map task")
    s.add_argument("--cpus-per-task", type=int, default=1)
    s.add_argument("--mem-per-cpu-gb", type=int, default=2)
    s.add_argument("--reduce-time", default="04:00:00")
    s.add_argument("--reduce-mem-gb", type=int, default=16)
    s.add_argument("--qos")
    s.add_argument("--account")
    s.add_argument("--env-command", default=f"source {Path(sys.prefix) / 'bin/activate'}",
                   help="how a task activates this environment (default: this venv, same path on the nodes)")
    args = p.parse_args(argv)

    def abs_(path: str) -> str:  # tasks may start in another directory, on another node
        return str(Path(path).resolve())

    slurm = None
    if args.executor == "slurm":
        if not args.partition:
            p.error("--executor slurm needs --partition")
        slurm = SlurmOptions(partition=args.partition, time=args.time, cpus_per_task=args.cpus_per_task,
                             mem_per_cpu_gb=args.mem_per_cpu_gb, reduce_time=args.reduce_time,
                             reduce_mem_gb=args.reduce_mem_gb, qos=args.qos, env_command=args.env_command,
                             sbatch_args={"account": args.account} if args.account else {})
    params = load_section("curate", args.params)
    _, reducer = build_executors(args.executor, params, abs_(args.raw), abs_(args.suites), abs_(args.tokenizer),
                                 abs_(args.work_dir), abs_(args.out), abs_(args.report), tasks=args.tasks,
                                 workers=args.workers, slurm=slurm)
    reducer.run()  # runs (local) or submits (slurm) the map first: the reduce depends on it
    return 0


if __name__ == "__main__":
    sys.exit(main())
