"""python -m pipeline.release: the registry from the command line.

    keygen                      create the signing key pair named in params (release.signing)
    list   [--remote R]         releases in the registry, newest first
    pull   DIGEST DEST [--remote R]
    verify DIR [--public-key K] [--require-signature]
                                open a release directory exactly as serving does
    attest DIR|DIGEST [--remote R] [--push] [--out F] [--concurrency N]
                                serve the release on this machine, replay every evaluated item, and
                                on identity write a signed attestation for this platform (a DIGEST
                                is pulled from the registry and its attestation pushed beside it)
"""

from __future__ import annotations

import argparse
import json
import sys

from pipeline import cli
from pipeline.params import load_section
from pipeline.release.open import open_release
from pipeline.release.record import ReleaseError
from pipeline.release.registry import Registry
from pipeline.release.sign import generate_key, key_fingerprint


def _attest(args, params) -> None:
    import os
    import tempfile

    from pipeline.release.attest import attest
    from pipeline.release.record import is_release_dir

    s = params.signing
    if s.method != "key":
        raise ReleaseError("attestations are signed with the release key (release.signing.method: key)")
    password = os.environ.get(s.password_env) if s.password_env else None
    registry = Registry.from_name_or_url(args.remote or params.remote)
    with tempfile.TemporaryDirectory(prefix="tailgate-attest-") as tmp:
        if is_release_dir(args.release):
            root, push = args.release, args.push
        else:
            root, push = registry.pull(args.release, os.path.join(tmp, "release")), True
        path, result = attest(root, private_key=s.private_key, public_key=s.public_key, password=password,
                              concurrency=args.concurrency, out=args.out)
        print(f"{result['identical']}/{result['items']} evaluated items identical on {result['platform']['description']}")
        print(path)
        if push:
            print(registry.push_attestation(result["bundle_digest"], path))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.release", description=__doc__.splitlines()[0])
    p.add_argument("--params", default="params.yaml")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("keygen", help="create the signing key pair named in params")
    for name in ("list", "pull"):
        s = sub.add_parser(name)
        s.add_argument("--remote", help="DVC remote name or URL (default: params release.remote)")
        if name == "pull":
            s.add_argument("digest")
            s.add_argument("dest")
    v = sub.add_parser("verify")
    v.add_argument("dir")
    v.add_argument("--public-key")
    v.add_argument("--require-signature", action="store_true")
    a = sub.add_parser("attest")
    a.add_argument("release", help="a release directory, or a bundle digest to pull from the registry")
    a.add_argument("--remote", help="DVC remote name or URL (default: params release.remote)")
    a.add_argument("--push", action="store_true", help="also put the attestation in the registry beside the release")
    a.add_argument("--out", help="attestation file (default: attestations/<digest16>-<platform_id>.intoto.json)")
    a.add_argument("--concurrency", type=int, default=8)

    def body(args):
        params = load_section("release", args.params)
        if args.command == "keygen":
            generate_key(params.signing.private_key, params.signing.public_key)
            print(f"{params.signing.public_key} (fingerprint {key_fingerprint(params.signing.public_key)})")
        elif args.command == "list":
            pointers = Registry.from_name_or_url(args.remote or params.remote).list()
            for ptr in sorted(pointers, key=lambda x: x.released_at, reverse=True):
                print(f"{ptr.bundle_digest}  {ptr.released_at}  {ptr.dvc.nfiles} files  {ptr.dvc.size / 1e6:.1f} MB")
        elif args.command == "pull":
            print(Registry.from_name_or_url(args.remote or params.remote).pull(args.digest, args.dest))
        elif args.command == "attest":
            _attest(args, params)
        else:
            opened = open_release(args.dir, public_key=args.public_key, require_signature=args.require_signature)
            print(json.dumps(opened.describe(), indent=2))

    return cli.run(body, p, argv)


if __name__ == "__main__":
    sys.exit(main())
