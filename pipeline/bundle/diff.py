"""List every pinned difference between two bundles.

    python -m pipeline.bundle.diff artifacts/bundle other/bundle

Compares the manifests section by section (quantization config, library versions, context
length, data digest, chat template, every file hash...), so a comparison of two candidates
cannot credit the data for what the configuration did. Both bundles are verified first: a
diff of manifests that do not describe their files would be a diff of claims. Exit code 0
when the bundles pin the same model, 1 when they differ, 2 when one fails verification.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Iterator

from pipeline.bundle.manifest import DIGESTED_SECTIONS
from pipeline.bundle.verify import BundleError, verify_bundle


def _walk(path: str, a: Any, b: Any) -> Iterator[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            yield from _walk(f"{path}.{key}" if path else str(key), a.get(key), b.get(key))
    elif a != b:
        yield path, a, b


def diff_manifests(a: dict, b: dict, include_build: bool = False) -> list[tuple[str, Any, Any]]:
    """(dotted path, value in a, value in b) for every digested field that differs; the
    `built` section (time, host, paths) only on request, since it never changes behaviour."""
    sections = DIGESTED_SECTIONS + (("built",) if include_build else ())
    return [d for s in sections for d in _walk(s, a.get(s), b.get(s))]


def _short(v: Any) -> str:
    text = str(v)
    return text if len(text) <= 70 else text[:67] + "..."


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.bundle.diff", description=__doc__.splitlines()[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--include-build", action="store_true", help="also list time/host/path differences")
    args = p.parse_args(argv)
    try:
        ma, mb = (verify_bundle(x).manifest.model_dump(mode="json") for x in (args.a, args.b))
    except BundleError as exc:
        print(f"refusing to diff: {exc}", file=sys.stderr)
        return 2
    diffs = diff_manifests(ma, mb, args.include_build)
    print(f"a: {args.a}  {ma['bundle_digest'][:16]}\nb: {args.b}  {mb['bundle_digest'][:16]}")
    if not diffs:
        print("no pinned differences: both bundles pin the same model")
        return 0
    for path, va, vb in diffs:
        print(f"{path}\n  a: {_short(va)}\n  b: {_short(vb)}")
    print(f"{len(diffs)} pinned difference(s)")
    return 1


if __name__ == "__main__":
    sys.exit(main())
