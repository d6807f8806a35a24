"""`python -m pipeline.export merged|gguf --bundle artifacts/bundle --out DIR [...]`

`merged [--dtype float32]`:
Writes the bundle's adapter merged into its dequantized NF4 base as an ordinary Hugging Face
model (safetensors, tokenizer, chat template, generation config with the end-of-turn tokens,
and tailgate_export.json naming the bundle and its pinned system prompt). `gguf [--type q8_0]`:
the same weights as one GGUF file with the chat template, stop tokens and tokenizer embedded, an
Ollama Modelfile and the export record.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline.export.gguf_export import GGUF_TYPES, export_gguf
from pipeline.export.merged import DTYPES, export_merged


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.export", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    mg = sub.add_parser("merged", help="dequant(NF4 base) + the adapter, as a Hugging Face model")
    mg.add_argument("--bundle", default="artifacts/bundle", help="the bundle to export (verified first)")
    mg.add_argument("--out", required=True, help="folder to write (must not exist or be empty)")
    mg.add_argument("--dtype", choices=sorted(DTYPES), help="dtype of the weights written (default: the bundle's "
                                                           "compute dtype, the precision it was evaluated in)")
    gg = sub.add_parser("gguf", help="the merged weights as one GGUF file for llama.cpp / Ollama")
    gg.add_argument("--bundle", default="artifacts/bundle", help="the bundle to export (verified first)")
    gg.add_argument("--out", required=True, help="folder to write (must not exist or be empty)")
    gg.add_argument("--type", default="q8_0", choices=GGUF_TYPES, help="GGUF tensor type (default q8_0)")
    gg.add_argument("--pre-tokenizer", default="default",
                    help="llama.cpp's name for the tokenizer's pre-tokenization (`tokenizer.ggml.pre`; SmolLM2: "
                         "smollm); llama.cpp falls back to its default one when it does not know the name")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "gguf":
            record = export_gguf(args.bundle, args.out, args.type, args.pre_tokenizer)
            print(f"wrote the {record['gguf_type']} GGUF of bundle {record['bundle_digest'][:12]} to "
                  f"{args.out}/{record['file']} (with a Modelfile for Ollama)")
            return 0
        record = export_merged(args.bundle, args.out, args.dtype)
    except (ValueError, RuntimeError, FileExistsError) as exc:
        print(f"export: {exc}", file=sys.stderr)
        return 1
    print(f"wrote the merged {record['dtype']} model of bundle {record['bundle_digest'][:12]} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
