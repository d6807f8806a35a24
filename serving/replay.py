"""Replay every evaluated answer against a live server and compare token for token.

    python -m serving.replay --golden releases/<digest>/golden.json \
        [--base-url http://127.0.0.1:8000/v1] [--concurrency 8] [--out reports/replay.json]
    python -m serving.replay --serve artifacts/release [--concurrency 8] [--out reports/replay.json]

With --serve, the release is started with `python -m serving` on a free local port (its
startup checks and parity probe included), replayed against, and stopped; `make replay` does
that for the default release.

The golden file is the evaluation's own record: every item it generated greedily, with the
prompt ids and the token ids the report scored. Each item is sent as the chat request a client
would send (its messages, greedy, the evaluation's token budget) through the official `openai`
client, `concurrency` at a time, so the server batches them as it batches real traffic. The
server returns the token ids it generated (`return_token_ids`, the vLLM extension), and they
are compared with the evaluation's: identical, or the first position that differs. The prompt
ids the server encoded are compared too, so a drifted template or system prompt shows up as
such rather than as a different answer.

Exit status: 0 when every item is identical, 1 when any differs, 2 when the replay could not
run (server unreachable, another bundle behind it, a golden file that is not one). The JSON
written with --out is what `python -m serving --replay-report` shows on /v1/models.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence


class ReplayError(Exception):
    """The replay could not be run (not: an answer differed)."""


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    """The first index where the sequences differ (a shorter one differs where it ends)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _served_model(client) -> dict[str, Any]:
    models = client.models.list()
    if not models.data:
        raise ReplayError("the server lists no model")
    return models.data[0].model_dump()


def _ask(client, model: str, g: dict) -> dict:
    started = time.perf_counter()
    r = client.chat.completions.create(
        model=model, messages=g["messages"], max_tokens=g["max_new_tokens"], temperature=0,
        extra_body={"return_token_ids": True})
    choice = r.choices[0].model_dump()
    served = choice.get("token_ids")
    if served is None:
        raise ReplayError("the server did not return token ids (it needs the return_token_ids extension)")
    prompt = r.model_dump().get("prompt_token_ids")
    pos = first_difference(g["token_ids"], served)
    return {"id": g["id"], "slice": g.get("slice"), "identical": pos is None, "first_difference": pos,
            "golden_tokens": len(g["token_ids"]), "served_tokens": len(served),
            "prompt_ids_match": None if prompt is None else list(prompt) == list(g["prompt_ids"]),
            "finish_reason": choice.get("finish_reason"), "golden_finish_reason": g["finish_reason"],
            "latency_s": round(time.perf_counter() - started, 3)}


def replay(golden: dict, client, concurrency: int) -> dict:
    """Send every golden item, `concurrency` requests in flight; return the result record."""
    prompts = golden.get("prompts")
    if not isinstance(prompts, list) or not prompts:
        raise ReplayError("the golden file has no prompts")
    info = _served_model(client)
    served_digest = (info.get("tailgate") or {}).get("bundle_digest") or info.get("bundle_digest")
    if served_digest is not None and served_digest != golden.get("bundle_digest"):
        raise ReplayError(f"the server serves bundle {str(served_digest)[:16]}, the golden file is for "
                          f"{str(golden.get('bundle_digest'))[:16]}")
    # the bundle or one of its exports: the golden answers must be those of what is served
    served, wanted = info.get("configuration") or {}, golden.get("export") or {}
    if "configuration" in info and served.get("digest") != wanted.get("digest"):
        raise ReplayError(f"the server serves {served.get('name', 'the bundle')}, the golden file holds the answers "
                          f"of {wanted.get('name', 'the bundle')}")
    load_before = [round(x, 2) for x in os.getloadavg()]
    t0 = time.perf_counter()
    from tqdm import tqdm

    with ThreadPoolExecutor(max_workers=concurrency) as pool:  # progress on stderr: minutes for a suite
        items = list(tqdm(pool.map(lambda g: _ask(client, info["id"], g), prompts), total=len(prompts),
                          desc="replay", unit="item", file=sys.stderr))
    wall = time.perf_counter() - t0
    different = [i for i in items if not i["identical"]]
    platform = (info.get("platform") or {})
    return {
        # where the answers were produced and where they were recorded (pipeline/platform.py)
        "platform": platform.get("serving"),
        "golden_platform": golden.get("platform"),
        "bundle_digest": golden.get("bundle_digest"),
        "served_bundle_digest": served_digest,
        "golden_engine": golden.get("engine"),
        "export": golden.get("export"),  # None: the bundle itself was replayed
        "concurrency": concurrency,
        "items": len(items),
        "identical": len(items) - len(different),
        "different": len(different),
        "prompt_ids_mismatched": sum(1 for i in items if i["prompt_ids_match"] is False),
        "wall_s": round(wall, 3),
        # 1-, 5- and 15-minute load averages around the replay: a busy machine changes timings
        # (and, for a batch-dependent engine, which requests share a batch), not the verdict
        "load_avg_before": load_before,
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "per_item": sorted(items, key=lambda i: i["id"]),
    }


