"""Writing the evaluation's outputs: JSON for machines, CSV for DVC plots, markdown for people."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.files import atomic_write_json, atomic_write_text


def render_markdown(report: dict) -> str:
    lines = [f"# Evaluation of bundle `{report['bundle_digest'][:16]}`", "",
             f"Suite `{report['suite']['name']}` v{report['suite']['version']}, {report['suite']['items']} items, "
             f"engine `{report['engine']['name']}` (exact: {report['engine']['exact']}).", "",
             "| slice | n | field accuracy (95% CI) | exact match | format valid | NLL p50 / p99 |",
             "|---|---|---|---|---|---|"]
    for name, s in sorted(report["slices"].items()):
        fa, em, fv = s["field_accuracy"], s.get("exact_match", {}), s.get("format_valid", {})
        nll = report["nll_by_slice"].get(name, {})
        flag = " (too small)" if s["too_small"] else ""
        lines.append(f"| {name}{flag} | {s['n']} | {fa['mean']:.3f} ({fa['ci95'][0]:.3f}-{fa['ci95'][1]:.3f}) "
                     f"| {em.get('mean', float('nan')):.3f} | {fv.get('mean', float('nan')):.3f} "
                     f"| {nll.get('p50', float('nan')):.3f} / {nll.get('p99', float('nan')):.3f} |")
    w = report["worst_slice"]
    q = report["nll_per_token"]
    lines += ["", f"Worst slice: **{w['slice']}** ({w['mean']:.3f}, n={w['n']}).", "",
              f"Per-example NLL (nats/token): p50 {q['p50']:.3f}, p90 {q['p90']:.3f}, p99 {q['p99']:.3f}, "
              f"max {q['max']:.3f}, worst-5% mean {q['worst5pct_mean']:.3f}.", "",
              "| prompt tokens | n | field accuracy |", "|---|---|---|"]
    for b in report["length_buckets"]:
        hi = b["max_tokens"] if b["max_tokens"] is not None else "+"
        mean = f"{b['mean']:.3f}" if b["mean"] is not None else "-"
        lines.append(f"| {b['min_tokens']}-{hi} | {b['n']} | {mean} |")
    return "\n".join(lines) + "\n"


def headline_metrics(report: dict) -> dict:
    """The few numbers `dvc metrics show` and `dvc exp show` put side by side."""
    return {
        "bundle_digest": report["bundle_digest"][:12],
        "overall": {m: round(v["mean"], 4) for m, v in report["overall"].items()},
        "slices": {name: {"field_accuracy": round(s["field_accuracy"]["mean"], 4),
                          "ci95_low": round(s["field_accuracy"]["ci95"][0], 4), "n": s["n"]}
                   for name, s in sorted(report["slices"].items())},
        "worst_slice": {"slice": report["worst_slice"]["slice"], "field_accuracy": round(report["worst_slice"]["mean"], 4)},
        "nll_per_token": {k: round(v, 4) for k, v in report["nll_per_token"].items()},
    }


def write_reports(report: dict, rows: list[dict], golden: dict, report_path: str, samples_path: str,
                  golden_path: str, plots_dir: str, metrics_path: str) -> None:
    atomic_write_json(report_path, report)
    atomic_write_json(metrics_path, headline_metrics(report))
    atomic_write_text(samples_path, "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows))
    atomic_write_json(golden_path, golden)
    csv = ["slice,field_accuracy,ci_low,ci_high,n"]
    for name, s in sorted(report["slices"].items()):
        fa = s["field_accuracy"]
        csv.append(f"{name},{fa['mean']:.6f},{fa['ci95'][0]:.6f},{fa['ci95'][1]:.6f},{s['n']}")
    atomic_write_text(Path(plots_dir) / "eval_slices.csv", "\n".join(csv) + "\n")
    atomic_write_text(Path(report_path).with_suffix(".md"), render_markdown(report))
