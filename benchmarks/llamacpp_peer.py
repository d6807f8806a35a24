"""llama.cpp beside tailgate's engine: one-row decode speed, and whether the GGUF export answers
as the evaluated bundle does.

    python -m benchmarks.llamacpp_peer --out benchmarks/results/llamacpp_peer.json [--items 16]

Needs llama-cpp-python (`pip install -c constraints.txt -e '.[bench]'`, built from the sdist;
never part of `make install`). In one process, one after the other, greedy, 2 threads each:

- tailgate's hf engine on the bundle (NF4 base + LoRA, the evaluated configuration), one
  request alone, as the serving benchmark's lone request runs;
- llama.cpp (llama-cpp-python) on the bundle's GGUF exports written here by
  `pipeline.export.export_gguf` (f32: the merged weights exactly; q8_0), and on the base's own
  GGUF from its registry package (Q4_1, no adapter: the llama.cpp figure quoted in issue 25).

Each arm answers the first --items golden prompts (the evaluated prompt ids, so tokenization
is not compared here) up to the evaluated answer's length. Recorded: prefill and decode tokens/s
(decode = the tokens after the first, over the time after the prefill), and for the exports how
many answers are token for token the evaluated one (golden.json) and the first differing token.
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


def _tailgate(bundle_dir: str, golden: list[dict]) -> dict:
    import torch

    from pipeline.bundle.verify import verify_bundle
    from pipeline.engines.base import GenerationRequest, SamplingParams
    from pipeline.engines.hf import HFEngine

    engine = HFEngine.from_bundle(verify_bundle(bundle_dir))
    engine.generate([GenerationRequest(golden[0]["prompt_ids"], SamplingParams(max_new_tokens=2))])  # warm-up
    prefill_s, decode_s, decoded, same = [], [], 0, 0
    for g in golden:
        n = max(1, len(g["token_ids"]))
        with torch.inference_mode():
            t0 = time.perf_counter()
            engine.start(g["prompt_ids"])
            prefill_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        [c] = engine.generate([GenerationRequest(g["prompt_ids"], SamplingParams(max_new_tokens=n))])
        total = time.perf_counter() - t0
        decode_s.append(max(total - prefill_s[-1], 1e-9))
        decoded += max(len(c.token_ids) - 1, 0)
        same += c.token_ids == g["token_ids"]
    return _speeds(golden, prefill_s, decode_s, decoded) | {"identical_to_golden": same}


def _speeds(golden, prefill_s, decode_s, decoded) -> dict:
    prompt_tokens = sum(len(g["prompt_ids"]) for g in golden)
    return {"prefill_tokens_per_s": round(prompt_tokens / sum(prefill_s), 1),
            "decode_tokens_per_s": round(decoded / sum(decode_s), 1), "decoded_tokens": decoded,
            "median_prefill_s": round(statistics.median(prefill_s), 3)}


def _llamacpp(path: Path, golden: list[dict], stops: set[int], threads: int) -> dict:
    """Greedy answers through llama-cpp-python's own generation loop (its sampler at temperature
    0 picks the most likely token); the first token arrives after the prefill."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=2048, n_threads=threads, n_threads_batch=threads, seed=0, verbose=False)
    prefill_s, decode_s, decoded, same, first_diff = [], [], 0, 0, []
    for g in golden:
        n = max(1, len(g["token_ids"]))
        out: list[int] = []
        t0 = time.perf_counter()
        t_first = None
        for tok in llm.generate(g["prompt_ids"], temp=0.0, top_k=1, reset=True):
            if t_first is None:
                t_first = time.perf_counter()
            if tok in stops:
                break
            out.append(int(tok))
            if len(out) >= n:
                break
        end = time.perf_counter()
        prefill_s.append((t_first or end) - t0)
        decode_s.append(max(end - (t_first or end), 1e-9))
        decoded += max(len(out) - 1, 0)
        same += out == g["token_ids"]
        if out != g["token_ids"]:
            first_diff.append(next((i for i, (a, b) in enumerate(zip(out, g["token_ids"])) if a != b),
                                   min(len(out), len(g["token_ids"]))))
    del llm
    return _speeds(golden, prefill_s, decode_s, decoded) | {
        "identical_to_golden": same, "first_difference_median": statistics.median(first_diff) if first_diff else None}


