"""DVC stage `quantize`: quantize the 16-bit base once (bitsandbytes) and save it pre-quantized.

Reads params `quantize` and --base; writes --out (default artifacts/base_q). See pipeline/quantize.
"""

from __future__ import annotations

import sys

from pipeline import cli
from pipeline.params import load_section
from pipeline.quantize import quantize_base


def main(argv=None) -> int:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--base", default="artifacts/base")
    p.add_argument("--out", default="artifacts/base_q")

    def body(args):
        params = load_section("quantize", args.params)
        report = quantize_base(params, args.base, args.out)
        bits = report["measured"]["bits_per_param"]
        cli.log.info("quantize: method=%s bits/param=%s", report["method"],
                     f"{bits:.4f}" if bits else "16-bit (not quantized)")

    return cli.run(body, p, argv)


if __name__ == "__main__":
    sys.exit(main())
