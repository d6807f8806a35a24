"""The default bundle released with its exports beside it: the export and release stages on the
default task with exports asked for, into a scratch registry.

    python -m benchmarks.release_exports --out benchmarks/results/release_exports.json [--gguf-types q8_0]

Runs the export stage's own function (pipeline/export/run.py) with params.yaml's `evaluate`, `gate`
and `export` sections plus `merged: true` and `gguf: [--gguf-types]`, then the release stage's own
function (pipeline/release/build.py) on the bundle, its evaluation and those exports, with
params.yaml's `release` section pointed at a temporary registry and a temporary signing key: the
repository's artifacts, reports and registry are not touched. The same run as
`dvc exp run -S export.merged=true -S 'export.gguf=[q8_0]'`, without changing the workspace.

Recorded: what `dvc metrics show` reads for the exports (reports/metrics/exports.json), the
release record's entry for each export, each replay (the bundle's and each export's: items
identical, concurrency, wall time, generated tokens per second), the card's Configurations
section, the release opened again with its signature, and each stage's wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def _replay(path: Path) -> dict | None:
    if not path.is_file():
        return None
    r = json.loads(path.read_text(encoding="utf-8"))
    tokens = sum(i.get("served_tokens") or 0 for i in r["per_item"])
    return {"items": r["items"], "identical": r["identical"], "different": r["different"],
            "concurrency": r["concurrency"], "wall_s": r["wall_s"], "generated_tokens": tokens,
            "tokens_per_s": round(tokens / r["wall_s"], 2) if r["wall_s"] else None,
            "load_avg_before": r["load_avg_before"], "load_avg_after": r["load_avg_after"]}


def _section(card: str, title: str) -> list[str]:
    lines = card.splitlines()
    start = lines.index(title)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end]


def run(params_path: str, bundle: str, eval_path: str, samples: str, golden: str, gate_path: str,
        gguf_types: list[str]) -> dict:
    from pipeline.export.run import export_all, metrics
    from pipeline.params import load_section
    from pipeline.release import open_release
    from pipeline.release.build import release
    from pipeline.release.record import CARD_NAME

    export = load_section("export", params_path).model_copy(update={"merged": True, "gguf": gguf_types})
    evaluate, gate = load_section("evaluate", params_path), load_section("gate", params_path)
    rel = load_section("release", params_path)
    record: dict = {}
    with tempfile.TemporaryDirectory(prefix="tailgate-release-exports-") as tmp:
        tmp = Path(tmp)
        rel = rel.model_copy(update={"remote": str(tmp / "registry"), "signing": rel.signing.model_copy(update={
            "private_key": str(tmp / "keys/release.key"), "public_key": str(tmp / "keys/release.pub"),
            "create_key_if_missing": True, "password_env": None})})
        t0 = time.perf_counter()
        summary = export_all(export, evaluate, gate, bundle, eval_path, samples, tmp / "exports", tmp / "reports")
        record["export_stage_wall_s"] = round(time.perf_counter() - t0, 1)
        record["exports_metrics"] = metrics(summary)
        record["exports_summary"] = summary
        t0 = time.perf_counter()
        released, _pointer = release(rel, bundle, eval_path, gate_path, golden, tmp / "release",
                                     exports_dir=tmp / "exports", exports_reports=tmp / "reports")
        record["release_stage_wall_s"] = round(time.perf_counter() - t0, 1)
        root = tmp / "release"
        opened = open_release(root, public_key=rel.signing.public_key, require_signature=True)
        record["release"] = {
            "bundle_digest": released.bundle_digest, "signature": opened.signature,
            "exports": {n: e.model_dump(mode="json") for n, e in sorted(released.exports.items())},
            "files": sum(1 for p in root.rglob("*") if p.is_file()),
            "size_bytes": sum(p.stat().st_size for p in root.rglob("*") if p.is_file())}
        record["replays"] = {"bundle": _replay(root / "replay.json"),
                             **{n: _replay(root / "exports" / n / "replay.json") for n in sorted(released.exports)}}
        record["card_configurations"] = _section((root / CARD_NAME).read_text(encoding="utf-8"), "## Configurations")
    print(json.dumps(record["replays"], indent=1), file=sys.stderr)
    return record


def page(r: dict) -> tuple[list[tuple[str, str, str, str]], list[str]]:
    """RESULTS.md's headline rows (measure, measured, target, verdict) and section for a result."""
    rows = []
    for name, c in sorted(r["exports_summary"]["configurations"].items()):
        shipped = name in r["release"]["exports"]
        rows.append((f"export {name}: released beside the bundle", "released" if shipped else "not released",
                     "released", "pass" if shipped else "FAIL"))
    for name, rp in r["replays"].items():
        ok = rp is not None and rp["different"] == 0
        rows.append((f"release replay of {name}", f"{rp['identical']}/{rp['items']} identical" if rp else "none",
                     "all identical", "pass" if ok else "FAIL"))
    lines = [*r["card_configurations"][1:],
             f"Export stage {r['export_stage_wall_s']:g} s, release stage {r['release_stage_wall_s']:g} s; the "
             f"release holds {r['release']['files']} files, {r['release']['size_bytes'] / 1e6:.0f} MB, signature "
             f"{r['release']['signature']}. Load average {r['load_avg_before']} before, {r['load_avg_after']} after."]
    return rows, lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.release_exports", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--bundle", default="artifacts/bundle")
    p.add_argument("--eval", default="reports/eval.json")
    p.add_argument("--samples", default="reports/eval_samples.jsonl")
    p.add_argument("--golden", default="reports/golden.json")
    p.add_argument("--gate", default="reports/gate.json")
    p.add_argument("--gguf-types", default="q8_0", help="comma-separated; empty for none")
    args = p.parse_args(argv)
    from benchmarks import machine, write_result

    record = {"machine": machine(), "load_avg_before": [round(x, 2) for x in os.getloadavg()]}
    record.update(run(args.params, args.bundle, args.eval, args.samples, args.golden, args.gate,
                      [t for t in args.gguf_types.split(",") if t]))
    record["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    write_result(args.out, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
