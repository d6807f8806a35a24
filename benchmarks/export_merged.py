"""The merged export against the shipped bundle, on the real default bundle.

For the first --items suite items (rendered as evaluation renders them): the largest logit
difference over every prompt position, and greedy tokens (--max-tokens, generate's own loop for
every model, so the loop is not what differs), between the shipped bundle and

- the merged export in float32 and in bfloat16 (pipeline/export/merged.py), and
- the usual recipe: the adapter merged into the original 16-bit base (`W16 + B·A·s`).

The shipped bundle is run twice: on bitsandbytes' dequantize path (the weights the export
merges; what evaluation runs on AVX2-only hosts) and as this host runs it (bitsandbytes packs
the 4-bit layers for its bf16 CPU kernel on AVX512-BF16 hosts).

    python -m benchmarks.export_merged [--bundle artifacts/bundle] [--items 8] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import load_avg, machine, versions, write_result


def _prompts(bundle_dir: Path, suite_dir: str, n: int, tok) -> list[list[int]]:
    from pipeline.bundle.verify import verify_bundle
    from pipeline.chat import render_prompt
    from pipeline.suites import load_suite

    suite = load_suite(suite_dir)
    system = suite.spec.system_prompt or verify_bundle(bundle_dir).manifest.tokenizer.system_prompt
    texts = [render_prompt(tok, it.prompt_messages(system)) for it in suite.items()[:n]]
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def _run(model, prompts, max_tokens: int) -> tuple[list[torch.Tensor], list[list[int]]]:
    logits, tokens = [], []
    with torch.no_grad():
        for ids in prompts:
            x = torch.tensor([ids])
            logits.append(model(input_ids=x).logits[0].float())
            out = model.generate(input_ids=x, max_new_tokens=max_tokens, do_sample=False, eos_token_id=None,
                                 pad_token_id=0)
            tokens.append(out[0, len(ids):].tolist())
    return logits, tokens


def _compare(ref, other) -> dict:
    (rl, rt), (ol, ot) = ref, other
    diff = max((a - b).abs().max().item() for a, b in zip(rl, ol))
    equal = sum(x == y for a, b in zip(rt, ot) for x, y in zip(a, b))
    first = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None) for a, b in zip(rt, ot)]
    return {"max_abs_logit_diff": diff, "greedy_tokens_equal": equal, "greedy_tokens": sum(len(a) for a in rt),
            "items_identical": sum(f is None for f in first)}


def main(argv=None) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.engines.hf import load_model
    from pipeline.export import export_merged
    from pipeline.train.guard import keep_differentiable

    p = argparse.ArgumentParser(prog="python -m benchmarks.export_merged", description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default="artifacts/bundle")
    p.add_argument("--base", default="artifacts/base", help="the 16-bit base (the usual recipe's)")
    p.add_argument("--suite", default="eval_suites/discharge")
    p.add_argument("--items", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--out", default="benchmarks/results/export_merged.json")
    args = p.parse_args(argv)
    bundle = Path(args.bundle)
    result = {"machine": machine(), "versions": versions("torch", "transformers", "peft", "bitsandbytes"),
              "load_avg_before": load_avg(), "items": args.items, "max_tokens": args.max_tokens}
    tok = AutoTokenizer.from_pretrained(bundle / "tokenizer")
    prompts = _prompts(bundle, args.suite, args.items, tok)
    result["prompt_tokens"] = [len(p) for p in prompts]

    shipped = load_model(bundle / "base_q", bundle / "adapter")
    keep_differentiable(shipped)
    ref = _run(shipped, prompts, args.max_tokens)
    packed = load_model(bundle / "base_q", bundle / "adapter")  # as this host serves it
    as_served = _run(packed, prompts, args.max_tokens)
    del shipped, packed
    rows = {"shipped, as this host runs it": _compare(ref, as_served)}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("float32", "bfloat16"):
            t0 = time.perf_counter()
            export_merged(bundle, Path(tmp) / dtype, dtype=dtype)
            seconds = time.perf_counter() - t0
            merged = AutoModelForCausalLM.from_pretrained(Path(tmp) / dtype, dtype=getattr(torch, dtype)).eval()
            rows[f"merged export, {dtype}"] = {**_compare(ref, _run(merged, prompts, args.max_tokens)),
                                               "export_s": round(seconds, 2)}
            del merged
    naive = load_model(Path(args.base), bundle / "adapter", torch.float32).merge_and_unload()
    rows["adapter merged into the 16-bit base (usual recipe)"] = _compare(ref, _run(naive, prompts, args.max_tokens))
    result["against_shipped_dequantize_path"] = rows
    result["load_avg_after"] = load_avg()
    write_result(args.out, result)
    for name, r in rows.items():
        print(f"{name:55s} max|dlogit| {r['max_abs_logit_diff']:.2e}  greedy {r['greedy_tokens_equal']}/"
              f"{r['greedy_tokens']}  items identical {r['items_identical']}/{args.items}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
