"""The 4-bit layers of an inference model: one kernel on every CPU, weights dequantized once.

bitsandbytes (0.50) has two CPU paths for an eval-mode `Linear4bit`:

- on CPUs with AVX512-BF16 it converts the layer at its first no-grad forward to a packed layout
  multiplied by `gemv_4bit`, which rounds the activations to bfloat16 whatever the bundle's
  compute dtype says (float32 by default) and, measured on the default bundle, is the slower
  kernel for every prompt longer than a few tokens (67% of a 766-token prefill,
  benchmarks/results/profile.json);
- elsewhere every call dequantizes the 4-bit weight into the compute dtype and multiplies with
  `torch.nn.functional.linear` (bitsandbytes' `gemm_4bit` default kernel).

Engines built here take the second path on every CPU (`no_packing`), so the arithmetic is the
bundle's declared compute dtype and the same kernel runs on both host classes (the platform
record says `cpu-dequantize`). And since the base is frozen, the dequantized weight is the same
tensor at every call: `dequantize_once` computes it at the first call, exactly as bitsandbytes'
kernel does, and keeps it, so each later call is the same `linear` on the same tensor, bit for
bit (tests/unit/test_dequant_once.py compares every layer with bitsandbytes' own forward). A
decode step's fixed-order matmul multiplies a kept float32 weight from the 4-bit codes instead,
to the same bits (pipeline/engines/fixedmm.py: `attach_4bit`). It
costs the dequantized weights' memory (430 MB in float32 for the default 135M base), so it is
skipped when they would not fit `budget_bytes`; the numbers are the same either way.

Training never comes here (its layers run bitsandbytes' autograd path, pipeline/train/guard.py),
and on a GPU bitsandbytes' own CUDA kernels run untouched.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from pipeline.engines import fixedmm
from pipeline.engines.base import memory_share
from pipeline.platform import four_bit_layers

log = logging.getLogger(__name__)

# Dequantized weights kept by default: at most this share of the machine's memory, and never
# more than the cap (beyond it a model is large enough that per-call dequantization is cheap
# beside its matmuls, and memory is what 4-bit was for).
MEMORY_SHARE = 0.25
CAP_BYTES = 8 << 30


def default_budget() -> int:
    return memory_share(MEMORY_SHARE, CAP_BYTES)


def no_packing(model) -> int:
    """Keep every 4-bit layer on the dequantize-then-matmul path; returns the layer count.

    Must run before the model's first forward: bitsandbytes converts at that forward, and the
    conversion is not invertible (it re-quantizes the absmax statistics from bfloat16)."""
    layers = four_bit_layers(model)
    for _name, module in layers:
        module.support_avx512bf16_for_cpu = False  # read by Linear4bit.forward before converting
    return len(layers)


def _absmax(state) -> torch.Tensor:
    """A 4-bit weight's block scales as bitsandbytes' dequantize reads them: a nested absmax
    restored the same way."""
    if not state.nested:
        return state.absmax
    return torch.ops.bitsandbytes.dequantize_blockwise.default(
        state.absmax, state.state2.absmax, state.state2.code, state.state2.blocksize, torch.float32) + state.offset


def dequantized_weight(layer, dtype: torch.dtype) -> torch.Tensor:
    """The (out, in) weight bitsandbytes' gemm_4bit default kernel multiplies by, in dtype:
    its nested absmax restored the same way, then the same dequantize op."""
    state = layer.weight.quant_state
    return torch.ops.bitsandbytes.dequantize_4bit.default(
        layer.weight.view(-1, 1), _absmax(state), state.blocksize, state.quant_type, state.shape, dtype)


def _attach_codes(layer, weight: torch.Tensor) -> None:
    """Let the fixed-order decode matmul multiply a kept float32 weight from the layer's 4-bit
    codes (the same bits from an eighth of the bytes: pipeline/engines/fixedmm.py checks that)."""
    state = layer.weight.quant_state
    if weight.dtype != torch.float32 or not fixedmm.applies(weight.dtype, weight.device.type) \
            or state.code is None or state.code.numel() != 16 or len(state.shape) != 2:
        return
    absmax = _absmax(state).to(torch.float32).contiguous()
    fixedmm.attach_4bit(weight, fixedmm.FourBit(
        layer.weight.data.view(torch.uint8).reshape(-1).contiguous(), absmax,
        state.code.to(device="cpu", dtype=torch.float32).contiguous(), int(state.shape[0]), int(state.blocksize)))


def kept_forward(layer, x: torch.Tensor, linear=F.linear) -> torch.Tensor:
    """Linear4bit.forward's own steps, in its order (compute dtype, bias cast), then the
    gemm_4bit default kernel's product, `linear`, on the dequantized weight: the one the layer
    keeps, else dequantized now (the same numbers). The rowwise engine passes another `linear`
    for decode blocks on machines where F.linear is not row-invariant (blockmm.py)."""
    if not layer.compute_type_is_set:
        layer.set_compute_type(x)
        layer.compute_type_is_set = True
    inp_dtype = x.dtype
    if layer.compute_dtype is not None:
        x = x.to(layer.compute_dtype)
    bias = layer.bias
    if bias is not None:
        if bias.dtype != x.dtype:
            bias.data = bias.data.to(x.dtype)
        bias = bias.to(layer.compute_dtype)
    cache = getattr(layer, "tailgate_kept", None)
    weight = cache.get(x.dtype) if cache is not None else None
    if weight is None:
        weight = dequantized_weight(layer, x.dtype)
        if cache is not None:
            cache[x.dtype] = weight
            _attach_codes(layer, weight)
    return linear(x, weight, bias).to(inp_dtype)


def takes_kept_forward(layer, x: torch.Tensor) -> bool:
    """Whether a call is a no-grad CPU inference call on an unpacked layer (anything else goes
    through bitsandbytes unchanged)."""
    return not (layer.training or x.device.type != "cpu" or (torch.is_grad_enabled() and x.requires_grad)
                or getattr(layer.weight.quant_state, "packing_format_for_cpu", False))


def _cached_forward(layer):
    original = layer.forward
    # kept on the layer too: pipeline/engines/lora_fused.py multiplies by it directly
    layer.tailgate_kept = {}

    def forward(x: torch.Tensor) -> torch.Tensor:
        return kept_forward(layer, x) if takes_kept_forward(layer, x) else original(x)

    forward.tailgate_dequantize_once = True
    return forward


def dequantized_bytes(model, dtype: torch.dtype) -> int:
    return sum(int(torch.Size(m.weight.quant_state.shape).numel()) * torch.empty((), dtype=dtype).element_size()
               for _n, m in four_bit_layers(model))


def dequantize_once(model, budget_bytes: int | None = None) -> bool:
    """Keep each 4-bit layer's dequantized weight after its first CPU inference call, when all
    of them fit budget_bytes (default: `default_budget()`); returns whether it does."""
    layers = [m for _n, m in four_bit_layers(model) if m.weight.device.type == "cpu"]
    if not layers:
        return False
    dtype = layers[0].compute_dtype or torch.float32
    need = dequantized_bytes(model, dtype)
    budget = default_budget() if budget_bytes is None else budget_bytes
    if need > budget:
        log.info("4-bit weights dequantized at every call: keeping them would take %.2f GiB (budget %.2f GiB)",
                 need / 2**30, budget / 2**30)
        return False
    for m in layers:
        if not getattr(m.forward, "tailgate_dequantize_once", False):
            m.forward = _cached_forward(m)
    return True


def prepare_for_inference(model, budget_bytes: int | None = None) -> None:
    """Both of the above, for a model that will only ever run inference on the CPU."""
    if no_packing(model):
        dequantize_once(model, budget_bytes)
