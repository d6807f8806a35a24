"""`python -m pipeline.export merged --bundle artifacts/bundle --out exports/merged [--dtype float32]`

Writes the bundle's adapter merged into its dequantized NF4 base as an ordinary Hugging Face
model (safetensors, tokenizer, chat template, generation config with the end-of-turn tokens,
and tailgate_export.json naming the bundle and its pinned system prompt).
"""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline.export.merged import DTYPES, export_merged


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.export", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    mg = sub.add_parser("merged", help="dequant(NF4 base) + the adapter, as a Hugging Face model")
    mg.add_argument("--bundle", default="artifacts/bundle", help="the bundle to export (verified first)")
    mg.add_argument("--out", required=True, help="folder to write (must not exist or be empty)")
    mg.add_argument("--dtype", choices=sorted(DTYPES), help="dtype of the weights written (default: the bundle's "
                                                           "compute dtype, the precision it was evaluated in)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        record = export_merged(args.bundle, args.out, args.dtype)
    except (ValueError, RuntimeError, FileExistsError) as exc:
        print(f"export: {exc}", file=sys.stderr)
        return 1
    print(f"wrote the merged {record['dtype']} model of bundle {record['bundle_digest'][:12]} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
