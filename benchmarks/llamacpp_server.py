"""tailgate's server beside llama.cpp's own server (`llama-server`, parallel slots), same prompts.

    python -m benchmarks.llamacpp_server --out benchmarks/results/llamacpp_server.json \
        [--llama-server .llama-server/bin/llama-server] [--items 16] [--types f32,q8_0] [--slots 8]

Arms, one after the other on the same machine: tailgate (`python -m serving` on the default
release, the batch-invariant hf engine), and llama-server on the bundle's GGUF exports with
`--slots` parallel slots (each with the bundle's whole context). Each arm answers the first
`--items` golden prompts greedily at concurrency 1, then at concurrency `--slots`: the prompt's
own token ids (llama-server's /completion takes them as they are; tailgate's chat endpoint
encodes the golden messages, and its prompt ids are checked against them), the golden budget,
stopping at the bundle's end of turn. Recorded per arm and concurrency: wall time, generated
tokens, tokens/s, median latency, and how many answers are token for token the same request's
answer at concurrency 1 (the batch-invariance question) and the evaluated answer.

llama-server is built by `make llama-server` from the llama.cpp sources vendored in the
llama-cpp-python sdist (the `bench` extra's version), without ggml's AMX kernels.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, timeout_s: float = 600) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not become ready")


@contextmanager
def _process(cmd: list[str], ready_url: str):
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(ready_url, proc)
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _drive(ask, golden: list[dict], concurrency: int) -> dict:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        answers = list(pool.map(ask, golden))
    wall = time.perf_counter() - t0
    tokens = sum(len(a["token_ids"]) for a in answers)
    return {"wall_s": round(wall, 2), "generated_tokens": tokens, "tokens_per_s": round(tokens / wall, 2),
            "latency_p50_s": round(statistics.median(a["latency_s"] for a in answers), 2),
            "identical_to_golden": sum(a["token_ids"] == g["token_ids"] for a, g in zip(answers, golden)),
            "answers": [a["token_ids"] for a in answers]}


def _arm(ask, golden: list[dict], slots: int) -> dict:
    alone = _drive(ask, golden, 1)
    loaded = _drive(ask, golden, slots)
    same = sum(a == b for a, b in zip(alone["answers"], loaded["answers"]))
    return {"concurrency_1": {k: v for k, v in alone.items() if k != "answers"},
            f"concurrency_{slots}": {**{k: v for k, v in loaded.items() if k != "answers"},
                                     "identical_to_concurrency_1": same}}


def _naive(release: str, golden: list[dict], stops: set[int]) -> dict:
    """What a team writes first, on the same weights: one `model.generate` per request, in turn."""
    import torch

    from pipeline.bundle.verify import verify_bundle
    from pipeline.engines.hf import HFEngine

    engine = HFEngine.from_bundle(verify_bundle(Path(release) / "bundle"))

    def ask(g: dict) -> dict:
        t0 = time.perf_counter()
        ids = torch.tensor([g["prompt_ids"]])
        with torch.inference_mode():
            out = engine.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                        max_new_tokens=g["max_new_tokens"], do_sample=False,
                                        eos_token_id=sorted(stops), pad_token_id=engine.pad_id)
        return {"token_ids": [t for t in out[0, ids.shape[1]:].tolist() if t not in stops],
                "latency_s": time.perf_counter() - t0}

    alone = _drive(ask, golden, 1)
    del engine
    return {"concurrency_1": {k: v for k, v in alone.items() if k != "answers"}}


def _tailgate(release: str, golden: list[dict], slots: int) -> dict:
    import openai

    port = _free_port()
    cmd = [sys.executable, "-m", "serving", "--bundle", release, "--port", str(port), "--max-batch", str(slots),
           "--max-queue", "1024", "--request-timeout-s", "3600", "--log-level", "WARNING"]
    with _process(cmd, f"http://127.0.0.1:{port}/ready"):
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=3600)
        model = client.models.list().data[0].id

        def ask(g: dict) -> dict:
            t0 = time.perf_counter()
            r = client.chat.completions.create(model=model, messages=g["messages"], max_tokens=g["max_new_tokens"],
                                               temperature=0, extra_body={"return_token_ids": True})
            if list(r.model_dump()["prompt_token_ids"]) != list(g["prompt_ids"]):
                raise RuntimeError(f"tailgate encoded item {g['id']} differently from the golden prompt")
            return {"token_ids": r.choices[0].model_dump()["token_ids"], "latency_s": time.perf_counter() - t0}

        return _arm(ask, golden, slots)


def _llama_server(binary: str, gguf: Path, context: int, golden: list[dict], slots: int, threads: int,
                  stops: set[int]) -> dict:
    import httpx

    port = _free_port()
    # the context is shared by the slots: each gets the bundle's whole context
    cmd = [binary, "-m", str(gguf), "--port", str(port), "--parallel", str(slots), "-c", str(context * slots),
           "-t", str(threads), "-tb", str(threads), "--log-disable"]
    with _process(cmd, f"http://127.0.0.1:{port}/health"):
        def ask(g: dict) -> dict:
            t0 = time.perf_counter()
            r = httpx.post(f"http://127.0.0.1:{port}/completion", timeout=3600, json={
                "prompt": g["prompt_ids"], "n_predict": g["max_new_tokens"], "temperature": 0.0, "top_k": 1,
                "cache_prompt": False, "return_tokens": True, "seed": 0})
            r.raise_for_status()
            body = r.json()
            # the end-of-turn token that ended it is not part of the answer (as in tailgate's)
            return {"token_ids": [t for t in body["tokens"] if t not in stops], "latency_s": time.perf_counter() - t0}

        return _arm(ask, golden, slots)


def _version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True)
    return next((line for line in (out.stdout + out.stderr).splitlines() if line.startswith("version")), "unknown")


def run(release: str, golden_path: str, binary: str, items: int, types: list[str], slots: int) -> dict:
    from pipeline.export import export_gguf

    golden_all = json.loads(Path(golden_path).read_text())
    golden = golden_all["prompts"][:items]
    bundle = Path(release) / "bundle"
    manifest = json.loads((bundle / "manifest.json").read_text())
    stops = set(manifest["tokenizer"]["stop_token_ids"])
    context = manifest["inference"]["max_context_tokens"]
    threads = len(os.sched_getaffinity(0))
    record = {"items": len(golden), "slots": slots, "threads": threads, "bundle_digest": golden_all["bundle_digest"],
              "llama_server": _version(binary), "arms": {}}
    record["arms"]["naive sequential generate (same weights, in process)"] = _naive(release, golden, stops)
    record["arms"]["tailgate server (hf engine, bundle NF4 + LoRA)"] = _tailgate(release, golden, slots)
    with tempfile.TemporaryDirectory(prefix="tailgate-llama-server-") as tmp:
        for t in types:
            rec = export_gguf(bundle, Path(tmp) / t, t, "smollm")
            record["arms"][f"llama-server, GGUF export {t}"] = _llama_server(
                binary, Path(tmp) / t / rec["file"], context, golden, slots, threads, stops)
    return record



def page(r: dict) -> tuple[list[tuple[str, str, str, str]], list[str]]:
    """RESULTS.md's headline rows (measure, measured, target, verdict) and section for a result."""
    n, slots = r["items"], r["slots"]
    key = f"concurrency_{slots}"
    ours = r["arms"]["tailgate server (hf engine, bundle NF4 + LoRA)"]
    rows = []
    for name, arm in r["arms"].items():
        if name.startswith("llama-server"):
            ratio = ours[key]["tokens_per_s"] / arm[key]["tokens_per_s"]
            rows.append((f"server tokens/s at concurrency {slots} vs {name}", f"{ratio:.2f}x", ">= 1.0x",
                         "pass" if ratio >= 1 else "FAIL"))
    naive = r["arms"].get("naive sequential generate (same weights, in process)")
    if naive:
        lone = ours["concurrency_1"]["tokens_per_s"] / naive["concurrency_1"]["tokens_per_s"]
        rows.append(("lone request on tailgate's server vs naive generate", f"{lone:.2f}x", ">= 1.0x",
                     "pass" if lone >= 1 else "FAIL"))
    rows.append((f"tailgate server at concurrency {slots}: answers equal to the request alone",
                 f"{ours[key]['identical_to_concurrency_1']}/{n}", f"{n}/{n}",
                 "pass" if ours[key]["identical_to_concurrency_1"] == n else "FAIL"))
    lines = [f"| arm | tokens/s alone | tokens/s at {slots} | p50 latency at {slots}, s | answers at {slots} equal to "
             "alone | answers equal to the evaluated ones (alone) |", "|---|---|---|---|---|---|"]
    for name, arm in r["arms"].items():
        one, many = arm["concurrency_1"], arm.get(key)
        if many is None:
            lines.append(f"| {name} | {one['tokens_per_s']:g} | - | - | - | {one['identical_to_golden']}/{n} |")
            continue
        lines.append(f"| {name} | {one['tokens_per_s']:g} | {many['tokens_per_s']:g} | {many['latency_p50_s']:g} | "
                     f"{many['identical_to_concurrency_1']}/{n} | {one['identical_to_golden']}/{n} |")
    lines.append(f"\n{n} golden prompts, greedy, the golden budget each; llama-server `{r['llama_server']}` with "
                 f"{slots} parallel slots, {r['threads']} threads. Load average {r['load_avg_before']} before, "
                 f"{r['load_avg_after']} after.")
    return rows, lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.llamacpp_server", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--release", default="artifacts/release")
    p.add_argument("--golden", default="reports/golden.json")
    p.add_argument("--llama-server", default=".llama-server/bin/llama-server",
                   help="the llama-server binary (default: the one `make llama-server` builds)")
    p.add_argument("--items", type=int, default=16)
    p.add_argument("--types", default="f32,q8_0")
    p.add_argument("--slots", type=int, default=8)
    args = p.parse_args(argv)
    if not Path(args.llama_server).is_file():
        p.error(f"{args.llama_server} not found: build it with `make llama-server`")
    from benchmarks import machine, write_result

    record = {"machine": machine(), "load_avg_before": [round(x, 2) for x in os.getloadavg()]}
    record.update(run(args.release, args.golden, args.llama_server, args.items,
                      [t for t in args.types.split(",") if t], args.slots))
    record["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    write_result(args.out, record)
    print(json.dumps({k: v for k, v in record["arms"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
