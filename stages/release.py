"""DVC stage `release`: sign the bundle that passed the gate and push it to the release registry.

Reads params `release`, the --bundle (verified file by file), --eval, --gate (must have passed
for this bundle) and --golden, and the export stage's --exports and --exports-reports (each export
that passed its own gate is released beside the bundle, replayed on its own runtime); writes the signed release directory --out, pushes it to the
DVC remote named in params by its bundle digest, and writes --record (digest, evidence hashes,
registry location) and --card (the model card, for reading in the repository).
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline import cli
from pipeline.files import atomic_write_json, atomic_write_text
from pipeline.params import load_section
from pipeline.release.build import release
from pipeline.release.record import CARD_NAME


def main(argv=None) -> int:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--bundle", default="artifacts/bundle")
    p.add_argument("--eval", default="reports/eval.json")
    p.add_argument("--gate", default="reports/gate.json")
    p.add_argument("--golden", default="reports/golden.json")
    p.add_argument("--exports", default="artifacts/exports")
    p.add_argument("--exports-reports", default="reports/exports")
    p.add_argument("--out", default="artifacts/release")
    p.add_argument("--record", default="reports/release.json")
    p.add_argument("--card", default="reports/model_card.md")

    def body(args):
        params = load_section("release", args.params)
        record, pointer = release(params, args.bundle, args.eval, args.gate, args.golden, args.out,
                                  exports_dir=args.exports, exports_reports=args.exports_reports)
        atomic_write_json(args.record, {"record": record.model_dump(mode="json"),
                                        "registry": {"remote": params.remote, **pointer.model_dump(mode="json")}})
        atomic_write_text(args.card, (Path(args.out) / CARD_NAME).read_text(encoding="utf-8"))
        cli.log.info("released %s; serve it with: python -m serving --release %s", record.bundle_digest[:12],
                     record.bundle_digest)

    return cli.run(body, p, argv)


if __name__ == "__main__":
    sys.exit(main())
