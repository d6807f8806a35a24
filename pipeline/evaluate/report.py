"""Writing the evaluation's outputs: JSON for machines, CSV and PNG plots, markdown for people."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pipeline.evaluate.plots import write_csvs, write_pngs
from pipeline.files import atomic_write_json, atomic_write_text


def render_markdown(report: dict, plots: list[str] = (), plots_rel: str = "plots") -> str:
    lines = [f"# Evaluation of bundle `{report['bundle_digest'][:16]}`", "",
             f"Suite `{report['suite']['name']}` v{report['suite']['version']}, {report['suite']['items']} items, "
             f"engine `{report['engine']['name']}` (exact: {report['engine']['exact']}).", "",
             *_bundle_lines(report.get("bundle")),
             "| slice | n | field accuracy (95% CI) | list F1 (P / R) | exact match | format valid | NLL p50 / p99 |",
             "|---|---|---|---|---|---|---|"]
    for name, s in sorted(report["slices"].items()):
        fa, em, fv = s["field_accuracy"], s.get("exact_match", {}), s.get("format_valid", {})
        nll = report["nll_by_slice"].get(name, {})
        flag = " (too small)" if s["too_small"] else ""
        f1 = "-" if "list_f1" not in s else (f"{s['list_f1']['mean']:.3f} ({s['list_precision']['mean']:.3f} / "
                                             f"{s['list_recall']['mean']:.3f})")
        lines.append(f"| {name}{flag} | {s['n']} | {fa['mean']:.3f} ({fa['ci95'][0]:.3f}-{fa['ci95'][1]:.3f}) | {f1} "
                     f"| {em.get('mean', float('nan')):.3f} | {fv.get('mean', float('nan')):.3f} "
                     f"| {nll.get('p50', float('nan')):.3f} / {nll.get('p99', float('nan')):.3f} |")
    w = report["worst_slice"]
    q = report["nll_per_token"]
    lines += ["", f"Worst slice: **{w['slice']}** ({w['mean']:.3f}, n={w['n']}).", "",
              f"Per-example NLL (nats/token): p50 {q['p50']:.3f}, p90 {q['p90']:.3f}, p99 {q['p99']:.3f}, "
              f"max {q['max']:.3f}, worst-5% mean {q['worst5pct_mean']:.3f}."]
    lines += _damage_lines(report.get("damage"))
    lines += ["", "## By prompt length", "", "| prompt tokens | n | field accuracy |", "|---|---|---|"]
    for b in report["length_buckets"]:
        hi = b["max_tokens"] if b["max_tokens"] is not None else "+"
        mean = f"{b['mean']:.3f}" if b["mean"] is not None else "-"
        lines.append(f"| {b['min_tokens']}-{hi} | {b['n']} | {mean} |")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{name}]({plots_rel}/{name})" for name in plots]
    return "\n".join(lines) + "\n"


def _bundle_lines(b: dict | None) -> list[str]:
    if not b:
        return []
    trained = {"shipped": "the shipped base (QLoRA)",
               "reference": "the 16-bit base, shipped on the quantized one (post-training quantization)"}
    return [f"Quantization `{b['quantization']}`; adapter trained on "
            f"{trained.get(b.get('adapter_trained_on'), 'the shipped base')}.", ""]


def _damage_lines(d: dict | None) -> list[str]:
    if not d:
        return ["", "Quantization damage: not measured (evaluate.damage is off)."]
    q = d["delta_nll_per_token"]
    lines = ["", "## Quantization damage", "",
             f"Reference: {d['reference']}. Same prompts, same decoding.", "",
             f"- delta NLL per example (shipped - reference, nats/token): p50 {q['p50']:+.4f}, p99 {q['p99']:+.4f}, "
             f"max {q['max']:+.4f}",
             f"- flip rate (field right under reference, wrong as shipped): {d['flip_rate']:.4f} "
             f"of {d['field_pairs']} item-fields; the reverse: {d['unflip_rate']:.4f}",
             f"- identical outputs: {d['identical_outputs']:.3f} of {d['items']} items", "",
             "| slice | n | shipped | reference | drop | mean delta NLL |", "|---|---|---|---|---|---|"]
    for name, s in sorted(d["slices"].items()):
        dn = s["delta_nll_mean"]
        lines.append(f"| {name} | {s['n']} | {s['field_accuracy_shipped']:.3f} | {s['field_accuracy_reference']:.3f} "
                     f"| {s['field_accuracy_drop']:+.3f} | {'-' if dn is None else f'{dn:+.4f}'} |")
    if d["flipped_items"]:
        shown = ", ".join(f"{f['id']} ({'/'.join(f['fields'])})" for f in d["flipped_items"][:5])
        lines += ["", f"Flipped items (first 5 of {len(d['flipped_items'])}): {shown}."]
    return lines


def headline_metrics(report: dict) -> dict:
    """The few numbers `dvc metrics show` and `dvc exp show` put side by side."""
    return {
        "bundle_digest": report["bundle_digest"][:12],
        "overall": {m: round(v["mean"], 4) for m, v in report["overall"].items()},
        "slices": {name: {"field_accuracy": round(s["field_accuracy"]["mean"], 4),
                          "ci95_low": round(s["field_accuracy"]["ci95"][0], 4), "n": s["n"],
                          **({"list_f1": round(s["list_f1"]["mean"], 4)} if "list_f1" in s else {})}
                   for name, s in sorted(report["slices"].items())},
        "worst_slice": {"slice": report["worst_slice"]["slice"], "field_accuracy": round(report["worst_slice"]["mean"], 4)},
        "nll_per_token": {k: round(v, 4) for k, v in report["nll_per_token"].items()},
        **({"damage": _damage_headline(report["damage"])} if "damage" in report else {}),
    }


def _damage_headline(d: dict) -> dict:
    q = d["delta_nll_per_token"]
    return {"delta_nll_p50": round(q["p50"], 5), "delta_nll_p99": round(q["p99"], 5), "delta_nll_max": round(q["max"], 5),
            "flip_rate": round(d["flip_rate"], 5), "worst_slice_drop": round(d["worst_slice_drop"], 4)}


def write_reports(report: dict, rows: list[dict], golden: dict, report_path: str, samples_path: str,
                  golden_path: str, plots_dir: str, metrics_path: str) -> None:
    atomic_write_json(report_path, report)
    atomic_write_json(metrics_path, headline_metrics(report))
    atomic_write_text(samples_path, "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows))
    atomic_write_json(golden_path, golden)
    plots_dir = Path(plots_dir)
    write_csvs(report, rows, plots_dir)
    pngs = write_pngs(report, rows, plots_dir)
    md_path = Path(report_path).with_suffix(".md")
    rel = os.path.relpath(plots_dir.resolve(), md_path.parent.resolve())
    atomic_write_text(md_path, render_markdown(report, pngs, rel))
