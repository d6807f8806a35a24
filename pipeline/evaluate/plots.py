"""Plots for people (PNG) and their data for `dvc plots show` (CSV).

Three views of the tail: per-slice accuracy with its 95% CI (shipped and reference side by
side), the per-example NLL distribution as a CDF (shipped vs reference: quantization damage
shows as the shipped curve pulling right at the top), and accuracy by prompt length.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.files import atomic_write_text

PERCENTILES = list(range(0, 101))


def _csv(path: Path, header: list[str], rows: list[list]) -> None:
    def cell(v):
        return "" if v is None else (f"{v:.6f}" if isinstance(v, float) else str(v))
    atomic_write_text(path, "\n".join([",".join(header)] + [",".join(cell(v) for v in r) for r in rows]) + "\n")


def _nll(rows: list[dict], key: str) -> np.ndarray:
    return np.sort(np.asarray([r[key] for r in rows if key in r and np.isfinite(r[key])], dtype=float))


def write_csvs(report: dict, rows: list[dict], plots_dir: Path) -> None:
    head = report["headline_metric"]
    ref_slices = report.get("reference", {}).get("slices", {})
    slice_rows = []
    for name, s in sorted(report["slices"].items()):
        fa = s[head]
        ref = ref_slices.get(name, {}).get(head, {})
        slice_rows.append([name, fa["mean"], fa["ci95"][0], fa["ci95"][1], s["n"], ref.get("mean")])
    # generic column names, so dvc.yaml's plot definition fits any suite's headline metric
    _csv(plots_dir / "eval_slices.csv", ["slice", "headline", "ci_low", "ci_high", "n", "reference_headline"],
         slice_rows)
    shipped, reference = _nll(rows, "nll_per_token"), _nll(rows, "reference_precision_nll_per_token")
    q_rows = [[p, float(np.percentile(shipped, p)), float(np.percentile(reference, p)) if len(reference) else None]
              for p in PERCENTILES] if len(shipped) else []
    _csv(plots_dir / "nll_quantiles.csv", ["percentile", "shipped", "reference"], q_rows)
    ref_buckets = {b["min_tokens"]: b for b in report.get("reference", {}).get("length_buckets", [])}
    _csv(plots_dir / "length_buckets.csv", ["max_prompt_tokens", "n", "shipped", "reference"],
         [[b["max_tokens"] if b["max_tokens"] is not None else f">{b['min_tokens'] - 1}", b["n"], b["mean"],
           ref_buckets.get(b["min_tokens"], {}).get("mean")] for b in report["length_buckets"]])


def _finish(plt, fig, ax, path: Path, title: str, xlabel: str | None, ylabel: str, *, accuracy: bool = False,
            legend_at: str = "upper right") -> None:
    """Labels, legend and the write, the same for every chart."""
    if xlabel:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if accuracy:
        ax.set_ylim(0, 1)
    ax.legend(loc=legend_at, fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_pngs(report: dict, rows: list[dict], plots_dir: Path) -> list[str]:
    """Write the three PNGs; return their file names."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a CI runner
    import matplotlib.pyplot as plt

    plots_dir.mkdir(parents=True, exist_ok=True)
    ref_slices = report.get("reference", {}).get("slices", {})
    names = sorted(report["slices"])
    x = np.arange(len(names))
    head = report["headline_metric"]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    means = [report["slices"][n][head]["mean"] for n in names]
    lo = [m - report["slices"][n][head]["ci95"][0] for m, n in zip(means, names)]
    hi = [report["slices"][n][head]["ci95"][1] - m for m, n in zip(means, names)]
    width = 0.38 if ref_slices else 0.6
    ax.bar(x - (width / 2 if ref_slices else 0), means, width, yerr=[lo, hi], capsize=4, label="shipped (95% CI)")
    if ref_slices:
        ref = [ref_slices.get(n, {}).get(head, {}).get("mean", np.nan) for n in names]
        ax.bar(x + width / 2, ref, width, label="reference precision", alpha=0.6)
    ax.set_xticks(x, [f"{n}\n(n={report['slices'][n]['n']})" for n in names])
    _finish(plt, fig, ax, plots_dir / "eval_slices.png", f"Per-slice {head}", None, head, accuracy=True)

    # always drawn (DVC declares every PNG); says so when the suite scores no reference NLL
    fig, ax = plt.subplots(figsize=(7, 3.6))
    if not any("nll_per_token" in r for r in rows):
        ax.text(0.5, 0.5, "no loglikelihood_task in this suite", ha="center", va="center", transform=ax.transAxes)
    for key, label in (("nll_per_token", "shipped"), ("reference_precision_nll_per_token", "reference precision")):
        v = _nll(rows, key)
        if len(v):
            ax.step(v, np.arange(1, len(v) + 1) / len(v), where="post", label=label)
    ax.axhline(0.99, color="grey", lw=0.6, ls=":")
    _finish(plt, fig, ax, plots_dir / "nll_cdf.png", "NLL distribution: shipped vs reference",
            "per-example NLL of the reference answer (nats/token)", "share of examples", legend_at="lower right")

    fig, ax = plt.subplots(figsize=(7, 3.6))
    buckets = [b for b in report["length_buckets"] if b["n"]]
    labels = [f"{b['min_tokens']}-{b['max_tokens'] or ''}" for b in buckets]
    ax.plot(labels, [b["mean"] for b in buckets], marker="o", label="shipped")
    ref_b = {b["min_tokens"]: b for b in report.get("reference", {}).get("length_buckets", [])}
    if ref_b:
        ax.plot(labels, [ref_b.get(b["min_tokens"], {}).get("mean") for b in buckets], marker="s", ls="--",
                label="reference precision")
    for label, b in zip(labels, buckets):
        ax.annotate(f"n={b['n']}", (label, b["mean"]), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    _finish(plt, fig, ax, plots_dir / "length_buckets.png", f"{head} by prompt length (up to the shipped context)",
            "prompt tokens", head, accuracy=True)
    return ["eval_slices.png", "nll_cdf.png", "length_buckets.png"]
