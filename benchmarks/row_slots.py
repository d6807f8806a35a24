"""A row's logits in every slot of a decode block, and answers alone vs together, on both host classes.

    python -m benchmarks.row_slots --out benchmarks/results/row_slots.json [--prompts 8]

On the default bundle, in one subprocess per arm (this host's dispatch, and MKL, ATen and
oneDNN capped at AVX2: the other host class, simulated), two engines: the one tailgate builds
(each decode matmul shape multiplied the way pipeline/engines/blockmm.py's probe found
row-invariant) and the same engine with the probe overruled to `F.linear` everywhere (what it
did before). For each: one golden prompt's first decode step with the row put in every slot of
an 8-row pass (the largest logit difference from slot 0), the median time of an 8-row decode
step, and `--prompts` golden prompts generated each alone and all together at concurrency 8
(how many answers differ: what a user would see). On an AVX2-only host both arms are one class.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ARMS = {"native": {}, "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                               "MKL_ENABLE_INSTRUCTIONS": "AVX2"}}
STEPS = 12


def _engine_arm(engine, golden: list[dict]) -> dict:
    import torch

    from pipeline.engines.base import GenerationRequest, SamplingParams
    from pipeline.engines.rowwise import DECODE_WIDTH

    runner = engine._stepper
    eight = golden[:DECODE_WIDTH]
    with torch.inference_mode():
        pre = [runner.start(g["prompt_ids"])[0] for g in eight]
        feed = [g["token_ids"][0] for g in eight]
        first = runner.decode([s.copy() for s in pre], feed)[0]
        diffs = []
        for shift in range(1, DECODE_WIDTH):
            order = [(i + shift) % DECODE_WIDTH for i in range(DECODE_WIDTH)]
            out = runner.decode([pre[i].copy() for i in order], [feed[i] for i in order])
            diffs.append(float((out[order.index(0)] - first).abs().max()))
        seqs, times = [s.copy() for s in pre], []
        for k in range(STEPS):
            step = [g["token_ids"][k] if k < len(g["token_ids"]) else 0 for g in eight]
            t0 = time.perf_counter()
            runner.decode(seqs, step)
            times.append(time.perf_counter() - t0)
    requests = [GenerationRequest(g["prompt_ids"], SamplingParams(max_new_tokens=g["max_new_tokens"])) for g in golden]
    together = engine.generate(requests, max_live=DECODE_WIDTH)
    alone = [engine.generate([r])[0] for r in requests]
    return {"slot_max_abs_diff": max(diffs), "slots_bitwise_equal": all(d == 0.0 for d in diffs),
            "step_ms_8_rows": round(statistics.median(times[1:]) * 1e3, 1),
            "answers": len(requests),
            "answers_differing_alone_vs_together": sum(a.token_ids != t.token_ids for a, t in zip(alone, together)),
            "logprobs_differing_alone_vs_together": sum(a.logprobs != t.logprobs for a, t in zip(alone, together))}


def run_arm(bundle_dir: str, golden_path: str, prompts: int) -> dict:
    """Both engines in this process (its environment decides the host class)."""
    import pipeline.engines.rowwise as rowwise
    from pipeline.bundle.verify import verify_bundle
    from pipeline.engines.hf import HFEngine
    from pipeline.platform import detect

    golden = json.loads(Path(golden_path).read_text())["prompts"][:prompts]
    bundle = verify_bundle(bundle_dir)
    engine = HFEngine.from_bundle(bundle)
    out = {"platform": detect(engine.model).as_record(), "probed": _engine_arm(engine, golden)}
    del engine
    rowwise._RowBlocks.how = lambda self, *key: "linear"  # overrule the probe: F.linear on every block
    out["f_linear"] = _engine_arm(HFEngine.from_bundle(bundle), golden)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.row_slots", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--bundle", default="artifacts/bundle")
    p.add_argument("--golden", default="reports/golden.json")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--arm-out", help=argparse.SUPPRESS)  # internal: one arm, in a subprocess
    args = p.parse_args(argv)
    if args.arm_out:
        Path(args.arm_out).write_text(json.dumps(run_arm(args.bundle, args.golden, args.prompts)))
        return 0
    from benchmarks import machine, write_result

    record = {"machine": machine(), "load_avg_before": [round(x, 2) for x in os.getloadavg()],
              "bundle_digest": json.loads(Path(args.golden).read_text())["bundle_digest"], "prompts": args.prompts,
              "steps_timed": STEPS - 1, "arm_env": ARMS, "arms": {}}
    for name, env in ARMS.items():
        tmp = Path(args.out).with_suffix(f".{name}.tmp")
        cmd = [sys.executable, "-m", "benchmarks.row_slots", "--out", args.out, "--bundle", args.bundle,
               "--golden", args.golden, "--prompts", str(args.prompts), "--arm-out", str(tmp)]
        subprocess.run(cmd, check=True, env={**os.environ, **env})
        record["arms"][name] = json.loads(tmp.read_text())
        tmp.unlink()
    record["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    write_result(args.out, record)
    print(json.dumps({k: {e: v for e, v in a.items() if e != "platform"} for k, a in record["arms"].items()}, indent=1))
    return 0


def page(r: dict) -> tuple[list[tuple[str, str, str, str]], list[str]]:
    """RESULTS.md's headline rows (measure, measured, target, verdict) and section for a result."""
    rows, lines = [], ["| host class | engine | decode matmul | slot 0 vs others, max abs logit diff | "
                       "8-row step, ms | answers alone vs together: tokens differ | log-probs differ |",
                       "|---|---|---|---|---|---|---|"]
    for name, arm in r["arms"].items():
        plan = arm["platform"].get("decode_matmul") or "F.linear"
        for engine, label in (("probed", "probed (tailgate)"), ("f_linear", "F.linear everywhere (before)")):
            a = arm[engine]
            lines.append(f"| {name} | {label} | {plan if engine == 'probed' else 'F.linear'} | "
                         f"{a['slot_max_abs_diff']:.3g} | {a['step_ms_8_rows']:g} | "
                         f"{a['answers_differing_alone_vs_together']} of {a['answers']} | "
                         f"{a['logprobs_differing_alone_vs_together']} of {a['answers']} |")
        p = arm["probed"]
        rows.append((f"a row in every slot of a decode block, {name} dispatch",
                     f"max diff {p['slot_max_abs_diff']:g}; {p['answers_differing_alone_vs_together']} of "
                     f"{p['answers']} answers differ alone vs together", "bitwise equal",
                     "pass" if p["slots_bitwise_equal"] and p["logprobs_differing_alone_vs_together"] == 0 else "FAIL"))
    lines.append(f"\nBundle {r['bundle_digest'][:12]}, {r['prompts']} golden prompts, median of {r['steps_timed']} "
                 f"timed steps. Load average {r['load_avg_before']} before, {r['load_avg_after']} after.")
    return rows, lines


if __name__ == "__main__":
    sys.exit(main())