def run(bundle_dir: str, golden_path: str, items: int, base_gguf: str | None) -> dict:
    import torch

    from pipeline.export.gguf_export import export_gguf

    golden = json.loads(Path(golden_path).read_text())["prompts"][:items]
    manifest = json.loads((Path(bundle_dir) / "manifest.json").read_text())
    stops = set(manifest["tokenizer"]["stop_token_ids"])
    threads = torch.get_num_threads()
    record = {"items": len(golden), "threads": threads, "bundle_digest": manifest["bundle_digest"],
              "prompt_tokens": sum(len(g["prompt_ids"]) for g in golden),
              "golden_tokens": sum(len(g["token_ids"]) for g in golden), "arms": {}}
    record["arms"]["tailgate hf engine, bundle (NF4 + LoRA)"] = _tailgate(bundle_dir, golden)
    with tempfile.TemporaryDirectory(prefix="tailgate-gguf-") as tmp:
        for kind in ("f32", "q8_0"):
            out = export_gguf(bundle_dir, Path(tmp) / kind, kind, pre_tokenizer="smollm")
            arm = _llamacpp(Path(tmp) / kind / out["file"], golden, stops, threads)
            arm["file_mb"] = round((Path(tmp) / kind / out["file"]).stat().st_size / 1e6, 1)
            record["arms"][f"llama.cpp, GGUF export {kind}"] = arm
    if base_gguf and Path(base_gguf).is_file():
        arm = _llamacpp(Path(base_gguf), golden, stops, threads)
        arm.pop("identical_to_golden")  # the base without the adapter: not the evaluated model
        arm.pop("first_difference_median")
        record["arms"]["llama.cpp, base GGUF Q4_1 (no adapter)"] = arm
    ours = record["arms"]["tailgate hf engine, bundle (NF4 + LoRA)"]["decode_tokens_per_s"]
    record["decode_vs_tailgate"] = {k: round(ours / a["decode_tokens_per_s"], 3) for k, a in record["arms"].items()}
    import llama_cpp

    record["llama_cpp_python"] = llama_cpp.__version__
    return record


def page(r: dict) -> tuple[list[tuple[str, str, str, str]], list[str]]:
    arms = r["arms"]
    ours = "tailgate hf engine, bundle (NF4 + LoRA)"
    peer = next((k for k in arms if "base GGUF" in k), "llama.cpp, GGUF export q8_0")
    ratio = r["decode_vs_tailgate"][peer]
    rows = [(f"one-row decode, tailgate vs {peer}", f"{ratio:.2f}x", ">= 0.5x", "met" if ratio >= 0.5 else "missed")]
    lines = ["| arm | prefill tokens/s | decode tokens/s | answers identical to the evaluated ones |",
             "|---|---|---|---|"]
    for name, a in arms.items():
        same = f"{a['identical_to_golden']} of {r['items']}" if "identical_to_golden" in a else "-"
        lines.append(f"| {name} | {a['prefill_tokens_per_s']:g} | {a['decode_tokens_per_s']:g} | {same} |")
    lines.append(f"\n{r['items']} golden prompts ({r['prompt_tokens']:,} prompt tokens), greedy, {r['threads']} "
                 f"threads, bundle {r['bundle_digest'][:12]}, llama-cpp-python {r['llama_cpp_python']}. Load average "
                 f"{r['load_avg_before']} before, {r['load_avg_after']} after.")
    return rows, lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.llamacpp_peer", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--bundle", default="artifacts/bundle")
    p.add_argument("--golden", default="reports/golden.json")
    p.add_argument("--items", type=int, default=16)
    p.add_argument("--base-gguf", default=".cache/tailgate/SmolLM2-135M-Instruct.Q4_1.gguf",
                   help="the base's own GGUF (fetched by the base stage); skipped when absent")
    args = p.parse_args(argv)
    from benchmarks import machine, write_result

    record = {"machine": machine(), "load_avg_before": [round(x, 2) for x in os.getloadavg()]}
    record.update(run(args.bundle, args.golden, args.items, args.base_gguf))
    record["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    write_result(args.out, record)
    print(json.dumps(record["arms"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
