"""Decode steps of many rows: one forward pass of 8-row matmul blocks vs one pass per 8 rows.

    python -m benchmarks.decode_blocks --out benchmarks/results/decode_blocks.json [--items 64]

On the default bundle, with the golden prompts (spread over the slices):

- `steps`: for 8, 16 and 32 live rows, the wall time of a decode step run as one forward pass
  (every matmul on blocks of exactly 8 rows, `pipeline/engines/rowwise.py`) and as one pass per
  8 rows (the engine before), and whether every row's logits are bitwise equal between the two
  and to the row decoding alone;
- `generate`: `--items` golden prompts generated greedily with 8 and with 32 rows decoding at a
  time (evaluation's `batch_size`), and whether every answer is token for token the evaluated one
  in reports/golden.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

WIDTHS = (8, 16, 32)
STEPS = 8


def _decode(runner, seqs, tokens, per_pass: int):
    import torch

    return torch.cat([runner.decode(seqs[i:i + per_pass], tokens[i:i + per_pass])
                      for i in range(0, len(seqs), per_pass)])


def _steps(engine, golden: list[dict]) -> dict:
    """Each arm decodes STEPS golden tokens from copies of the same prefilled rows."""
    import torch

    runner = engine._stepper
    out = {}
    with torch.inference_mode():
        prefilled = [runner.start(g["prompt_ids"])[0] for g in golden[:max(WIDTHS)]]
        feed = [[g["token_ids"][k] if k < len(g["token_ids"]) else 0 for g in golden[:max(WIDTHS)]]
                for k in range(STEPS)]
        _decode(runner, [s.copy() for s in prefilled[:8]], feed[0][:8], 8)  # warm

        def arm(n: int, per_pass: int):
            seqs = [s.copy() for s in prefilled[:n]]
            logits, t0 = [], time.perf_counter()
            for k in range(STEPS):
                logits.append(_decode(runner, seqs, feed[k][:n], per_pass))
            return torch.stack(logits), (time.perf_counter() - t0) / STEPS

        alone, _ = arm(max(WIDTHS), 1)
        for n in WIDTHS:
            split, t_split = arm(n, 8)
            one, t_one = arm(n, n)
            out[str(n)] = {"one_pass_ms": round(t_one * 1e3, 1), "passes_of_8_ms": round(t_split * 1e3, 1),
                           "speedup": round(t_split / t_one, 2), "equal_to_passes_of_8": torch.equal(one, split),
                           "equal_to_alone": torch.equal(one, alone[:, :n])}
    return out


def _generate(engine, golden: list[dict]) -> dict:
    from pipeline.engines.base import GenerationRequest, SamplingParams

    requests = [GenerationRequest(g["prompt_ids"], SamplingParams(max_new_tokens=g["max_new_tokens"])) for g in golden]
    out = {}
    for live in (8, 32):
        engine.prefixes.clear()
        t0 = time.perf_counter()
        done = engine.generate(requests, max_live=live)
        wall = time.perf_counter() - t0
        out[str(live)] = {"wall_s": round(wall, 1),
                          "tokens": sum(len(c.token_ids) for c in done),
                          "identical_to_golden": sum(c.token_ids == g["token_ids"] for c, g in zip(done, golden))}
    return out


def run(bundle_dir: str, golden_path: str, items: int) -> dict:
    import torch

    from pipeline.bundle.verify import verify_bundle
    from pipeline.engines.hf import HFEngine

    golden = json.loads(Path(golden_path).read_text())["prompts"]
    bundle = verify_bundle(bundle_dir)
    engine = HFEngine.from_bundle(bundle)
    return {"bundle_digest": bundle.manifest.bundle_digest, "threads": torch.get_num_threads(),
            "steps_per_arm": STEPS, "steps": _steps(engine, golden),
            "items": min(items, len(golden)), "generate": _generate(engine, golden[:items])}


def page(r: dict) -> tuple[list[tuple[str, str, str, str]], list[str]]:
    """RESULTS.md's headline rows (measure, measured, target, verdict) and section for a result."""
    s32, g = r["steps"]["32"], r["generate"]
    exact = all(a["equal_to_passes_of_8"] and a["equal_to_alone"] for a in r["steps"].values())
    same = all(a["identical_to_golden"] == r["items"] for a in g.values())
    rows = [("decode step of 32 rows: one pass of 8-row blocks vs four 8-row passes",
             f"{s32['speedup']:g}x ({s32['one_pass_ms']:g} vs {s32['passes_of_8_ms']:g} ms)", "> 1x, bitwise equal",
             "pass" if exact and s32["speedup"] > 1 else "FAIL"),
            (f"generation of {r['items']} golden items, 32 vs 8 rows at a time",
             f"{g['8']['wall_s'] / g['32']['wall_s']:.2f}x ({g['32']['wall_s']:g} vs {g['8']['wall_s']:g} s)",
             "every answer the evaluated one", "pass" if same else "FAIL")]
    lines = ["| live rows | one pass, ms/step | one pass per 8 rows, ms/step | speed-up | equal to 8-row passes | "
             "equal to alone |", "|---|---|---|---|---|---|"]
    for n, a in r["steps"].items():
        lines.append(f"| {n} | {a['one_pass_ms']:g} | {a['passes_of_8_ms']:g} | {a['speedup']:g}x | "
                     f"{a['equal_to_passes_of_8']} | {a['equal_to_alone']} |")
    lines.append("")
    lines.append("| rows at a time | wall s | tokens | answers identical to the evaluated ones |")
    lines.append("|---|---|---|---|")
    for n, a in g.items():
        lines.append(f"| {n} | {a['wall_s']:g} | {a['tokens']:,} | {a['identical_to_golden']} of {r['items']} |")
    lines.append(f"\nBundle {r['bundle_digest'][:12]}, {r['threads']} threads, {r['steps_per_arm']} steps an arm; "
                 f"the generation includes each prompt's prefill. Load average {r['load_avg_before']} before, "
                 f"{r['load_avg_after']} after.")
    return rows, lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.decode_blocks", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--bundle", default="artifacts/bundle")
    p.add_argument("--golden", default="reports/golden.json")
    p.add_argument("--items", type=int, default=64)
    args = p.parse_args(argv)
    from benchmarks import machine, write_result

    record = {"machine": machine(), "load_avg_before": [round(x, 2) for x in os.getloadavg()]}
    record.update(run(args.bundle, args.golden, args.items))
    record["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    write_result(args.out, record)
    print(json.dumps({k: record[k] for k in ("steps", "generate")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
