"""Soak: the real server under mixed load for a long time, watched for what only time shows.

`python -m serving` serves a release in its own process; `--concurrency` client threads send,
until `--minutes` have passed, a fixed mix of greedy chat requests, streamed chat, completions,
streams the client abandons after the first chunk, prompts over the context and malformed
JSON. The server's RSS is read from /proc every `--sample-s` seconds. It passes when:

- no request got a 5xx (the server's own /metrics counter agrees) and none got an answer of
  the wrong kind (a 200 for an oversize prompt, a 429 at this concurrency, a broken stream);
- no request slot leaked: once the clients stop, /metrics shows an empty queue and no request
  in the engine (abandoned streams included);
- RSS at the end is within `--rss-tolerance` of RSS after `--baseline-minutes` (allocator and
  caches warm up first; what grows after that is a leak);
- every greedy answer, streamed or not, is token for token the answer the same request got
  alone, sent before the load began.

    python -m benchmarks.soak [--release artifacts/release] [--minutes 60] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from benchmarks import load_avg, machine, versions, write_result

# How often each kind of request comes up in the mix (per 10 requests).
MIX = {"chat": 3, "stream": 2, "completion": 2, "disconnect": 1, "oversize": 1, "malformed": 1}
GREEDY = ("chat", "stream", "completion")
EXPECTED = {"chat": 200, "stream": 200, "completion": 200, "disconnect": 200, "oversize": 400, "malformed": 400}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _prompts(suite_dir: str, n: int) -> list[list[dict]]:
    from pipeline.suites import load_suite

    items = load_suite(suite_dir).items()
    step = max(1, len(items) // n)  # spread over the suite: every slice, short and long
    return [[dict(m) for m in it.messages] for it in items[::step][:n]]


def _body(kind: str, model: str, messages: list[dict], max_tokens: int) -> dict:
    common = {"model": model, "max_tokens": max_tokens, "temperature": 0, "return_token_ids": True}
    if kind == "completion":
        return {**common, "prompt": "\n".join(m["content"] for m in messages)}
    return {**common, "messages": messages, "stream": kind in ("stream", "disconnect")}


def _path(kind: str) -> str:
    return "/v1/completions" if kind == "completion" else "/v1/chat/completions"


def _read_stream(response) -> list[int]:
    """The token ids a stream delivered; a broken stream (an error chunk, no [DONE]) raises."""
    ids: list[int] = []
    for line in response.iter_lines():
        if not line.startswith("data: "):
            continue
        data = line[len("data: "):]
        if data == "[DONE]":
            return ids
        chunk = json.loads(data)
        if "error" in chunk:
            raise RuntimeError(f"error in the stream: {chunk['error']}")
        for choice in chunk.get("choices", []):
            ids.extend(choice.get("token_ids") or [])
    raise RuntimeError("the stream ended without [DONE]")


def send(client, kind: str, model: str, messages: list[dict], max_tokens: int, context: int) -> tuple[int, list | None]:
    """One request of `kind`; returns (status, generated token ids for the greedy kinds)."""
    if kind == "malformed":
        r = client.post("/v1/chat/completions", content=b'{"model": "' + model.encode() + b'", "messages": [{"ro',
                        headers={"content-type": "application/json"})
        return r.status_code, None
    if kind == "oversize":  # more words than the context has tokens: refused before any work
        long = [{"role": "user", "content": " ".join(["overflow"] * (context + 16))}]
        return client.post("/v1/chat/completions", json=_body("chat", model, long, max_tokens)).status_code, None
    body = _body(kind, model, messages, max_tokens)
    if kind in ("stream", "disconnect"):
        with client.stream("POST", _path(kind), json=body) as r:
            if r.status_code != 200:
                r.read()
                return r.status_code, None
            if kind == "disconnect":  # read the first chunk, then hang up mid-stream
                next(r.iter_lines())
                return r.status_code, None
            return r.status_code, _read_stream(r)
    r = client.post(_path(kind), json=body)
    if r.status_code != 200:
        return r.status_code, None
    return 200, r.json()["choices"][0].get("token_ids")


def scrape(client) -> dict[str, float]:
    """The /metrics gauges and the 5xx count the verdict reads."""
    out = {"queue_depth": None, "in_flight": None, "server_5xx": 0.0}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("tailgate_queue_depth "):
            out["queue_depth"] = float(line.split()[-1])
        elif line.startswith("tailgate_in_flight_requests "):
            out["in_flight"] = float(line.split()[-1])
        elif line.startswith("tailgate_requests_total{") and 'status="5' in line:
            out["server_5xx"] += float(line.split()[-1])
    return out


class Server:
    """`python -m serving --bundle RELEASE` on a free loopback port, as users start it."""

    def __init__(self, release: str, extra: list[str]):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "serving", "--bundle", release, "--port", str(port), "--log-level", "WARNING",
               *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def wait_ready(self, timeout_s: float = 1800) -> dict:
        import httpx

        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}: {self.proc.stderr.read()[-2000:]}")
            try:
                r = httpx.get(f"{self.url}/ready", timeout=2)
                if r.status_code == 200:
                    return httpx.get(f"{self.url}/v1/models", timeout=10).json()["data"][0]
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not become ready")
            time.sleep(0.5)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
        return self.proc.returncode


def soak(url: str, pid: int, model: str, context: int, prompts: list[list[dict]], *, minutes: float,
         concurrency: int, max_tokens: int, sample_s: float, seed: int = 0) -> dict:
    import httpx

    client = httpx.Client(base_url=url, timeout=600)
    # What each greedy request gets alone, before any load; a prompt the context refuses is dropped.
    alone: dict[tuple[str, int], list[int]] = {}
    for i, messages in enumerate(prompts):
        for kind in GREEDY:
            status, ids = send(client, kind, model, messages, max_tokens, context)
            if status == 200:
                alone[(kind, i)] = ids
    usable = sorted({i for _, i in alone})
    if not usable:
        raise RuntimeError("no prompt of the suite fits the served context; nothing to soak with")
    stats: Counter = Counter()
    mismatches: list[dict] = []
    problems: list[str] = []
    lock = threading.Lock()
    t0 = time.monotonic()
    stop_at = t0 + minutes * 60
    samples = [{"t_s": 0.0, "rss_mib": round(rss_mib(pid), 1)}]

    def worker(w: int) -> None:
        rng = random.Random(seed * 1000 + w)
        kinds = [k for k, n in MIX.items() for _ in range(n)]
        with httpx.Client(base_url=url, timeout=600) as c:
            while time.monotonic() < stop_at:
                kind, i = rng.choice(kinds), rng.choice(usable)
                try:
                    status, ids = send(c, kind, model, prompts[i], max_tokens, context)
                except Exception as exc:  # a transport error or a broken stream: a failure, recorded
                    with lock:
                        stats[f"{kind}:error"] += 1
                        problems.append(f"{kind}: {type(exc).__name__}: {exc}"[:300])
                    continue
                with lock:
                    stats[f"{kind}:{status}"] += 1
                    if status != EXPECTED[kind]:
                        problems.append(f"{kind} got {status}, expected {EXPECTED[kind]}")
                    elif kind in GREEDY and ids != alone.get((kind, i)):
                        stats["greedy_mismatch"] += 1
                        mismatches.append({"kind": kind, "prompt": i, "alone": alone.get((kind, i)), "served": ids})
                    elif kind in GREEDY:
                        stats["greedy_equal"] += 1

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(concurrency)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        nxt = t0 + len(samples) * sample_s
        while time.monotonic() < nxt and any(t.is_alive() for t in threads):
            time.sleep(0.2)
        samples.append({"t_s": round(time.monotonic() - t0, 1), "rss_mib": round(rss_mib(pid), 1)})
        print(f"soak {samples[-1]['t_s'] / 60:5.1f} min: RSS {samples[-1]['rss_mib']:.0f} MiB, "
              f"{sum(v for k, v in stats.items() if ':' in k)} requests, {len(problems)} problems", flush=True)
    for t in threads:
        t.join()
    # Abandoned streams are cancelled when the server notices the hang-up: give it a moment.
    deadline = time.monotonic() + 30
    while (end := scrape(client))["in_flight"] or end["queue_depth"]:
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    samples.append({"t_s": round(time.monotonic() - t0, 1), "rss_mib": round(rss_mib(pid), 1)})
    client.close()
    return {"stats": dict(sorted(stats.items())), "problems": problems[:50], "problem_count": len(problems),
            "mismatches": mismatches[:10], "alone_references": len(alone), "prompts_used": len(usable),
            "samples": samples, "end_metrics": end, "wall_s": round(time.monotonic() - t0, 1)}


def verdict(run: dict, baseline_s: float, rss_tolerance: float) -> dict:
    samples = run["samples"]
    base = next((s for s in samples if s["t_s"] >= baseline_s), samples[-1])
    end = samples[-1]
    change = (end["rss_mib"] - base["rss_mib"]) / base["rss_mib"]
    client_5xx = sum(v for k, v in run["stats"].items() if k.split(":")[-1].startswith("5"))
    m = run["end_metrics"]
    checks = {
        "no_5xx": client_5xx == 0 and m["server_5xx"] == 0,
        "every_answer_as_expected": run["problem_count"] == 0,
        "no_leaked_request_slots": m["queue_depth"] == 0 and m["in_flight"] == 0,
        "rss_stable": abs(change) <= rss_tolerance,
        "greedy_equal_to_alone": run["stats"].get("greedy_mismatch", 0) == 0 and run["stats"].get("greedy_equal", 0) > 0,
    }
    return {"checks": checks, "passed": all(checks.values()), "client_5xx": client_5xx,
            "rss_baseline_mib": base["rss_mib"], "rss_baseline_at_s": base["t_s"], "rss_end_mib": end["rss_mib"],
            "rss_change": round(change, 4)}


def page(r: dict) -> tuple[list[tuple[str, str, str, str]], list[str]]:
    """RESULTS.md's headline rows (measure, measured, target, verdict) and section for a result."""
    def ok(v: bool) -> str:
        return "pass" if v else "FAIL"

    c, st = r["checks"], r["stats"]
    sent = sum(v for k, v in st.items() if ":" in k)
    greedy = st.get("greedy_equal", 0) + st.get("greedy_mismatch", 0)
    rows = [
        (f"{r['minutes']:g} min soak at concurrency {r['concurrency']}: 5xx responses", str(r["client_5xx"]), "0",
         ok(c["no_5xx"])),
        ("soak: RSS at the end vs after the warm-up", f"{r['rss_change']:+.1%}", f"within {r['rss_tolerance']:.0%}",
         ok(c["rss_stable"])),
        ("soak: greedy answers equal to the request alone", f"{st.get('greedy_equal', 0)}/{greedy}", "all",
         ok(c["greedy_equal_to_alone"])),
        ("soak: request slots held after the load", f"queue {r['end_metrics']['queue_depth']:g}, in engine "
         f"{r['end_metrics']['in_flight']:g}", "0, 0", ok(c["no_leaked_request_slots"])),
    ]
    lines = [f"{sent} requests in {r['minutes']:g} minutes, {r['concurrency']} at a time, mix per 10: "
             + ", ".join(f"{k} {n}" for k, n in r["mix_per_10_requests"].items()) + ". By kind and status: "
             + ", ".join(f"{k} {v}" for k, v in st.items() if ":" in k) + ".",
             f"\nRSS {r['rss_baseline_mib']:.0f} MiB after {r['rss_baseline_at_s'] / 60:.1f} min, {r['rss_end_mib']:.0f} "
             f"MiB at the end (sampled every {r['sample_s']:g} s); load average {r['load_avg_before']} before, "
             f"{r['load_avg_after']} after. Bundle {r.get('bundle_digest', '?')[:12]}."]
    return rows, lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.splitlines()[0])
    p.add_argument("--release", default="artifacts/release", help="release directory to serve (the release stage's)")
    p.add_argument("--suite", default="eval_suites/discharge", help="eval suite whose prompts make the load")
    p.add_argument("--minutes", type=float, default=60.0, help="how long the load runs (default: 60)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--prompts", type=int, default=8, help="distinct prompts in the mix")
    p.add_argument("--max-tokens", type=int, default=16, help="token budget of each greedy request")
    p.add_argument("--sample-s", type=float, default=60.0, help="seconds between RSS samples (default: 60)")
    p.add_argument("--baseline-minutes", type=float, default=5.0,
                   help="RSS after this long is the baseline the end is compared with (default: 5)")
    p.add_argument("--rss-tolerance", type=float, default=0.10, help="allowed RSS change, end vs baseline")
    p.add_argument("--server-arg", action="append", default=[], help="extra `python -m serving` argument")
    p.add_argument("--out", default="benchmarks/results/soak.json")
    args = p.parse_args(argv)
    if args.baseline_minutes >= args.minutes:
        p.error("--baseline-minutes must be shorter than --minutes")

    result = {"release": args.release, "minutes": args.minutes, "concurrency": args.concurrency,
              "max_tokens": args.max_tokens, "sample_s": args.sample_s, "baseline_minutes": args.baseline_minutes,
              "rss_tolerance": args.rss_tolerance, "mix_per_10_requests": MIX, "machine": machine(),
              "versions": versions("torch", "transformers", "peft", "bitsandbytes"), "load_avg_before": load_avg()}
    server = Server(args.release, args.server_arg)
    try:
        card = server.wait_ready()
        result.update(bundle_digest=card["bundle_digest"], max_context_tokens=card["max_context_tokens"],
                      parity=card["parity"]["status"])
        run = soak(server.url, server.proc.pid, card["id"], card["max_context_tokens"],
                   _prompts(args.suite, args.prompts), minutes=args.minutes, concurrency=args.concurrency,
                   max_tokens=args.max_tokens, sample_s=args.sample_s)
    finally:
        result["server_exit_code"] = server.stop()
    result.update(run, load_avg_after=load_avg())
    result.update(verdict(run, args.baseline_minutes * 60, args.rss_tolerance))
    result["passed"] = result["passed"] and result["server_exit_code"] == 0  # SIGTERM drains cleanly too
    write_result(args.out, result)
    print(json.dumps({k: result[k] for k in ("checks", "passed", "rss_baseline_mib", "rss_end_mib", "rss_change",
                                             "stats")}, indent=2))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
