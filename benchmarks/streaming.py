"""Streaming detokenization cost per token: serving's TextAssembler (tokenizers' DecodeStream)
against the implementation it replaced (re-decode every id so far at every token), on one long
answer, in one run.

The answer is real text (discharge notes from the repo's raw data) encoded with each tokenizer
and cut to --tokens ids, fed one id at a time as the server does, with two stop strings that
never occur (so the stop-string hold-back runs too). Both sides must release the same text;
the run fails otherwise. Reported per tokenizer and side: microseconds per token over the whole
answer (median over --reps), and over its first and last 10% (a linear-per-token cost shows up
as last >> first), and the old/new ratio.

    python -m benchmarks.streaming [--tokens 2000] [--reps 5] [--tokenizer DIR ...]

Tokenizers: the test suite's tiny byte-level BPE (tests/conftest.py build_tiny_model_dir, built
in a temporary directory) and, when present, the default base model's (artifacts/base).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from benchmarks import machine, versions, write_result

REPO = Path(__file__).resolve().parents[1]
STOPS = ("<<never-1>>", "### never 2")


class ReDecodeAssembler:
    """The replaced implementation (serving/text.py before DecodeStream), kept as the baseline:
    every token re-decodes all ids so far and releases the stable part."""

    def __init__(self, tokenizer: Any, stop_strings: Sequence[str] = ()) -> None:
        self.tokenizer, self.stop_strings = tokenizer, tuple(stop_strings)
        self.ids: list[int] = []
        self.text = ""
        self.stopped = False

    def add(self, token_id: int) -> str:
        if self.stopped:
            return ""
        self.ids.append(token_id)
        full = self._decode()
        cut = self._stop_at(full)
        if cut is not None:
            return self._release(full[:cut], True)
        stable = full.rstrip("\ufffd")
        hold = self._stop_prefix_len(stable)
        return self._release(stable[:len(stable) - hold], False)

    def finish(self) -> str:
        return "" if self.stopped else self._release(self._decode(), False)

    def _decode(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _stop_at(self, full: str) -> int | None:
        start = max(0, len(self.text) - max((len(s) for s in self.stop_strings), default=0))
        hits = [i for i in (full.find(s, start) for s in self.stop_strings) if i >= 0]
        return min(hits) if hits else None

    def _stop_prefix_len(self, text: str) -> int:
        best = 0
        for s in self.stop_strings:
            for k in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:k]):
                    best = k
                    break
        return best

    def _release(self, upto: str, stopped: bool) -> str:
        self.stopped = stopped
        new = upto[len(self.text):]
        self.text += new
        return new


def answer_ids(tokenizer: Any, n: int) -> list[int]:
    """n ids of real text: the raw discharge notes, concatenated until long enough."""
    from tests.conftest import corpus_lines

    text = ""
    for line in corpus_lines(2000):
        text += line + "\n"
        if len(text) > n * 12:  # no tokenizer here averages more than 12 characters a token
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) >= n:
                return list(ids[:n])
    raise SystemExit(f"the corpus is shorter than {n} tokens")


def run_once(make, ids: list[int]) -> tuple[list[float], str]:
    """Seconds per token (one id fed, as serving does per TokenEvent) and the released text."""
    asm = make()
    per_token, out = [], []
    for token_id in ids:
        t0 = time.perf_counter()
        released = asm.add(token_id)
        per_token.append(time.perf_counter() - t0)
        out.append(released if isinstance(released, str) else released.text)
    tail = asm.finish()
    out.append(tail if isinstance(tail, str) else tail.text)
    return per_token, "".join(out)


def measure(tokenizer: Any, label: str, n: int, reps: int) -> dict:
    from serving.text import TextAssembler, backend_tokenizer

    ids = answer_ids(tokenizer, n)
    full = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    sides = {"redecode_old": lambda: ReDecodeAssembler(tokenizer, STOPS),
             "decodestream_new": lambda: TextAssembler(tokenizer, STOPS)}
    runs: dict[str, list[list[float]]] = {k: [] for k in sides}
    for _ in range(reps):
        for name, make in sides.items():  # interleaved, so drifting load hits both alike
            per_token, text = run_once(make, ids)
            if text != full:
                raise SystemExit(f"{label}/{name}: released text differs from the full decode")
            runs[name].append(per_token)
    tenth = max(1, n // 10)
    out: dict[str, Any] = {"tokenizer": label, "vocab": len(tokenizer), "tokens": n, "chars": len(full),
                           "fast_path": backend_tokenizer(tokenizer) is not None}
    for name, rep_runs in runs.items():
        out[name] = {
            "us_per_token": round(statistics.median(sum(r) / n for r in rep_runs) * 1e6, 2),
            "us_per_token_first_10pct": round(statistics.median(sum(r[:tenth]) / tenth for r in rep_runs) * 1e6, 2),
            "us_per_token_last_10pct": round(statistics.median(sum(r[-tenth:]) / tenth for r in rep_runs) * 1e6, 2),
            "total_s_per_answer": [round(sum(r), 4) for r in rep_runs],
        }
    out["old_over_new_per_token"] = round(out["redecode_old"]["us_per_token"]
                                          / out["decodestream_new"]["us_per_token"], 1)
    return out


def page(r: dict) -> tuple[list[tuple[str, str, str, str]], list[str]]:
    """RESULTS.md's headline rows and section for a result."""
    from benchmarks.page import _fmt_x, _table, _x

    def us(side: dict) -> str:
        return (f"{side['us_per_token']:.2f} (first / last tenth {side['us_per_token_first_10pct']:.2f} / "
                f"{side['us_per_token_last_10pct']:.2f})")

    rows, table = [], []
    for e in r["results"]:
        old, new = e["redecode_old"], e["decodestream_new"]
        ratio = _x(old["us_per_token"], new["us_per_token"])
        table.append([e["tokenizer"], f"{e['vocab']:,}", us(old), us(new), _fmt_x(ratio)])
        rows.append((f"streamed text per token, {e['tokenizer']}: re-decode / DecodeStream", _fmt_x(ratio), "-", "-"))
    lines = _table(["tokenizer", "vocab", "re-decode us/token", "DecodeStream us/token", "re-decode / DecodeStream"],
                   table)
    lines.append(f"\nOne answer of {r['tokens']:,} tokens fed one id at a time with two stop strings that never "
                 f"occur, median of {r['reps']} repetitions; both sides released the same text. Load average "
                 f"{r['loadavg_before'][0]} before, {r['loadavg_after'][0]} after.")
    return rows, lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/streaming.json")
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tokenizer", nargs="*", default=None,
                    help="tokenizer directories (default: the tiny test tokenizer, and artifacts/base if present)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from transformers import AutoTokenizer

    load_before = [round(x, 2) for x in os.getloadavg()]
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dirs = args.tokenizer
        if dirs is None:
            from tests.conftest import build_tiny_model_dir

            dirs = [str(build_tiny_model_dir(Path(tmp) / "tiny_hf"))]
            if (REPO / "artifacts/base/tokenizer.json").exists():
                dirs.append(str(REPO / "artifacts/base"))
        for d in dirs:
            label = ("tiny test BPE (tests/conftest.py)" if d.startswith(tmp)
                     else os.path.relpath(d, REPO) if d.startswith(str(REPO)) else d)
            rows.append(measure(AutoTokenizer.from_pretrained(d), label, args.tokens, args.reps))
            print(json.dumps(rows[-1]), flush=True)
    result = {
        "benchmark": "streaming",
        "machine": machine(),
        "versions": versions("tokenizers", "transformers"),
        "loadavg_before": load_before,
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "wall_s": round(time.perf_counter() - t0, 1),
        "tokens": args.tokens,
        "reps": args.reps,
        "stop_strings": list(STOPS),
        "results": rows,
    }
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
