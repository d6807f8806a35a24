"""DVC stage `base`: write the 16-bit base model, tokenizer and chat template with a lock file.

Reads params `base`; writes --out (default artifacts/base). See pipeline/base.
"""

from __future__ import annotations

import sys

from pipeline import cli
from pipeline.base import fetch_base
from pipeline.params import load_section


def main(argv=None) -> int:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--out", default="artifacts/base")

    def body(args):
        params = load_section("base", args.params)
        lock = fetch_base(params, args.out)
        cli.log.info("base: %s, %d parameters, %d files", lock["architecture"],
                     lock["num_parameters"], len(lock["files"]))

    return cli.run(body, p, argv)


if __name__ == "__main__":
    sys.exit(main())
