"""Quantize the 16-bit base once (bitsandbytes) and save it pre-quantized, with its report.

bnb_config turns QuantizeParams into the BitsAndBytesConfig every consumer loads with;
measure_bits_per_param counts what is really stored per quantized weight; quantize_base writes
`base_q/` and quantize.json (or links the 16-bit base for method=none).
"""


from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch

from pipeline.artifacts import QUANTIZE_REPORT as REPORT_NAME
from pipeline.base import LOCK_NAME, check_lock
from pipeline.files import atomic_dir, atomic_write_json, hash_files, list_files
from pipeline.params import QuantizeParams

log = logging.getLogger(__name__)

# Tokenizer files are not part of base_q: the bundle carries them in its own tokenizer/ folder.
MODEL_FILES = ("config.json", "generation_config.json")


def bnb_config(params: QuantizeParams):
    """The BitsAndBytesConfig for params, or None for a 16-bit base (method=none)."""
    if params.method == "none":
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=params.method,
        bnb_4bit_use_double_quant=params.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, params.compute_dtype),
        bnb_4bit_quant_storage=getattr(torch, params.quant_storage),
    )


def measure_bits_per_param(model) -> dict:
    """Bits actually stored per quantized weight: packed 4-bit codes plus both constant levels.

    Counts the packed uint8 weights, the first-level absmax (8-bit when double-quantized,
    fp32 otherwise), the second-level absmax (fp32) and its offset. The 16-entry NF4 code and
    the 256-entry second-level code are per-layer lookup tables, reported apart.
    """
    import bitsandbytes as bnb

    n_params = stored_bits = table_bits = layers = 0
    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        weight = module.weight
        qs = weight.quant_state
        layers += 1
        n = qs.shape.numel()
        n_params += n
        stored_bits += weight.numel() * weight.element_size() * 8
        stored_bits += qs.absmax.numel() * qs.absmax.element_size() * 8
        if qs.nested:
            stored_bits += qs.state2.absmax.numel() * qs.state2.absmax.element_size() * 8
            stored_bits += qs.offset.numel() * qs.offset.element_size() * 8
            table_bits += qs.state2.code.numel() * qs.state2.code.element_size() * 8
        table_bits += qs.code.numel() * qs.code.element_size() * 8
    if not n_params:
        return {"quantized_layers": 0, "quantized_params": 0, "bits_per_param": None}
    return {
        "quantized_layers": layers,
        "quantized_params": n_params,
        "bits_per_param": stored_bits / n_params,
        "lookup_table_bits_per_param": table_bits / n_params,
    }


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def quantize_base(params: QuantizeParams, base_dir: str | Path, out_dir: str | Path) -> dict:
    """Write the quantized base to out_dir; return the quantize report."""
    import bitsandbytes
    from transformers import AutoModelForCausalLM

    base_dir = Path(base_dir)
    lock = check_lock(base_dir)
    qconfig = bnb_config(params)
    with atomic_dir(out_dir) as tmp:
        if qconfig is None:
            # 16-bit LoRA: base_q is the base itself, linked not copied.
            for name in lock["files"]:
                if name.endswith(".safetensors") or name in MODEL_FILES:
                    _link_or_copy(base_dir / name, tmp / name)
            measured = {"quantized_layers": 0, "quantized_params": 0, "bits_per_param": None}
        else:
            model = AutoModelForCausalLM.from_pretrained(
                base_dir, quantization_config=qconfig, dtype=getattr(torch, params.compute_dtype)
            )
            measured = measure_bits_per_param(model)
            model.save_pretrained(tmp)
        files = [f for f in list_files(tmp) if f != REPORT_NAME]
        report = {
            "method": params.method,
            "params": params.model_dump(),
            "bnb_config": qconfig.to_dict() if qconfig is not None else None,
            "bitsandbytes_version": bitsandbytes.__version__,
            "base_lock_sha256": hash_files(base_dir, [LOCK_NAME])[LOCK_NAME],
            "measured": measured,
            "files": {f: {"sha256": h, "size": (tmp / f).stat().st_size}
                      for f, h in hash_files(tmp, files).items()},
        }
        atomic_write_json(tmp / REPORT_NAME, report)
    if measured["bits_per_param"]:
        log.info("quantized %d layers, %.4f bits per quantized parameter",
                 measured["quantized_layers"], measured["bits_per_param"])
    return report