def summary(result: dict) -> str:
    export = f"export {result['export']['name']} of " if result.get("export") else ""
    lines = [f"replayed {result['items']} evaluated items at concurrency {result['concurrency']} against {export}bundle "
             f"{str(result['bundle_digest'])[:12]} in {result['wall_s']:.1f} s: {result['identical']} identical, "
             f"{result['different']} different"]
    if result["prompt_ids_mismatched"]:
        lines.append(f"  {result['prompt_ids_mismatched']} prompts encoded differently from the evaluation "
                     "(template or system prompt drift)")
    here, there = result.get("platform") or {}, result.get("golden_platform") or {}
    if result["different"] and here.get("platform_id") != there.get("platform_id"):
        lines.append(f"  evaluated on: {there.get('description', 'not recorded')}")
        lines.append(f"  served on:    {here.get('description', 'not reported')}")
    for i in result["per_item"]:
        if not i["identical"]:
            lines.append(f"  {i['id']} ({i['slice']}): first difference at token {i['first_difference']} "
                         f"(evaluated {i['golden_tokens']} tokens, served {i['served_tokens']})")
    return "\n".join(lines)


# Tries at a loopback port: between `_free_port` closing its probe socket and the server binding
# the port, another process may take it; the server then exits, and another port is tried.
BIND_ATTEMPTS = 3
_PORT_TAKEN = ("address already in use", "errno 98", '"http_failed"')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # which drains
    try:
        proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


@contextmanager
def launched_server(release: str, extra: Sequence[str] = (), ready_timeout_s: float = 1800) -> Iterator[str]:
    """`python -m serving --bundle RELEASE` on a free loopback port; yields its /v1 URL and
    stops it (SIGTERM, which drains) afterwards. A port taken before the server bound it is
    replaced by another, up to BIND_ATTEMPTS times."""
    import httpx

    deadline = time.monotonic() + ready_timeout_s
    for attempt in range(1, BIND_ATTEMPTS + 1):
        port = _free_port()
        cmd = [sys.executable, "-m", "serving", "--bundle", release, "--port", str(port), "--max-queue", "1024",
               "--request-timeout-s", "3600", "--log-level", "WARNING", *extra]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        url = f"http://127.0.0.1:{port}"
        try:
            while True:
                if proc.poll() is not None:
                    err = proc.stderr.read()
                    if attempt < BIND_ATTEMPTS and any(m in err.lower() for m in _PORT_TAKEN):
                        break  # the port went to someone else: another one
                    raise ReplayError(f"the server exited with {proc.returncode}: {err[-2000:]}")
                try:
                    if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise ReplayError("the server did not become ready")
                time.sleep(0.5)
        except BaseException:
            _stop(proc)
            raise
        if proc.poll() is None:
            break
    try:
        yield f"{url}/v1"
    finally:
        _stop(proc)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m serving.replay", description=__doc__.split("\n\n")[0])
    p.add_argument("--golden", help="golden.json of the release (or reports/golden.json); default with --serve: "
                                    "the release's golden.json")
    p.add_argument("--serve", metavar="RELEASE_DIR",
                   help="start `python -m serving` on this release, replay against it, stop it")
    p.add_argument("--export", metavar="NAME",
                   help="with --serve: serve this export of the release instead of its bundle (python -m serving "
                        "--export; golden default: the export's own golden.json); with a bare bundle, an export folder "
                        "and --golden")
    p.add_argument("--batching", choices=("invariant", "padded"), default="invariant",
                   help="with --serve: the server's batching (padded shows what invariance fixes)")
    p.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    p.add_argument("--api-key-env", default="TAILGATE_API_KEY",
                   help="environment variable holding the server's API key, if it has one")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--public-key", help="with --serve: the server checks the release signature with this key "
                                        "(and requires it)")
    p.add_argument("--allow-parity-mismatch", action="store_true",
                   help="with --serve: start the server even if its start-up probe differs, so that every item "
                        "is replayed and reported (attestation on another platform does this)")
    p.add_argument("--timeout-s", type=float, default=600.0, help="per request")
    p.add_argument("--out", help="write the result record here (JSON)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from openai import OpenAI

    try:
        if args.golden is None and args.serve is None:
            raise ReplayError("give --golden (and --base-url), or --serve RELEASE_DIR")
        if args.export and not args.serve:
            raise ReplayError("--export goes with --serve")
        default = (Path(args.serve) / "exports" / args.export if args.export else Path(args.serve or "."))
        args.golden = args.golden or str(default / "golden.json")
        golden = json.loads(Path(args.golden).read_text(encoding="utf-8"))
        if args.concurrency < 1:
            raise ReplayError("--concurrency must be at least 1")

        def run(base_url: str) -> dict:
            client = OpenAI(base_url=base_url, api_key=os.environ.get(args.api_key_env) or "unused",
                            timeout=args.timeout_s, max_retries=0)
            return replay(golden, client, args.concurrency)

        if args.serve:
            extra = ["--max-batch", str(max(8, args.concurrency)), "--batching", args.batching,
                     *(["--export", args.export] if args.export else [])]
            if (Path(args.serve) / "manifest.json").is_file():  # a bare bundle: development only
                extra += ["--allow-unreleased", "--golden", str(args.golden)]
            if args.public_key:
                extra += ["--public-key", args.public_key, "--require-signature"]
            if args.batching == "padded" or args.allow_parity_mismatch:
                # what is measured is how far padded batches drift; the startup probe (a batch of
                # golden prompts) may already see it
                extra.append("--allow-parity-mismatch")
            with launched_server(args.serve, extra) as url:
                result = run(url)
            result["batching"] = args.batching
        else:
            result = run(args.base_url)
    except (OSError, ValueError, ReplayError) as exc:
        print(f"python -m serving.replay: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the client's connection and HTTP errors
        print(f"python -m serving.replay: the server could not be asked: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(summary(result))
    if args.out:
        from pipeline.files import atomic_write_json

        atomic_write_json(Path(args.out), result)
    return 0 if result["different"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
