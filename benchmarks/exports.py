"""Exports of the default bundle, each evaluated as its own configuration and gated against it.

    python -m benchmarks.exports --out benchmarks/results/exports.json [--gguf-types q8_0] [--no-broken]

Writes, into a temporary folder, the merged float32 export, one GGUF per `--gguf-types` and (unless
`--no-broken`) the export most fine-tuning tools ship: the adapter merged into the 16-bit original
base instead of the dequantized NF4 one it was trained on. Each goes through
`python -m pipeline.export evaluate`'s code: the bundle's whole suite through the engine that
serves it (the merged model on the hf engine, a GGUF on llama.cpp), its damage against the
bundle's own evaluation (reports/eval.json, eval_samples.jsonl) and the gate's decision
(params.yaml's rules plus the export rules). Recorded per configuration: size, headline overall
and per slice, damage, the gate's verdict and failed rules, and the evaluation's wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _broken(bundle_dir: Path, base_dir: Path, out: Path) -> None:
    import torch

    from pipeline.bundle.verify import verify_bundle
    from pipeline.engines.hf import load_model
    from pipeline.export.merged import finish, staging

    bundle = verify_bundle(bundle_dir)
    out, tmp = staging(out)
    model = load_model(base_dir, bundle.root / "adapter", torch.float32).merge_and_unload()
    model.generation_config.eos_token_id = list(bundle.manifest.tokenizer.stop_token_ids)
    model.save_pretrained(tmp, safe_serialization=True)
    for f in sorted((bundle.root / "tokenizer").iterdir()):
        (tmp / f.name).write_bytes(f.read_bytes())
    finish(tmp, out, bundle.manifest, {"kind": "merged", "dtype": "float32",
                                       "recipe": "the adapter merged into the 16-bit original base (what not to do)"})


def _summary(report: dict, decision: dict, wall: float, size: int) -> dict:
    head = report["headline_metric"]
    d = report["damage"]
    return {"size_bytes": size, "eval_wall_s": round(wall, 1), "engine": report["engine"]["description"],
            "headline": {"overall": report["overall"][head]["mean"],
                         "slices": {k: v[head]["mean"] for k, v in sorted(report["slices"].items())}},
            "damage": {"identical_outputs": d["identical_outputs"], "flip_rate": d["flip_rate"],
                       "unflip_rate": d["unflip_rate"], "worst_slice_drop": d["worst_slice_drop"],
                       "delta_nll_p99": d.get("delta_nll_per_token", {}).get("p99"),
                       "abs_delta_nll_p99": d.get("abs_delta_nll_per_token", {}).get("p99")},
            "gate_passed": decision["passed"], "gate_failed": decision["failed"]}


def run(bundle_dir: str, base_dir: str, params_path: str, eval_path: str, samples_path: str,
        gguf_types: list[str], broken: bool) -> dict:
    from pipeline.export import export_gguf, export_merged
    from pipeline.export.evaluate import evaluate_export, gate_export, read_rows
    from pipeline.files import read_json
    from pipeline.params import load_section

    params, gate = load_section("evaluate", params_path), load_section("gate", params_path)
    shipped, rows = read_json(eval_path), read_rows(samples_path)
    head = shipped["headline_metric"]
    bundle = Path(bundle_dir)
    record = {"bundle_digest": shipped["bundle_digest"],
              "bundle": {"size_bytes": _size(bundle / "base_q") + _size(bundle / "adapter"),
                         "headline": {"overall": shipped["overall"][head]["mean"],
                                      "slices": {k: v[head]["mean"] for k, v in sorted(shipped["slices"].items())}}},
              "headline_metric": head, "configurations": {}}
    with tempfile.TemporaryDirectory(prefix="tailgate-exports-") as tmp:
        made = {"merged_float32": (Path(tmp) / "merged", lambda out: export_merged(bundle, out, "float32"))}
        for t in gguf_types:
            made[f"gguf_{t}"] = (Path(tmp) / f"gguf_{t}", lambda out, t=t: export_gguf(bundle, out, t, "smollm"))
        if broken:
            made["merged_into_16bit_original"] = (Path(tmp) / "broken", lambda out: _broken(bundle, Path(base_dir), out))
        for name, (folder, make) in made.items():
            make(folder)
            t0 = time.perf_counter()
            report, _rows, _golden = evaluate_export(params, folder, bundle, shipped, rows)
            wall = time.perf_counter() - t0
            decision = gate_export(gate, report, bundle)
            entry = record["configurations"][name] = _summary(report, decision, wall, _size(folder))
            print(f"{name}: {json.dumps(entry['damage'])} gate {'passed' if decision['passed'] else 'REFUSED'}",
                  file=sys.stderr, flush=True)
    return record


def page(r: dict) -> tuple[list[tuple[str, str, str, str]], list[str]]:
    """RESULTS.md's headline rows (measure, measured, target, verdict) and section for a result."""
    confs = r["configurations"]
    rows = []
    for name, c in confs.items():
        want_pass = name != "merged_into_16bit_original"
        rows.append((f"export {name}: the gate against the bundle", "passed" if c["gate_passed"] else
                     f"refused ({', '.join(c['gate_failed'])})", "passed" if want_pass else "refused",
                     "pass" if c["gate_passed"] == want_pass else "FAIL"))
    head = r["headline_metric"]
    lines = [f"| configuration | size MB | {head} | answers identical to the bundle's | flip rate | "
             "|delta NLL| p99 | worst slice drop | gate | eval s |", "|---|---|---|---|---|---|---|---|---|",
             f"| bundle (NF4 + LoRA) | {r['bundle']['size_bytes'] / 1e6:.0f} | {r['bundle']['headline']['overall']:.3f} "
             "| - | - | - | - | - | - |"]
    for name, c in confs.items():
        d = c["damage"]
        lines.append(f"| {name} | {c['size_bytes'] / 1e6:.0f} | {c['headline']['overall']:.3f} | "
                     f"{d['identical_outputs']:.3f} | {d['flip_rate']:.3f} | {d['abs_delta_nll_p99']:.2e} | "
                     f"{d['worst_slice_drop']:+.3f} | {'passed' if c['gate_passed'] else 'refused'} | "
                     f"{c['eval_wall_s']:g} |")
    lines.append(f"\nBundle {r['bundle_digest'][:12]}; every configuration evaluated on the whole suite through the "
                 f"engine that serves it. Load average {r['load_avg_before']} before, {r['load_avg_after']} after.")
    return rows, lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.exports", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--bundle", default="artifacts/bundle")
    p.add_argument("--base", default="artifacts/base", help="the 16-bit base (only for the broken export)")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--eval", default="reports/eval.json")
    p.add_argument("--samples", default="reports/eval_samples.jsonl")
    p.add_argument("--gguf-types", default="q8_0", help="comma-separated; empty for none")
    p.add_argument("--no-broken", action="store_true")
    args = p.parse_args(argv)
    from benchmarks import machine, write_result

    record = {"machine": machine(), "load_avg_before": [round(x, 2) for x in os.getloadavg()]}
    record.update(run(args.bundle, args.base, args.params, args.eval, args.samples,
                      [t for t in args.gguf_types.split(",") if t], not args.no_broken))
    record["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    write_result(args.out, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
