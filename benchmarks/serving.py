"""Serving throughput and latency: the real server at concurrency 1, 4 and 8 against a naive
sequential `transformers.generate` loop on the same bundle, as ratios in one run.

Both sides answer the same eval-suite prompts greedily with the same token budget, on the
same loaded model (the bundle's NF4 base with the adapter unmerged). The server runs in this
process under uvicorn and is called over HTTP by real clients (the `openai` package), so the
figures include request parsing, micro-batching, detokenization and JSON. Reported per mode:
generated tokens/s (sum of usage.completion_tokens over wall time), request latency p50/p99,
and how many greedy answers match the naive loop's text exactly. Where vLLM is importable (run
it with `.venv-vllm/bin/python` after `make test-vllm`), the same server with the `vllm` engine
on the same NF4 base + adapter is measured in the same run.

    python -m benchmarks.serving [--bundle artifacts/bundle] [--requests 16] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CONCURRENCY = (1, 4, 8)


def _prompts(suite_dir: str, n: int) -> list[list[dict]]:
    from pipeline.suites import load_suite

    items = load_suite(suite_dir).items()
    # Spread over the suite (every slice, short and long notes), deterministic.
    step = max(1, len(items) // n)
    return [it["messages"][:-1] for it in items[::step][:n]]


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def naive_loop(engine, prompts, max_tokens: int) -> dict:
    """What a team writes first: one `model.generate` call per request, one after another."""
    import torch

    from pipeline.chat import encode_prompt

    tok, model = engine.tokenizer, engine.model
    texts, latencies, tokens = [], [], 0
    t0 = time.perf_counter()
    for messages in prompts:
        ids = torch.tensor([encode_prompt(tok, messages)])
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


def _start_server(engine, manifest, max_batch: int):
    from serving.app import create_app
    from serving.probe import ParityReport
    from serving.server import build_server
    from serving.state import build_state

    state = build_state(engine, manifest, ParityReport.skipped(), max_batch=max_batch, max_queue=256,
                        api_key=None, request_timeout_s=3600)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    host, port = sock.getsockname()
    server = build_server(create_app(state), state, host, port)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return server, thread, f"http://{host}:{port}", state.model_id


def served_run(url: str, model: str, prompts, max_tokens: int, concurrency: int) -> dict:
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=3600)

    def one(messages):
        s = time.perf_counter()
        r = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0)
        return time.perf_counter() - s, r.usage.completion_tokens, r.choices[0].message.content

    one(prompts[0])  # warm the HTTP path; not timed
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, prompts))
    wall = time.perf_counter() - t0
    latencies = [r[0] for r in results]
    tokens = sum(r[1] for r in results)
    return {"mode": "tailgate server (hf engine, micro-batched)", "concurrency": concurrency,
            "requests": len(prompts), "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
            "latency_p50_s": _quantile(latencies, 0.5), "latency_p99_s": _quantile(latencies, 0.99),
            "texts": [r[2] for r in results]}


def _has_vllm() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default="artifacts/bundle")
    p.add_argument("--suite", default="eval_suites/discharge")
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--no-vllm", action="store_true", help="skip the vllm engine even where it is installed")
    p.add_argument("--out", default="benchmarks/results/serving.json")
    args = p.parse_args(argv)

    import torch

    from pipeline.bundle.verify import verify_bundle
    from pipeline.engines.hf import HFEngine

    bundle = verify_bundle(args.bundle)
    engine = HFEngine.from_bundle(bundle)
    prompts = _prompts(args.suite, args.requests)
    result = {"bundle_digest": bundle.manifest.bundle_digest, "requests": len(prompts),
              "max_tokens": args.max_tokens, "torch_threads": torch.get_num_threads(),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}", "rows": []}
    print("| mode | concurrency | tokens/s | x naive | p50 s | p99 s | same answer as naive |")
    print("|---|---|---|---|---|---|---|", flush=True)

    naive_loop(engine, prompts[:2], args.max_tokens)  # warm-up: kernels, allocator
    naive = naive_loop(engine, prompts, args.max_tokens)
    naive_texts = naive["texts"]

    def record(r: dict) -> None:
        same = sum(a == b for a, b in zip(r.pop("texts"), naive_texts))
        row = {**{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()},
               "speedup_vs_naive": round(r["tokens_per_s"] / naive["tokens_per_s"], 2),
               "answers_equal_to_naive": f"{same}/{len(prompts)}" if r is not naive else "-"}
        result["rows"].append(row)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")  # after every row: a long run keeps what it has
        print(f"| {row['mode']} | {row['concurrency']} | {row['tokens_per_s']:.1f} | {row['speedup_vs_naive']:.2f} "
              f"| {row['latency_p50_s']:.2f} | {row['latency_p99_s']:.2f} | {row['answers_equal_to_naive']} |", flush=True)

    record(naive)
    server, thread, url, model = _start_server(engine, bundle.manifest, max_batch=max(CONCURRENCY))
    for c in CONCURRENCY:
        record(served_run(url, model, prompts, args.max_tokens, c))
    server.should_exit = True
    thread.join(60)
    if _has_vllm() and not args.no_vllm:
        from pipeline.engines.vllm import VLLMEngine

        vengine = VLLMEngine.from_bundle(bundle, max_batch=max(CONCURRENCY))
        server, thread, url, model = _start_server(vengine, bundle.manifest, max_batch=max(CONCURRENCY))
        served_run(url, model, prompts[:2], args.max_tokens, 2)  # first requests compile kernels: not timed
        for c in CONCURRENCY:
            r = served_run(url, model, prompts, args.max_tokens, c)
            r["mode"] = "tailgate server (vllm engine)"
            record(r)
        server.should_exit = True
        thread.join(60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
