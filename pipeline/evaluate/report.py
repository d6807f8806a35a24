"""Writing the evaluation's outputs: JSON for machines, CSV and PNG plots, markdown for people."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from pipeline.evaluate.plots import write_csvs, write_pngs
from pipeline.files import atomic_write_json, atomic_write_text


# Columns of the slice table beside the headline metric, at most this many, in scorer order.
EXTRA_COLUMNS = 5


def _mean(s: dict, m: str) -> str:
    v = s.get(m, {}).get("mean")
    return "-" if v is None else f"{v:.3f}"


def _platform_lines(platform: dict | None) -> list[str]:
    if not platform:
        return []
    return [f"Platform of the shipped pass (the golden outputs hold for it): {platform['description']}.", ""]


def _items_line(suite: dict) -> str:
    total = suite.get("suite_items")
    if total is None or not suite.get("limited"):
        return f"{suite['items']} items"
    return (f"{suite['items']} of the suite's {total} items (**limited**: evaluate.limit = "
            f"{suite.get('limit_per_slice')} per slice)")


def render_markdown(report: dict, plots: list[str] = (), plots_rel: str = "plots", named: Sequence[str] = ()) -> str:
    """`named`: metrics gate rules name; always shown, whatever EXTRA_COLUMNS allows."""
    head = report["headline_metric"]
    suite = report["suite"]
    others = [m for m in report["overall"] if m not in (head, "nll_per_token")]
    # what a gate rule names first, then correctness and lower-is-better metrics (what a gate
    # usually names), then the rest up to EXTRA_COLUMNS
    marked = set(suite.get("correctness_metrics", [])) | set(suite.get("lower_is_better", []))
    must = [m for m in others if m in set(named)]
    rest = [m for m in others if m in marked and m not in must] + [m for m in others if m not in marked and m not in must]
    shown = must + rest[:max(0, EXTRA_COLUMNS - len(must))]
    has_nll = "nll_per_token" in report
    lines = [f"# Evaluation of bundle `{report['bundle_digest'][:16]}`", "",
             f"Suite `{suite['name']}` v{suite['version']}, {_items_line(suite)}, "
             f"engine `{report['engine']['name']}` (exact: {report['engine']['exact']}). "
             f"Headline metric: `{head}`.", "",
             *_platform_lines(report.get("platform")),
             *_bundle_lines(report.get("bundle")), *_system_lines(suite.get("system_prompt")),
             f"| slice | n | {head} (95% CI) | " + " | ".join(shown) + (" | NLL p50 / p99 |" if has_nll else " |"),
             "|---|---|---|" + "---|" * len(shown) + ("---|" if has_nll else "")]
    for name, s in sorted(report["slices"].items()):
        h = s.get(head, {"mean": float("nan"), "ci95": [float("nan")] * 2})
        flag = " (too small)" if s["too_small"] else ""
        n = str(s["n"]) if s.get("suite_n", s["n"]) == s["n"] else f"{s['n']} of {s['suite_n']}"
        cells = [f"{name}{flag}", n, f"{h['mean']:.3f} ({h['ci95'][0]:.3f}-{h['ci95'][1]:.3f})",
                 *(_mean(s, m) for m in shown)]
        if has_nll:
            nll = report["nll_by_slice"].get(name, {})
            cells.append(f"{nll.get('p50', float('nan')):.3f} / {nll.get('p99', float('nan')):.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    w = report["worst_slice"]
    lines += ["", f"Worst slice by {head}: **{w['slice']}** ({w['mean']:.3f}, n={w['n']})."]
    kinds: dict[str, list[str]] = {}
    for m, summary in report["overall"].items():
        if isinstance(summary, dict) and summary.get("interval"):
            kinds.setdefault(summary["interval"], []).append(f"`{m}`")
    if kinds:
        names = {"clopper-pearson": "exact binomial (Clopper-Pearson; per-item 0/1 values)",
                 "bca-bootstrap": "BCa bootstrap of the mean"}
        lines += ["", "95% CIs: " + "; ".join(f"{names.get(k, k)} for {', '.join(v)}" for k, v in sorted(kinds.items()))
                  + "."]
    hidden = [m for m in others if m not in shown]
    if hidden:
        lines += ["", "Also in eval.json, per slice: " + ", ".join(f"`{m}`" for m in hidden) + "."]
    if has_nll:
        q = report["nll_per_token"]
        lines += ["", f"Per-example NLL of the reference answer (nats/token): p50 {q['p50']:.3f}, p90 {q['p90']:.3f}, "
                  f"p99 {q['p99']:.3f}, max {q['max']:.3f}, worst-5% mean {q['worst5pct_mean']:.3f}."]
    lines += _damage_lines(report.get("damage"), head)
    lines += ["", "## By prompt length", "", f"| prompt tokens | n | {head} |", "|---|---|---|"]
    for b in report["length_buckets"]:
        hi = b["max_tokens"] if b["max_tokens"] is not None else "+"
        mean = f"{b['mean']:.3f}" if b["mean"] is not None else "-"
        lines.append(f"| {b['min_tokens']}-{hi} | {b['n']} | {mean} |")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{name}]({plots_rel}/{name})" for name in plots]
    return "\n".join(lines) + "\n"


def _system_lines(sp: dict | None) -> list[str]:
    if not sp:
        return []
    source = {"bundle": "the bundle's pinned system prompt, as serving applies it",
              "suite": "the suite's system prompt", "none": "none (the chat template's default applies)"}
    text = f": \"{sp['text']}\"" if sp.get("text") else ""
    return [f"System prompt for items without one: {source.get(sp.get('source'), sp.get('source'))}{text}.", ""]


def _bundle_lines(b: dict | None) -> list[str]:
    if not b:
        return []
    trained = {"shipped": "the shipped base (QLoRA)",
               "reference": "the 16-bit base, shipped on the quantized one (post-training quantization)"}
    return [f"Quantization `{b['quantization']}`; adapter trained on "
            f"{trained.get(b.get('adapter_trained_on'), 'the shipped base')}.", ""]


def _damage_lines(d: dict | None, head: str) -> list[str]:
    if not d:
        return ["", "Quantization damage: not measured (evaluate.damage is off)."]
    lines = ["", "## Quantization damage", "", f"Reference: {d['reference']}. Same prompts, same decoding.", ""]
    q = d.get("delta_nll_per_token")
    if q:
        lines.append(f"- delta NLL per example (shipped - reference, nats/token): p50 {q['p50']:+.4f}, "
                     f"p99 {q['p99']:+.4f}, max {q['max']:+.4f}")
    if d["flip_rate"] is not None:
        lines.append(f"- flip rate (right under reference, wrong as shipped, over "
                     f"{', '.join(d['correctness_metrics'])}): {d['flip_rate']:.4f} of {d['correctness_pairs']} "
                     f"item-metric pairs; the reverse: {d['unflip_rate']:.4f}")
    else:
        lines.append("- flip rate: none (the suite declares no correctness metric)")
    lines += [f"- identical outputs: {d['identical_outputs']:.3f} of {d['items']} items", "",
              f"| slice | n | {head} shipped | reference | drop | mean delta NLL |", "|---|---|---|---|---|---|"]
    for name, s in sorted(d["slices"].items()):
        dn = s["delta_nll_mean"]
        lines.append(f"| {name} | {s['n']} | {s[f'{head}_shipped']:.3f} | {s[f'{head}_reference']:.3f} "
                     f"| {s[f'{head}_drop']:+.3f} | {'-' if dn is None else f'{dn:+.4f}'} |")
    if d["flipped_items"]:
        shown = ", ".join(f"{f['id']} ({'/'.join(f['metrics'])})" for f in d["flipped_items"][:5])
        lines += ["", f"Flipped items (first 5 of {len(d['flipped_items'])}): {shown}."]
    return lines


def headline_metrics(report: dict) -> dict:
    """The few numbers `dvc metrics show` and `dvc exp show` put side by side."""
    head = report["headline_metric"]
    out = {
        "bundle_digest": report["bundle_digest"][:12],
        "headline_metric": head,
        "overall": {m: round(v["mean"], 4) for m, v in report["overall"].items()},
        "slices": {name: {head: round(s[head]["mean"], 4), "ci95_low": round(s[head]["ci95"][0], 4), "n": s["n"]}
                   for name, s in sorted(report["slices"].items()) if head in s},
        "worst_slice": {"slice": report["worst_slice"]["slice"], head: round(report["worst_slice"]["mean"], 4)},
    }
    if "nll_per_token" in report:
        out["nll_per_token"] = {k: round(v, 4) for k, v in report["nll_per_token"].items()}
    if "damage" in report:
        d = report["damage"]
        q = d.get("delta_nll_per_token") or {}
        out["damage"] = {**{f"delta_nll_{k}": round(q[k], 5) for k in ("p50", "p99", "max") if k in q},
                         "flip_rate": None if d["flip_rate"] is None else round(d["flip_rate"], 5),
                         "worst_slice_drop": None if d["worst_slice_drop"] is None else round(d["worst_slice_drop"], 4)}
    return out


def write_reports(report: dict, rows: list[dict], golden: dict, report_path: str, samples_path: str,
                  golden_path: str, plots_dir: str, metrics_path: str, named: Sequence[str] = ()) -> None:
    """`named`: the metrics the gate's rules name (shown in eval.md whatever else is folded)."""
    atomic_write_json(report_path, report)
    atomic_write_json(metrics_path, headline_metrics(report))
    atomic_write_text(samples_path, "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows))
    atomic_write_json(golden_path, golden)
    plots_dir = Path(plots_dir)
    write_csvs(report, rows, plots_dir)
    pngs = write_pngs(report, rows, plots_dir)
    md_path = Path(report_path).with_suffix(".md")
    rel = os.path.relpath(plots_dir.resolve(), md_path.parent.resolve())
    atomic_write_text(md_path, render_markdown(report, pngs, rel, named))
