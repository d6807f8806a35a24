"""DVC stage `gate`: apply the release rules; exit non-zero when the release fails.

Reads params `gate` (the registry and key the baseline is looked up with among them), --report,
--samples (its per-item scores), the --bundle (verified file by file) and the baseline
(pipeline/gate/baseline.py); writes --out (gate.json) and --summary (gate.md). On failure it
also replaces the files named by --supersedes (the last release's record and card) with a
not-released record.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline import cli
from pipeline.files import atomic_write_json, atomic_write_text
from pipeline.gate import render_markdown, run_gate
from pipeline.gate.supersede import mark_not_released
from pipeline.params import load_section


def main(argv=None) -> int:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--report", default="reports/eval.json")
    p.add_argument("--bundle", default="artifacts/bundle")
    p.add_argument("--out", default="reports/gate.json")
    p.add_argument("--summary", default="reports/gate.md")
    p.add_argument("--metrics", default="reports/metrics/gate.json")
    p.add_argument("--samples", default=None, help="per-item scores (default: eval_samples.jsonl beside --report)")
    p.add_argument("--baseline-cache", default=None,
                   help="evidence of baseline releases read before (default: .tailgate/cache/gate_baselines "
                        "beside --params)")
    p.add_argument("--supersedes", nargs="*", default=[],
                   help="the release stage's reports (release.json, model_card.md): replaced by a not-released "
                        "record when the gate fails, so the last release's card is not read as this run's")

    def body(args):
        params = load_section("gate", args.params)
        root = Path(args.params).absolute().parent  # where gate.registry resolves (.dvc/config)
        decision = run_gate(params, args.report, args.bundle, repo_root=root,
                            samples_path=args.samples or Path(args.report).with_name("eval_samples.jsonl"),
                            cache_dir=args.baseline_cache or root / ".tailgate/cache/gate_baselines")
        atomic_write_json(args.out, decision)
        atomic_write_text(args.summary, render_markdown(decision))
        atomic_write_json(args.metrics, {"passed": decision["passed"], "failed_rules": len(decision["failed"]),
                                         "rules": len(decision["rules"])})
        if not decision["passed"]:
            for path in mark_not_released(args.supersedes, decision, args.summary):
                cli.log.warning("gate failed: %s now says this bundle was not released", path)
            cli.log.error("gate FAILED: %s (see %s)", ", ".join(decision["failed"]), args.summary)
            return 1
        cli.log.info("gate passed: %d rules", len(decision["rules"]))

    return cli.run(body, p, argv)


if __name__ == "__main__":
    sys.exit(main())
