"""What changes when the default pipeline is rebuilt on another platform class.

    python -m benchmarks.platform_diff --a-rev <commit> --a-label "..." --out benchmarks/results/platform_diff.json

Compares the default pipeline's committed outputs at a git revision (run A, made on one host
class) with the working tree's (run B, `make run` on this host): the curated data, the per-step
training loss, the adapter's bytes (DVC's hash of artifacts/adapter in dvc.lock), the bundle
digest, the evaluation (overall, per slice, damage), and the golden outputs token for token,
item by item. Reads only committed files (`git show`) and the working tree. The platforms come
from the reports where they are recorded (runs before the platform was recorded are labelled
with --a-label).

With --kernel-items N it also measures, on this machine, what bitsandbytes' CPU kernel choice
alone changes: the first N golden prompts of the working tree's bundle generated greedily with
the packed bf16 kernel (`gemv_4bit`, what an AVX512-BF16 CPU runs by default) and with the
dequantize-then-matmul kernel (what every other CPU runs), token for token. It needs a CPU
with AVX512-BF16; elsewhere the packed kernel does not exist and the check is skipped.
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

from serving.replay import first_difference

REPO = Path(__file__).resolve().parents[1]


def _at(rev: str | None, rel: str):
    text = (subprocess.run(["git", "show", f"{rev}:{rel}"], cwd=REPO, capture_output=True, text=True, check=True).stdout
            if rev else (REPO / rel).read_text(encoding="utf-8"))
    if rel.endswith(".lock"):
        import yaml

        return yaml.safe_load(text)
    return json.loads(text)


def _out_md5(lock: dict, stage: str, path: str) -> str | None:
    for out in lock["stages"][stage].get("outs", []):
        if out["path"] == path:
            return out.get("md5")
    return None


def _train(a: dict, b: dict) -> dict:
    la, lb = [s["loss"] for s in a["steps"]], [s["loss"] for s in b["steps"]]
    diffs = [abs(x - y) for x, y in zip(la, lb)]
    first_apart = next((i + 1 for i, d in enumerate(diffs) if d > 1e-4), None)
    return {"steps": len(diffs), "max_abs_loss_diff": max(diffs), "first_step_loss_diff_over_1e-4": first_apart,
            "loss_diff_at_step": {str(s): round(diffs[s - 1], 6) for s in (1, 10, 25, 26, len(diffs)) if s <= len(diffs)},
            "val_loss_a": a["val"], "val_loss_b": b["val"]}


def _eval(a: dict, b: dict) -> dict:
    head = b["headline_metric"]
    slices = sorted(set(a["slices"]) & set(b["slices"]))
    damage = {k: [a.get("damage", {}).get(k), b.get("damage", {}).get(k)] for k in ("flip_rate", "worst_slice_drop")}
    return {"headline_metric": head,
            "overall": [a["overall"][head]["mean"], b["overall"][head]["mean"]],
            "slices": {s: [a["slices"][s][head]["mean"], b["slices"][s][head]["mean"]] for s in slices},
            "nll_p99": [a.get("nll_per_token", {}).get("p99"), b.get("nll_per_token", {}).get("p99")],
            "damage": damage}


def _golden(a: dict, b: dict) -> dict:
    pa, pb = {g["id"]: g for g in a["prompts"]}, {g["id"]: g for g in b["prompts"]}
    common = sorted(set(pa) & set(pb))
    firsts = [first_difference(pa[i]["token_ids"], pb[i]["token_ids"]) for i in common]
    differ = [f for f in firsts if f is not None]
    same_prompt = sum(pa[i]["prompt_ids"] == pb[i]["prompt_ids"] for i in common)
    return {"items": len(common), "same_prompt_ids": same_prompt, "identical_answers": len(common) - len(differ),
            "first_difference_median_token": statistics.median(differ) if differ else None,
            "first_difference_min_token": min(differ) if differ else None}


def kernel_check(bundle_dir: str, golden: dict, n: int) -> dict:
    """Greedy answers of the first n golden prompts under either CPU 4-bit kernel, on this machine."""
    import bitsandbytes.functional as bf

    from pipeline.bundle.verify import verify_bundle
    from pipeline.engines.base import GenerationRequest, SamplingParams
    from pipeline.engines.hf import HFEngine
    from pipeline.platform import four_bit_layers, is_packed

    if not bf.has_avx512bf16():
        return {"skipped": "this CPU has no AVX512-BF16: bitsandbytes has no packed kernel here"}
    bundle = verify_bundle(bundle_dir)
    prompts = golden["prompts"][:n]
    reqs = [GenerationRequest(g["prompt_ids"], SamplingParams(max_new_tokens=g["max_new_tokens"])) for g in prompts]
    import bitsandbytes.nn.modules as bnb_modules

    import pipeline.engines.dequant as dequant

    answers = {}
    probe, prepare = bnb_modules.has_avx512bf16, dequant.prepare_for_inference
    for kernel, packed in (("cpu-packed-bf16", True), ("cpu-dequantize", False)):
        # Linear4bit reads the CPU probe when it is built, and the engine's first forward (its
        # self-check) already converts: the probe is answered before the model loads. Engines
        # keep every layer off the packed kernel (pipeline/engines/dequant.py), so the packed
        # arm loads the model as bitsandbytes alone would, without that step.
        bnb_modules.has_avx512bf16 = (lambda: True) if packed else (lambda: False)
        if packed:
            dequant.prepare_for_inference = lambda model, budget_bytes=None: None
        try:
            engine = HFEngine.from_bundle(bundle)
        finally:
            bnb_modules.has_avx512bf16, dequant.prepare_for_inference = probe, prepare
        layers = four_bit_layers(engine.model)
        if any(is_packed(m) for _n, m in layers) != packed:
            raise RuntimeError(f"the {kernel} arm did not get that kernel")
        t0 = time.perf_counter()
        answers[kernel] = ([c.token_ids for c in engine.generate(reqs)], time.perf_counter() - t0)
        del engine
    (packed_ids, packed_s), (deq_ids, deq_s) = answers["cpu-packed-bf16"], answers["cpu-dequantize"]
    firsts = [first_difference(a, b) for a, b in zip(packed_ids, deq_ids)]
    differ = [f for f in firsts if f is not None]
    golden_same = sum(g["token_ids"] == a for g, a in zip(prompts, packed_ids))
    return {"items": len(prompts), "identical_answers": len(prompts) - len(differ),
            "first_difference_median_token": statistics.median(differ) if differ else None,
            "packed_equals_golden": golden_same, "generate_s": {"cpu-packed-bf16": round(packed_s, 1),
                                                                "cpu-dequantize": round(deq_s, 1)},
            "tokens": sum(len(a) for a in packed_ids) + sum(len(a) for a in deq_ids)}


def compare(a_rev: str, a_label: str, b_label: str) -> dict:
    before = [round(x, 2) for x in os.getloadavg()]
    lock_a, lock_b = _at(a_rev, "dvc.lock"), _at(None, "dvc.lock")
    ev_a, ev_b = _at(a_rev, "reports/eval.json"), _at(None, "reports/eval.json")
    tr_a, tr_b = _at(a_rev, "reports/train.json"), _at(None, "reports/train.json")
    md5 = {k: [_out_md5(lock_a, s, p), _out_md5(lock_b, s, p)] for k, s, p in (
        ("curated_data", "curate", "data/curated"), ("quantized_base", "quantize", "artifacts/base_q"),
        ("adapter", "train", "artifacts/adapter"), ("bundle", "bundle", "artifacts/bundle"))}
    return {
        "a": {"revision": a_rev, "label": a_label, "platform": ev_a.get("platform"),
              "train_platform": tr_a.get("platform")},
        "b": {"revision": "working tree", "label": b_label, "platform": ev_b.get("platform"),
              "train_platform": tr_b.get("platform")},
        "identical": {k: v[0] == v[1] for k, v in md5.items()},
        "dvc_md5": md5,
        "bundle_digest": [ev_a["bundle_digest"], ev_b["bundle_digest"]],
        "train": _train(tr_a, tr_b),
        "eval": _eval(ev_a, ev_b),
        "golden": _golden(_at(a_rev, "reports/golden.json"), _at(None, "reports/golden.json")),
        "load_avg_before": before,
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.platform_diff", description=__doc__.splitlines()[0])
    p.add_argument("--a-rev", required=True, help="git revision whose committed reports are run A")
    p.add_argument("--a-label", required=True, help="the host class run A was made on")
    p.add_argument("--b-label", required=True, help="the host class the working tree's run was made on")
    p.add_argument("--out", required=True)
    p.add_argument("--kernel-items", type=int, default=0, help="also compare the two CPU 4-bit kernels on this "
                                                                 "many golden prompts (needs AVX512-BF16)")
    p.add_argument("--bundle", default="artifacts/bundle")
    args = p.parse_args(argv)
    from pipeline.files import atomic_write_json

    result = compare(args.a_rev, args.a_label, args.b_label)
    if args.kernel_items:
        load = [round(x, 2) for x in os.getloadavg()]
        result["kernel_check"] = {**kernel_check(args.bundle, _at(None, "reports/golden.json"), args.kernel_items),
                                  "load_avg_before": load, "load_avg_after": [round(x, 2) for x in os.getloadavg()]}
    atomic_write_json(Path(args.out), result)
    print(json.dumps({k: result[k] for k in ("identical", "golden")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
