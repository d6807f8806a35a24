"""DVC stage `export`: write the exports params ask for, evaluate each on the bundle's suite, gate it.

Reads params `export` (what to write, the export rules) and, because an export is evaluated and
gated exactly as the bundle was, `evaluate` and `gate`; the bundle and its own evaluation
(--eval, --samples). Writes each export to --out/<name>, its evaluation and gate decision to
--reports/<name>, and a summary of every configuration (also --metrics). Off by default: then it
records that nothing was asked for. A refused export does not fail the stage (it is recorded as
refused and never shipped); a failure to write or evaluate one does.
"""

from __future__ import annotations

import sys

from pipeline import cli
from pipeline.export.run import export_all, metrics
from pipeline.files import atomic_write_json
from pipeline.params import load_section


def main(argv=None) -> int:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--bundle", default="artifacts/bundle")
    p.add_argument("--eval", default="reports/eval.json")
    p.add_argument("--samples", default="reports/eval_samples.jsonl")
    p.add_argument("--out", default="artifacts/exports")
    p.add_argument("--reports", default="reports/exports")
    p.add_argument("--metrics", default="reports/metrics/exports.json")

    def body(args):
        summary = export_all(load_section("export", args.params), load_section("evaluate", args.params),
                             load_section("gate", args.params), args.bundle, args.eval, args.samples,
                             args.out, args.reports)
        atomic_write_json(args.metrics, metrics(summary))
        refused = [n for n, c in summary["configurations"].items() if not c["gate_passed"]]
        if refused:
            cli.log.warning("exports refused by the gate (kept, recorded, never shipped): %s", ", ".join(refused))

    return cli.run(body, p, argv)


if __name__ == "__main__":
    sys.exit(main())
