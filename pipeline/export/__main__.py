"""`python -m pipeline.export merged|gguf --bundle artifacts/bundle --out DIR [...]`

`merged [--dtype float32]`:
Writes the bundle's adapter merged into its dequantized NF4 base as an ordinary Hugging Face
model (safetensors, tokenizer, chat template, generation config with the end-of-turn tokens,
and tailgate_export.json naming the bundle and its pinned system prompt). `gguf [--type q8_0]`:
the same weights as one GGUF file with the chat template, stop tokens and tokenizer embedded, an
Ollama Modelfile and the export record. `evaluate --export DIR --out DIR`: the export on the
bundle's suite through the engine that serves it, its damage against the bundle's evaluation, and
the gate's decision (exit 1 when it refuses the export).
"""

from __future__ import annotations

import argparse
import json
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
    ev = sub.add_parser("evaluate", help="the export on the bundle's suite, its damage against the bundle, the gate")
    ev.add_argument("--export", required=True, help="an export folder written by this command")
    ev.add_argument("--bundle", default="artifacts/bundle", help="the bundle it was made from (verified first)")
    ev.add_argument("--eval", default="reports/eval.json", help="the bundle's evaluation report")
    ev.add_argument("--samples", default="reports/eval_samples.jsonl", help="the bundle's per-item rows")
    ev.add_argument("--params", default="params.yaml", help="its `evaluate` and `gate` sections are used")
    ev.add_argument("--out", required=True, help="folder for eval.json, eval_samples.jsonl, gate.json, gate.md and "
                                                 "golden.json (the export's answers, what serving it replays)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "evaluate":
            return _evaluate(args)
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


def _evaluate(args) -> int:
    from pathlib import Path

    from pipeline.export.evaluate import evaluate_export, gate_export, read_rows
    from pipeline.files import atomic_write_json, atomic_write_text, read_json
    from pipeline.gate.decide import render_markdown
    from pipeline.params import load_section

    report, rows, golden = evaluate_export(load_section("evaluate", args.params), args.export, args.bundle,
                                   read_json(args.eval), read_rows(args.samples))
    decision = gate_export(load_section("gate", args.params), report, args.bundle)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "eval.json", report)
    atomic_write_text(out / "eval_samples.jsonl",
                      "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows))
    atomic_write_json(out / "gate.json", decision)
    atomic_write_json(out / "golden.json", golden)
    atomic_write_text(out / "gate.md", render_markdown(decision))
    d = report["damage"]
    print(f"{report['export']['kind']} export: {report['headline_metric']} "
          f"{report['overall'][report['headline_metric']]['mean']:.3f}; against the bundle: "
          f"{d['identical_outputs']:.0%} answers identical, flip rate {d['flip_rate']}, "
          f"delta NLL p99 {d.get('delta_nll_per_token', {}).get('p99')}")
    if not decision["passed"]:
        print(f"gate: the export is refused ({', '.join(decision['failed'])}); see {out / 'gate.md'}", file=sys.stderr)
        return 1
    print(f"gate: passed; {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
