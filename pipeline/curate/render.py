"""The curate report for people: a markdown page, the length histograms as PNG and CSV.

reports/curate.json is for machines and `dvc metrics`; reports/curate.md answers the questions
a reviewer asks of a data drop (how much was thrown away, why, show me one of each, did any
test item leak, what happened to the length distribution) and links the before/after length
histograms. Like the JSON, the page names records by "file:line" and never quotes their text:
it is committed to git, and the rejected records may hold identifiers the scrubber never saw.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.curate import validate as v
from pipeline.curate.report import HISTOGRAM_BINS, STAGES
from pipeline.files import atomic_write_json, atomic_write_text

LENGTHS_CSV, LENGTHS_PNG = "curate_lengths.csv", "curate_lengths.png"
METRIC_KEYS = ("input_lines", "kept", "rejected", "quarantine_fraction", "reasons", "repairs")

# What each reason means, in words a reviewer reads without opening the code.
REASON_TEXT: dict[str, str] = {
    v.LINE_TOO_LONG: "line longer than max_line_bytes (not read whole)",
    v.UNREADABLE_FILE: "rest of a file that could not be read (e.g. truncated gzip)",
    v.BAD_ROW: "tabular row without the expected columns",
    v.NON_UTF8: "bytes that are not UTF-8",
    v.NUL_CHARACTER: "NUL character in the line",
    v.BAD_JSON: "not valid JSON",
    v.NOT_OBJECT: "JSON value is not an object",
    v.BAD_FIELD: "a field of the wrong type",
    v.BAD_MESSAGES: "`messages` missing or not a list",
    v.BAD_MESSAGE: "a message that is not a role/content object",
    v.UNKNOWN_ROLE: "a role other than system, user, assistant",
    v.MISSING_ASSISTANT: "does not end with the assistant's reply",
    v.EMPTY_CONTENT: "an empty message",
    v.REPETITIVE: "a message that repeats itself (word n-grams)",
    v.SYMBOL_RATIO: "too few letters among the characters",
    v.COPIED_PROMPT: "the reply copies its prompt",
    v.BAD_TEMPLATE: "does not render under the chat template",
    v.TOO_SHORT: "fewer tokens than min_seq_len_tokens",
    v.TOO_LONG: "more tokens than max_seq_len_tokens",
    v.EXACT_DUPLICATE: "same content as an earlier record",
    v.EVAL_CONTAMINATION: "holds an eval item's text",
    v.NEAR_DUPLICATE: "MinHash near-copy of a kept record",
}
assert set(REASON_TEXT) == set(v.REASONS), "every reason has its words"


def write_reports(report: dict, report_path: str | Path, metrics_path: str | Path | None,
                  plots_dir: str | Path) -> None:
    """JSON, headline metrics, length CSV and PNG, and the markdown page beside the JSON."""
    atomic_write_json(report_path, report)
    if metrics_path is not None:
        atomic_write_json(metrics_path, {k: report[k] for k in METRIC_KEYS})
    plots_dir = Path(plots_dir)
    write_lengths_csv(report["length_histogram"], plots_dir / LENGTHS_CSV)
    write_lengths_png(report["length_histogram"], report["min_seq_len_tokens"], report["max_seq_len_tokens"],
                      plots_dir / LENGTHS_PNG)
    md_path = Path(report_path).with_suffix(".md")
    rel = os.path.relpath(plots_dir.resolve(), md_path.parent.resolve())
    atomic_write_text(md_path, render_markdown(report, f"{rel}/{LENGTHS_PNG}"))


def write_lengths_csv(hist: dict, path: Path) -> None:
    """One row per bin (its lower edge in tokens), records before the filters and kept."""
    rows = ["tokens,before,after"] + [f"{lo},{b},{a}" for lo, b, a in zip(hist["edges"], hist["before"], hist["after"])]
    atomic_write_text(path, "\n".join(rows) + "\n")


def write_lengths_png(hist: dict, min_tokens: int, max_tokens: int, path: Path) -> None:
    """Before (every record that got as far as tokenizing) above, kept below, on one x axis.

    The regular bins end at the shipped context; records beyond it are one overflow bar, drawn
    one bin wide and labelled with its true range, so a 16k-token outlier does not squash the
    distribution that matters into the left edge."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a CI runner
    import matplotlib.pyplot as plt

    edges = hist["edges"]
    width = edges[1] - edges[0]
    overflow = len(edges) - 1 > HISTOGRAM_BINS  # length_histogram added a bin past the context
    lefts = [float(e) for e in edges[:-1]]
    fig, axes = plt.subplots(2, 1, figsize=(7.5, 4.8), sharex=True)
    for ax, key, title, colour in ((axes[0], "before", "valid records, before filtering", "tab:grey"),
                                   (axes[1], "after", "kept (train + val)", "tab:blue")):
        ax.bar(lefts, hist[key], width=width, align="edge", color=colour, edgecolor="white", linewidth=0.4)
        ax.axvline(min_tokens, color="tab:red", lw=0.8, ls="--")
        ax.axvline(max_tokens, color="tab:red", lw=0.8, ls="--")
        ax.set_ylabel("records")
        ax.set_title(f"{title}: {sum(hist[key]):,} records", fontsize=9, loc="left")
        if overflow and hist[key][-1]:
            ax.annotate(f"{hist[key][-1]} over {max_tokens}\n(up to {edges[-1] - 1})", (lefts[-1] + width / 2,
                        hist[key][-1]), textcoords="offset points", xytext=(0, 4), ha="center", fontsize=7)
    axes[1].set_xlabel(f"tokens under the chat template (dashed: min {min_tokens}, max {max_tokens})")
    fig.suptitle("Record length, before and after curation", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render_markdown(report: dict, lengths_png: str | None = None) -> str:
    share, rejected = report["quarantine_fraction"], report["rejected"]
    sp = report["splits"]
    lines = ["# Curation report", "",
             f"Inputs: {', '.join(f'`{f}`' for f in report['input_files'])}: {report['input_lines']:,} records "
             f"({report['blank_lines']} blank lines skipped).", "",
             f"**Kept {report['kept']:,}** (train {sp['train']['total']:,}, val {sp['val']['total']:,}); "
             f"**quarantined {rejected:,}** ({share:.1%}), each in `quarantine.jsonl` with its file, line and reason.",
             "", f"Data digest `{report['data_digest'][:16]}` (pinned by the bundle manifest).", "",
             "## Checks, in order", "", "| check | in | out | rejected |", "|---|---|---|---|"]
    for s in report["stages"]:
        why = ", ".join(f"{r} {n}" for r, n in s["rejected"].items() if n) or "-"
        lines.append(f"| {s['stage']} | {s['in']:,} | {s['out']:,} | {why} |")
    lines += ["", "## Rejections: one example per reason", "", "| reason | n | what | example | detail |",
              "|---|---|---|---|---|"]
    examples = report["examples"]
    for reason in (r for _, rs in STAGES for r in rs):
        n = report["reasons"][reason]
        if n:
            ex = examples.get(reason, {})
            detail = str(ex.get("detail", "")).replace("|", "\\|").replace("\n", " ")
            lines.append(f"| `{reason}` | {n} | {REASON_TEXT[reason]} | {ex.get('source', '?')}:{ex.get('line', '?')} "
                         f"| {detail} |")
    if not rejected:
        lines.append("| - | 0 | nothing rejected | | |")
    lines += _slices(report) + _repairs_and_pii(report) + _dups_and_leaks(report) + _lengths(report, lengths_png)
    return "\n".join(lines) + "\n"


def _slices(report: dict) -> list[str]:
    """Per slice: what came in, what was kept, what was lost and why; the loss limit and the
    slices over it (a global share hides a tail slice stripped bare)."""
    if "slices" not in report:  # a report from before per-slice counts
        return []
    lines = ["", "## Per slice", "", "| slice | in | train | val | quarantined | loss | reasons | loss limit |",
             "|---|---|---|---|---|---|---|---|"]
    for name, s in report["slices"].items():
        why = ", ".join(f"{r} {n}" for r, n in s["reasons"].items()) or "-"
        limit = s.get("max_loss_fraction")
        lines.append(f"| {name} | {s['input']:,} | {s['train']:,} | {s['val']:,} | {s['quarantined']:,} "
                     f"| {s['loss_fraction']:.1%} | {why} | {'-' if limit is None else f'{limit:.0%}'} |")
    sl = report["slice_loss"]
    limits = sl["max_slice_loss_fraction"]
    said = (f"Slice loss limit {limits:.0%}" if not isinstance(limits, dict) else
            "Slice loss limits per slice (column `loss limit`)")
    lines += ["", f"{said} (curate.max_slice_loss_fraction), on_slice_loss: {sl['on_slice_loss']}; "
              f"`{sl['not_judged']}` holds records rejected before their slice could be read and is left to "
              "max_quarantine_fraction."]
    lines += _validation(report)
    for name in sl.get("unknown_slices", ()):
        lines += ["", f"- **FAILED**: curate.max_slice_loss_fraction names slice `{name}`, which no input record has."]
    if not sl["flagged"]:
        worst = f" (worst: {sl['worst_slice']}, {sl['worst_loss_fraction']:.1%})" if sl["worst_slice"] else ""
        return lines + ["", f"No slice over its limit{worst}."]
    verdict = "**FAILED**" if sl["on_slice_loss"] == "fail" else "**WARNING**"
    lines.append("")
    for f in sl["flagged"]:
        limit = f" (limit {f['limit']:.0%})" if "limit" in f else ""
        lines.append(f"- {verdict}: slice `{f['slice']}` lost {f['quarantined']} of {f['input']} "
                     f"({f['loss_fraction']:.1%}){limit}, most by `{f['reason']}` ({f['reason_count']}); "
                     f"controlled by {f['controlled_by']}.")
    return lines


def _validation(report: dict) -> list[str]:
    """How the validation split came about: the hash draw, and the slices it left short."""
    val = report.get("validation")
    if val is None:  # a report from before the per-slice top-up
        return []
    topped = {n: s["topped_up"] for n, s in val["slices"].items() if s["topped_up"]}
    line = (f"Validation: {val['drawn']:,} records drawn at val_fraction {val['val_fraction']:g}; "
            f"every slice gets at least {val['min_val_records_per_slice']} "
            "(curate.min_val_records_per_slice, at most half its kept records)")
    line += ("; topped up: " + ", ".join(f"{n} +{k}" for n, k in topped.items()) + ".") if topped else \
        "; no slice needed a top-up."
    lines = ["", line]
    if val["slices_without_val"]:
        lines.append("Slices with no validation record: " + ", ".join(f"`{n}`" for n in val["slices_without_val"])
                     + ".")
    return lines


def _repairs_and_pii(report: dict) -> list[str]:
    lines = ["", "## Repairs and scrubbing", "",
             f"- Byte-order marks stripped: {report['repairs'].get('bom_stripped', 0)}."]
    pii = report["pii"]
    if not pii["enabled"]:
        return lines + ["- PII scrubbing: **off** (curate.pii.enabled)."]
    counts = ", ".join(f"{k} {n}" for k, n in pii["replacements"].items())
    return lines + [f"- PII scrubbed in {pii['records_changed']} records, replaced by typed placeholders: {counts}."]


def _dups_and_leaks(report: dict) -> list[str]:
    nd, dc = report["near_dup"], report["decontam"]
    lines = ["", "## Duplicates and leaks", ""]
    if nd["enabled"]:
        lines.append(f"- Near-duplicates (MinHash LSH, word {nd['ngram']}-grams, Jaccard >= {nd['threshold']}, "
                     f"{nd['num_perm']} permutations): {nd['duplicates']} removed in {nd['clusters']} clusters "
                     f"(sizes: {', '.join(f'{k}: {n}' for k, n in nd['cluster_sizes'].items()) or 'none'}).")
        for ex in nd["examples"]:
            dups = ", ".join(f"{d['ref']} (J={d['jaccard']:.2f})" for d in ex["near_duplicates"])
            lines.append(f"  - kept {ex['kept']}; removed {dups}")
    else:
        lines.append("- Near-duplicates: **off** (curate.near_dup.enabled).")
    leaked = report["leaked_eval_items"]
    exact = " and exact prompts" if dc.get("exact_prompt", {}).get("enabled") else ""
    lines.append(f"- Decontamination (word {dc['ngram']}-grams{exact} against {dc['eval_items']} eval items): "
                 f"{report['reasons'][v.EVAL_CONTAMINATION]} records removed, {len(leaked)} eval items leaked"
                 + (":" if leaked else "."))
    per_suite = dc.get("per_suite", {})
    if len(per_suite) > 1:  # boilerplate is judged per suite; show each suite's share of it
        lines.append("  - boilerplate n-grams per suite: " + ", ".join(
            f"{name} {s['boilerplate_ngrams']} ({s['items']} items, {s['undetectable_items']} undetectable)"
            for name, s in per_suite.items()))
    per_slice = report.get("leaks_per_eval_slice")
    if per_slice:
        lines += ["", "Leaks per eval slice (items leaked, of them by exact prompt; training records removed; "
                  "items no check can detect):", "", "| suite | slice | items | leaked | by prompt | records "
                  "| undetectable |", "|---|---|---|---|---|---|---|"]
        for suite, slices in per_slice.items():
            for name, s in slices.items():
                lines.append(f"| {suite} | {name} | {s['items']} | {s['leaked_items']} | {s['leaked_by_prompt']} "
                             f"| {s['training_records']} | {s['undetectable_items']} |")
        lines.append("")
    for item, n in list(leaked.items())[:20]:
        lines.append(f"  - `{item}`: {n} training record{'s' if n > 1 else ''} (see quarantine.jsonl)")
    if len(leaked) > 20:
        lines.append(f"  - ... {len(leaked) - 20} more in reports/curate.json")
    return lines


def _lengths(report: dict, png: str | None) -> list[str]:
    t = report["length_tokens"]
    lines = ["", "## Lengths", "",
             f"Tokens under the chat template, kept records: min {t.get('min', '-')}, median {t.get('p50', '-')}, "
             f"p90 {t.get('p90', '-')}, max {t.get('max', '-')} (limits {report['min_seq_len_tokens']}-"
             f"{report['max_seq_len_tokens']})."]
    if png:
        lines += ["", f"![token lengths before and after curation]({png})"]
    return lines
