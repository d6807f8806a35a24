"""DVC stage `curate`: validate, scrub, filter, deduplicate and decontaminate raw records into train/val.

Reads params `curate`, --raw (JSONL, Parquet, CSV), --suites, --tokenizer; writes --out
(train/val/quarantine/meta), --report and --metrics. The report is written even when the
quarantine share fails the stage (exit 1, the reasons in the message).
"""

from __future__ import annotations

import sys

from pipeline import cli
from pipeline.curate import QuarantineTooLarge, curate
from pipeline.files import atomic_write_json
from pipeline.params import load_section


def main(argv=None) -> int:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--raw", default="data/raw")
    p.add_argument("--suites", default="eval_suites")
    p.add_argument("--tokenizer", default="artifacts/base")
    p.add_argument("--out", default="data/curated")
    p.add_argument("--report", default="reports/curate.json")
    p.add_argument("--metrics", default="reports/metrics/curate.json")

    def body(args):
        params = load_section("curate", args.params)
        try:
            report = curate(params, args.raw, args.suites, args.tokenizer, args.out)
        except QuarantineTooLarge as exc:
            atomic_write_json(args.report, exc.report)
            raise
        atomic_write_json(args.report, report)
        atomic_write_json(args.metrics, {k: report[k] for k in ("input_lines", "kept", "rejected",
                                                                "quarantine_fraction", "reasons", "repairs")})
        cli.log.info("curate: %d lines -> %d kept (train %d, val %d), %d quarantined", report["input_lines"],
                     report["kept"], report["splits"]["train"]["total"], report["splits"]["val"]["total"],
                     report["rejected"])

    return cli.run(body, p, argv)


if __name__ == "__main__":
    sys.exit(main())
