"""quantize stage: quantize the 16-bit base once and save it pre-quantized.

Reads: params `quantize`; `artifacts/base/` (checked against its lock first).
Writes: `artifacts/base_q/` (config with the bitsandbytes quantization_config, packed 4-bit
safetensors) and `artifacts/base_q/quantize.json` (config, library version, measured bits per
quantized parameter, file hashes).

Training, evaluation and serving all load these bytes, so one hash pins the numbers every
consumer computes on; nobody re-quantizes on load. The logic lives in quantize.py.
"""

from pipeline.quantize.quantize import MODEL_FILES, REPORT_NAME, bnb_config, measure_bits_per_param, quantize_base

__all__ = ["MODEL_FILES", "REPORT_NAME", "bnb_config", "measure_bits_per_param", "quantize_base"]
