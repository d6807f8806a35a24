"""DVC stage `evaluate`: score the exact bundle on the suite, per slice, with tails.

Reads params `evaluate`, --bundle, the suite and --reference-base (the 16-bit base, for
quantization damage); writes --report (bound to the bundle digest),
--samples (one row per item, shipped beside reference), --golden (outputs the serving parity probe replays) and
--plot (per-slice accuracy for `dvc plots show`).

It also reads the `gate` section, only to refuse before generating when a gate rule names a
metric or slice the suite cannot produce. dvc.yaml does not declare it: it never changes what
this stage writes, and declaring it would rerun the whole evaluation for a new threshold.
If scoring fails, the generated outputs are saved to --samples with `.unscored.jsonl` appended.
"""

from __future__ import annotations

import json
import sys

from pipeline import cli
from pipeline.evaluate import evaluate
from pipeline.evaluate.report import write_reports
from pipeline.params import load_section
from pipeline.report_paths import metric_names


def main(argv=None) -> int:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--bundle", default="artifacts/bundle")
    p.add_argument("--report", default="reports/eval.json")
    p.add_argument("--samples", default="reports/eval_samples.jsonl")
    p.add_argument("--golden", default="reports/golden.json")
    p.add_argument("--plots", default="reports/plots")
    p.add_argument("--metrics", default="reports/metrics/eval.json")
    p.add_argument("--reference-base", default="artifacts/base",
                   help="16-bit base the bundle's base was quantized from (quantization damage)")

    def body(args):
        params = load_section("evaluate", args.params)
        gate = load_section("gate", args.params)
        report, rows, golden = evaluate(params, args.bundle, args.reference_base, gate=gate,
                                        unscored_path=args.samples + ".unscored.jsonl")
        named = metric_names([*(r.metric for r in gate.rules), *(r.metric for r in gate.regression)])
        write_reports(report, rows, golden, args.report, args.samples, args.golden, args.plots, args.metrics, named)
        cli.log.info("evaluate: %s", json.dumps({k: round(v["mean"], 4) for k, v in report["overall"].items()}))
        cli.log.info("worst slice: %s", report["worst_slice"])

    return cli.run(body, p, argv)


if __name__ == "__main__":
    sys.exit(main())
