"""Decode steps in blocks of exactly 8 rows vs blocks of every width that computes a row alike.

    python -m benchmarks.decode_widths --out benchmarks/results/decode_widths.json [--steps 12]

On the default bundle, golden prompts prefilled alone, then `--steps` decode steps fed the
golden tokens, for 1, 3, 8, 13 and 32 live rows: the median wall time of a step with every
matmul on blocks of exactly DECODE_WIDTH rows (the engine before pipeline/engines/widths.py:
a lone request padded to 8 rows through every weight), and with the widths the probe allows for
each shape on this machine; the arms alternate (two rounds each) so that drift on a shared
machine falls on both. Every row's logits of every step must be bitwise equal between the arms:
the widths are a speed change only. Since float32 decode blocks run the fixed-order kernel
(pipeline/engines/fixedmm.py), which needs no widths, this measures the BLAS fallback
(TAILGATE_DECODE_KERNEL=blas: a bfloat16 compute dtype, or a build without the kernel).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from benchmarks.decode_step import _arm, step_main

LIVE = (1, 3, 8, 13, 32)
ROUNDS = 2


def run(bundle_dir: str, golden_path: str, steps: int) -> dict:
    import os

    import torch

    from pipeline.engines.fixedmm import ENV_KERNEL

    os.environ[ENV_KERNEL] = "blas"  # the widths are the BLAS blocks'

    from pipeline.bundle.verify import verify_bundle
    from pipeline.engines.hf import HFEngine
    from pipeline.engines.rowwise import DECODE_WIDTH

    golden = json.loads(Path(golden_path).read_text())["prompts"][:max(LIVE)]
    bundle = verify_bundle(bundle_dir)
    engine = HFEngine.from_bundle(bundle)
    runner = engine._stepper
    blocks = runner._blocks
    probed = {key: blocks.allowed(key) for key in list(blocks.plan)}
    fixed = {key: (DECODE_WIDTH,) for key in probed}
    out = {}
    with torch.inference_mode():
        prefilled = [runner.start(g["prompt_ids"])[0] for g in golden]
        for n in LIVE:
            arms = {"fixed": ([], None), "probed": ([], None)}
            for _ in range(ROUNDS):
                for name, table in (("fixed", fixed), ("probed", probed)):
                    blocks.widths = dict(table)
                    rows = blocks.rows(n)
                    logits, times = _arm(runner, prefilled, golden, n, steps)
                    kept, first = arms[name]
                    kept.extend(times)
                    arms[name] = (kept, first if first is not None else logits)
                    out.setdefault(str(n), {})[f"{name}_rows"] = rows
            fixed_ms = statistics.median(arms["fixed"][0]) * 1e3
            probed_ms = statistics.median(arms["probed"][0]) * 1e3
            out[str(n)].update(fixed_ms=round(fixed_ms, 1), probed_ms=round(probed_ms, 1),
                               speedup=round(fixed_ms / probed_ms, 3),
                               bitwise_equal=torch.equal(arms["fixed"][1], arms["probed"][1]))
    blocks.widths = dict(probed)
    shapes = {f"{i}x{o} {str(d).removeprefix('torch.')}{' +bias' if b else ''}": list(w)
              for (i, o, d, b), w in sorted(probed.items(), key=lambda kv: (kv[0][0], kv[0][1]))}
    return {"bundle_digest": bundle.manifest.bundle_digest, "threads": torch.get_num_threads(),
            "decode_width": DECODE_WIDTH, "widths": shapes, "steps_per_arm": steps, "rounds": ROUNDS, "rows": out}


def page(r: dict) -> tuple[list[tuple[str, str, str, str]], list[str]]:
    """RESULTS.md's headline rows (measure, measured, target, verdict) and section for a result."""
    exact = all(a["bitwise_equal"] for a in r["rows"].values())
    a1 = r["rows"]["1"]
    ratio = a1["fixed_ms"] / a1["probed_ms"]
    rows = [("one-row decode step: probed block widths vs blocks of exactly 8",
             f"{ratio:.2f}x ({a1['probed_ms']:g} vs {a1['fixed_ms']:g} ms)", ">= 1x, bitwise equal",
             "pass" if exact and ratio >= 1 else "FAIL")]
    lines = ["| live rows | rows in the pass (8-row blocks / probed) | 8-row blocks, ms/step | probed widths, "
             "ms/step | speed-up | logits bitwise equal |", "|---|---|---|---|---|---|"]
    for n, a in r["rows"].items():
        lines.append(f"| {n} | {a['fixed_rows']} / {a['probed_rows']} | {a['fixed_ms']:g} | {a['probed_ms']:g} | "
                     f"{a['fixed_ms'] / a['probed_ms']:.2f}x | {a['bitwise_equal']} |")
    lines.append(f"\nBundle {r['bundle_digest'][:12]}, {r['threads']} threads; widths per shape: "
                 + "; ".join(f"{k}: {min(v)}-{max(v)}" if v == list(range(min(v), max(v) + 1))
                             else f"{k}: {','.join(map(str, v))}" for k, v in r["widths"].items())
                 + f". Median of {r['rounds']} x {r['steps_per_arm'] - 1} timed steps an arm, the arms "
                 f"alternating. Load average {r['load_avg_before']} before, {r['load_avg_after']} after.")
    return rows, lines


def main(argv=None) -> int:
    return step_main(argv, "python -m benchmarks.decode_widths", __doc__, run)


if __name__ == "__main__":
    sys.exit(main())
