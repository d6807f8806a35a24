"""The merged 16-bit export: dequant(NF4 base) + scale * B @ A, as an ordinary Hugging Face model.

The adapter learned against the dequantized 4-bit weights, not the original 16-bit ones. The
usual recipe (merge the adapter into the 16-bit base, then quantize again for llama.cpp) gives
a model the adapter was never trained with. Here the base is dequantized from the bundle's own
NF4 tensors (bitsandbytes' `dequantize_4bit`, the arithmetic the shipped forward runs wherever
it does not use a packed kernel) and widened to float32, the LoRA product is added there by peft's
merge, and the result is cast once to the export dtype. Nothing is quantized again.

The export carries what the bundle pins: the tokenizer and its chat template (byte for byte),
the end-of-turn tokens as `eos_token_id` in generation_config.json (an export that loses them
rambles past the answer), and the pinned system prompt in `tailgate_export.json` (serve it, or
the answers are not the evaluated ones). That file also binds the export to the bundle digest
and lists the sha256 of every file written.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Literal

import torch

from pipeline.bundle.verify import verify_bundle
from pipeline.export.record import EXPORT_RECORD, ExportError
from pipeline.files import atomic_write_text, sha256_file
from pipeline.platform import four_bit_layers, is_packed

log = logging.getLogger(__name__)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def load_merged(bundle_dir: str | Path):
    """The bundle's model with the adapter merged into the dequantized base, in float32 (unsaved):
    what the export writes before its final cast."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    bundle = verify_bundle(bundle_dir)
    m = bundle.manifest
    model = AutoModelForCausalLM.from_pretrained(bundle.root / "base_q", trust_remote_code=False,
                                                 device_map={"": "cpu"})
    if m.quantization.method != "none":
        # bitsandbytes repacks a layer for its CPU kernel at the first eval forward on AVX512-BF16
        # hosts; dequantize_4bit of a repacked weight is not the loaded tensor, so dequantize first
        packed = [name for name, layer in four_bit_layers(model) if is_packed(layer)]
        if packed:
            raise ExportError(f"4-bit layer {packed[0]} is in bitsandbytes' packed CPU layout before the export "
                              "dequantized it; refusing to write weights that are not the bundle's")
        # dequantize_4bit gives the weights in the compute dtype, exactly as the shipped forward
        # sees them; widening them to float32 is exact, and the LoRA product is added there
        model = model.dequantize(dtype=torch.float32)
        if four_bit_layers(model):
            raise ExportError("transformers left 4-bit layers in the dequantized model")
    model = PeftModel.from_pretrained(model, bundle.root / "adapter", is_trainable=False)
    merged = model.merge_and_unload()
    _forget_quantized_loading(merged)
    merged.eval()
    return bundle, merged


def _forget_quantized_loading(model) -> None:
    """transformers records how it converted the checkpoint while loading and replays the inverse
    on save; bitsandbytes' deserialisation has no inverse, and after dequantization nothing is
    left to invert, so those records are dropped (the others, e.g. renamings, stay)."""
    kept = []
    for conversion in getattr(model, "_weight_conversions", None) or []:
        try:
            conversion.reverse_transform()
        except NotImplementedError:
            continue
        kept.append(conversion)
    model._weight_conversions = kept


def export_merged(bundle_dir: str | Path, out_dir: str | Path,
                  dtype: Literal["bfloat16", "float16", "float32"] | None = None) -> dict:
    """Write the merged model of a verified bundle to out_dir; return the export record. dtype
    None = the bundle's compute dtype: the precision its forward ran in (on the default
    float32-compute bundle a bfloat16 export changed 63 of 256 greedy tokens over 8 items,
    benchmarks/results/export_merged.json)."""
    bundle, merged = load_merged(bundle_dir)
    m = bundle.manifest
    dtype = dtype or m.quantization.compute_dtype
    out, tmp = staging(out_dir)
    merged = merged.to(DTYPES[dtype])
    config = merged.config
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config  # the weights written are plain tensors
    gen = merged.generation_config
    gen.eos_token_id = list(m.tokenizer.stop_token_ids)  # the chat template's end of turn ends an answer
    merged.save_pretrained(tmp, safe_serialization=True)
    for f in sorted((bundle.root / "tokenizer").iterdir()):
        shutil.copy2(f, tmp / f.name)
    record = finish(tmp, out, m, {
        "kind": "merged",
        "dtype": dtype,
        "recipe": "dequantize_4bit(NF4 base), widened to float32, + peft merge of the adapter, cast once",
        "compute_dtype": m.quantization.compute_dtype,
        "quantization_of_the_bundle": m.quantization.method,
    })
    log.info("export: merged %s model of bundle %s in %s", dtype, m.bundle_digest[:12], out)
    return record


def staging(out_dir: str | Path) -> tuple[Path, Path]:
    """(the export folder, the hidden folder it is written in first): a half-written export is
    never where a runtime would look for one."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty")
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return out, tmp


def finish(tmp: Path, out: Path, manifest, record: dict) -> dict:
    """Add what every export records (the bundle, its serving pins, each file's sha256), write
    the record and move the finished folder into place."""
    record = {**record, "bundle_digest": manifest.bundle_digest, "system_prompt": manifest.tokenizer.system_prompt,
              "stop_token_ids": list(manifest.tokenizer.stop_token_ids),
              "max_context_tokens": manifest.inference.max_context_tokens,
              "files": {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}}
    atomic_write_text(tmp / EXPORT_RECORD, json.dumps(record, indent=2, sort_keys=True) + "\n")
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return record
