"""DVC stage `curate`: validate, scrub, filter, deduplicate and decontaminate raw records into train/val.

Reads params `curate`, --raw (JSONL, Parquet, CSV), --suites, --tokenizer; writes --out
(train/val/quarantine/meta), --report (JSON, and a markdown page beside it), --metrics and the
length histograms under --plots. The reports are written even when the quarantine share or a
slice's loss fails the stage (exit 1, the reasons in the message), so the page shows why.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline import cli
from pipeline.curate import CurationFailed, curate
from pipeline.curate.render import write_reports
from pipeline.params import load_section


def main(argv=None) -> int:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--raw", default="data/raw")
    p.add_argument("--suites", default="eval_suites")
    p.add_argument("--tokenizer", default="artifacts/base")
    p.add_argument("--out", default="data/curated")
    p.add_argument("--report", default="reports/curate.json")
    p.add_argument("--metrics", default="reports/metrics/curate.json")
    p.add_argument("--plots", help="length histograms (CSV, PNG); default: plots/ beside --report")

    def body(args):
        params = load_section("curate", args.params)
        plots = args.plots or str(Path(args.report).parent / "plots")
        try:
            report = curate(params, args.raw, args.suites, args.tokenizer, args.out)
        except CurationFailed as exc:
            write_reports(exc.report, args.report, None, plots)
            raise
        write_reports(report, args.report, args.metrics, plots)
        cli.log.info("curate: %d lines -> %d kept (train %d, val %d of which %d topped up for slices the draw left "
                     "short), %d quarantined (%d eval items leaked)", report["input_lines"], report["kept"],
                     report["splits"]["train"]["total"], report["splits"]["val"]["total"],
                     report["validation"]["topped_up"], report["rejected"], len(report["leaked_eval_items"]))

    return cli.run(body, p, argv)


if __name__ == "__main__":
    sys.exit(main())
