"""python -m pipeline.release: the registry from the command line.

    keygen                      create the signing key pair named in params (release.signing)
    list   [--remote R]         releases in the registry, newest first
    pull   DIGEST DEST [--remote R]
    verify DIR [--public-key K] [--require-signature]
                                open a release directory exactly as serving does
"""

from __future__ import annotations

import argparse
import json
import sys

from pipeline import cli
from pipeline.params import load_section
from pipeline.release.open import open_release
from pipeline.release.registry import Registry
from pipeline.release.sign import generate_key, key_fingerprint


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
        else:
            opened = open_release(args.dir, public_key=args.public_key, require_signature=args.require_signature)
            print(json.dumps(opened.describe(), indent=2))

    return cli.run(body, p, argv)


if __name__ == "__main__":
    sys.exit(main())
