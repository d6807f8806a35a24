"""DVC stage `bundle`: assemble the verifiable bundle (manifest + base_q + adapter + tokenizer).

Reads params `bundle`, --base, --base-q, --adapter; writes --out. See pipeline/bundle.
"""

from __future__ import annotations

import sys

from pipeline import cli
from pipeline.bundle.build import build_bundle
from pipeline.params import load_section


def main(argv=None) -> int:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--base", default="artifacts/base")
    p.add_argument("--base-q", default="artifacts/base_q")
    p.add_argument("--adapter", default="artifacts/adapter")
    p.add_argument("--out", default="artifacts/bundle")

    def body(args):
        params = load_section("bundle", args.params)
        manifest = build_bundle(params, args.base, args.base_q, args.adapter, args.out)
        cli.log.info("bundle: digest %s, %d files", manifest.bundle_digest, len(manifest.all_files()))

    return cli.run(body, p, argv)


if __name__ == "__main__":
    sys.exit(main())
