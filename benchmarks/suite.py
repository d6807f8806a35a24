"""Every benchmark of the project: how to run it, what it needs, where its result goes.

The runner (`python -m benchmarks`) and the page (benchmarks/page.py) both read this list, so
a benchmark added here is run by `make bench` and appears on RESULTS.md, or is listed there as
not run, with the reason.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"


@dataclass(frozen=True)
class Bench:
    name: str                     # --only NAME, results/NAME.json
    title: str
    module: str                   # run as `python -m MODULE ... --out FILE`
    requires: tuple[tuple[str, str], ...] = ()   # (path, the command that makes it)
    imports: tuple[tuple[str, str], ...] = ()    # (module, how to install it)
    programs: tuple[str, ...] = ()               # executables it calls
    quick_args: tuple[str, ...] = ()             # --quick: smoke sizes, not for comparison
    full_args: tuple[str, ...] = ()              # the published run's sizes (defaults unless set)
    notes: str = ""

    @property
    def result_file(self) -> str:
        return f"{self.name}.json"


QUANTIZED = (("artifacts/base_q/quantize.json", "dvc repro quantize"),)
BASE = (("artifacts/base/config.json", "dvc repro base"),)
BUNDLE = (("artifacts/bundle/manifest.json", "dvc repro bundle"),)
CURATED = (("data/curated/train.jsonl", "dvc repro curate"),)

# In the order they run: quick and I/O-bound first, the long CPU-bound ones after. full_args
# trim the two longest training benchmarks (2 repetitions instead of 3, 4 steps instead of 6) so
# that the whole page is measured in about 40 minutes on 2 cores.
BENCHMARKS: tuple[Bench, ...] = (
    Bench("verify", "Bundle verification vs sha256sum", "benchmarks.verify", BUNDLE,
          programs=("sha256sum",), quick_args=("--reps", "2")),
    Bench("noop_repro", "No-op dvc repro", "benchmarks.noop_repro", (("dvc.lock", "dvc repro"),),
          imports=(("dvc", "pip install -e '.[dev]'"),), quick_args=("--reps", "2")),
    Bench("curate", "Curate throughput (100k records)", "benchmarks.curate", BASE,
          quick_args=("--records", "2000")),
    Bench("streaming", "Streaming detokenization: DecodeStream vs re-decoding", "benchmarks.streaming",
          quick_args=("--tokens", "200", "--reps", "1")),
    Bench("nf4_memory", "NF4 vs 16-bit memory", "benchmarks.nf4_memory", BASE + QUANTIZED,
          quick_args=("--seq-len", "128", "--steps", "1")),
    Bench("memory_plan", "Memory planner vs measured peaks", "benchmarks.memory_plan", QUANTIZED,
          quick_args=("--models", "tiny")),
    Bench("memory_plan_avx2", "Memory planner vs measured peaks, an AVX2-only host simulated",
          "benchmarks.memory_plan", QUANTIZED, quick_args=("--models", "tiny", "--simulate-avx2"),
          full_args=("--models", "default", "--simulate-avx2")),
    Bench("train_checkpointing", "Gradient checkpointing on vs off", "benchmarks.train_checkpointing",
          BASE + QUANTIZED + CURATED, quick_args=("--steps", "1"), full_args=("--steps", "4")),
    Bench("train_vs_trl", "Training vs TRL SFTTrainer", "benchmarks.train_vs_trl", BASE + QUANTIZED + CURATED,
          imports=(("trl", "pip install -c constraints.txt -e '.[bench]'"),),
          quick_args=("--steps", "1", "--reps", "1", "--no-padding-free"), full_args=("--reps", "2")),
    Bench("invariance", "Batch invariance on the bundle: invariant vs padded hf engine", "benchmarks.invariance",
          BUNDLE, quick_args=("--prompts", "2", "--max-tokens", "4", "--steps", "3")),
    Bench("scoring", "Log-likelihood and choice scoring: whole pairs vs one prefill per context",
          "benchmarks.scoring", BUNDLE + (("reports/golden.json", "dvc repro evaluate"),),
          quick_args=("--items", "2", "--options", "2")),
    Bench("decode_blocks", "Decode steps of many rows: one pass of 8-row matmul blocks vs a pass per 8 rows",
          "benchmarks.decode_blocks", BUNDLE + (("reports/golden.json", "dvc repro evaluate"),),
          quick_args=("--items", "2")),
    Bench("decode_step", "A decode step with peft's LoRA forward vs one call per LoRA layer",
          "benchmarks.decode_step", BUNDLE + (("reports/golden.json", "dvc repro evaluate"),),
          quick_args=("--steps", "3")),
    Bench("decode_widths", "Decode steps in blocks of exactly 8 rows vs every width that computes a row alike",
          "benchmarks.decode_widths", BUNDLE + (("reports/golden.json", "dvc repro evaluate"),),
          quick_args=("--steps", "3")),
    Bench("fixed_matmul", "One-row decode matmuls: the fixed-order kernel vs the BLAS blocks it replaced",
          "benchmarks.fixed_matmul", quick_args=("--steps", "1")),
    Bench("row_slots", "A row in every slot of a decode block, on both host classes (AVX2 simulated)",
          "benchmarks.row_slots", BUNDLE + (("reports/golden.json", "dvc repro evaluate"),),
          quick_args=("--prompts", "1")),
    Bench("exports", "Exports (merged, GGUF, and a broken one) evaluated and gated against the bundle",
          "benchmarks.exports", BUNDLE + (("reports/eval_samples.jsonl", "dvc repro evaluate"),),
          imports=(("llama_cpp", "pip install -c constraints.txt -e '.[bench]' (builds llama-cpp-python)"),),
          quick_args=("--gguf-types", "", "--no-broken")),
    Bench("release_exports", "The default bundle released with its merged and GGUF exports beside it",
          "benchmarks.release_exports", BUNDLE + (("reports/gate.json", "dvc repro gate"),
                                                  ("reports/golden.json", "dvc repro evaluate")),
          imports=(("llama_cpp", "pip install -c constraints.txt -e '.[bench]' (builds llama-cpp-python)"),),
          quick_args=("--gguf-types", "")),
    Bench("exports_exp", "The default task's exports through `dvc exp run`, compared with `dvc exp show`",
          "benchmarks.exports_exp", BUNDLE + (("reports/gate.json", "dvc repro gate"),
                                              ("reports/golden.json", "dvc repro evaluate")),
          imports=(("llama_cpp", "pip install -c constraints.txt -e '.[bench]' (builds llama-cpp-python)"),),
          quick_args=("--gguf-types", "")),
    Bench("llamacpp_peer", "llama.cpp beside the engine: one-row decode, and the GGUF export's answers",
          "benchmarks.llamacpp_peer", BUNDLE + (("reports/golden.json", "dvc repro evaluate"),),
          imports=(("llama_cpp", "pip install -c constraints.txt -e '.[bench]' (builds llama-cpp-python)"),),
          quick_args=("--items", "2")),
    Bench("llamacpp_server", "tailgate's server beside llama.cpp's llama-server (parallel slots), same prompts",
          "benchmarks.llamacpp_server", (("artifacts/release/release.json", "dvc repro release"),
                                         (".llama-server/bin/llama-server", "make llama-server")),
          quick_args=("--items", "2", "--types", "f32", "--slots", "2")),
    Bench("serving", "Serving vs naive generate (and vLLM CPU)", "benchmarks.serving", BUNDLE,
          quick_args=("--requests", "2", "--max-tokens", "8")),
    Bench("soak", "Soak: an hour of mixed load at concurrency 8", "benchmarks.soak",
          (("artifacts/release/release.json", "dvc repro release"),),
          quick_args=("--minutes", "1", "--sample-s", "5", "--baseline-minutes", "0.25"),
          full_args=("--minutes", "60", "--server-arg=--require-signature")),
)
NAMES = tuple(b.name for b in BENCHMARKS)


def by_name(name: str) -> Bench:
    for b in BENCHMARKS:
        if b.name == name:
            return b
    raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(NAMES)}")


def _can_import(python: str | Path, module: str) -> bool:
    code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    return subprocess.run([str(python), "-c", code], capture_output=True).returncode == 0


@dataclass
class Plan:
    """How one benchmark will run here, or why it will not."""

    python: str
    skip_reason: str | None = None
    notes: list[str] = field(default_factory=list)


def plan(bench: Bench, repo: Path = REPO) -> Plan:
    python = sys.executable
    notes = []
    if bench.name == "serving":
        # vLLM lives in its own environment (Makefile: .venv-vllm); the serving benchmark run
        # there measures the hf server, the naive loop and vLLM in one run.
        if VLLM_PYTHON.exists() and _can_import(VLLM_PYTHON, "vllm"):
            python = str(VLLM_PYTHON)
        elif VLLM_PYTHON.exists():
            notes.append("vLLM not measured: .venv-vllm exists but cannot import vllm "
                         "(rebuild it: rm -rf .venv-vllm && make .venv-vllm/.installed)")
        else:
            notes.append("vLLM not measured: .venv-vllm is not built here (make .venv-vllm/.installed, "
                         "then rerun: python -m benchmarks --only serving)")
    missing = [f"{path} (make it with `{how}`)" for path, how in bench.requires if not (repo / path).exists()]
    if missing:
        return Plan(python, "missing " + "; ".join(missing), notes)
    for prog in bench.programs:
        if shutil.which(prog) is None:
            return Plan(python, f"`{prog}` is not on PATH", notes)
    for module, how in bench.imports:
        if not _can_import(python, module):
            return Plan(python, f"`{module}` is not installed in {python} (install: {how})", notes)
    return Plan(python, None, notes)
