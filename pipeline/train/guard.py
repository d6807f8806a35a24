"""Training never computes on a 4-bit layer that cannot backpropagate.

bitsandbytes (0.50) converts a `Linear4bit` to its CPU packed layout the first time the layer
runs in `eval()` mode on an input that needs no gradient, on CPUs with AVX512-BF16
(`weight.quant_state.packing_format_for_cpu` becomes True). From then on the layer multiplies
with `gemv_4bit`, which has no autograd kernel: a backward through it gives its input no
gradient, so every LoRA layer below it learns from a truncated gradient, silently (torch only
warns). The training loop validates in exactly that mode, so on such a host the second half of
a run learned wrong while the reports looked normal.

Two defences, both here:

- `keep_differentiable` turns the conversion off for every 4-bit layer of a trainable model
  (the per-layer flag bitsandbytes reads before converting), so validation runs the same
  dequantize-then-matmul arithmetic as the training steps, on every host.
- `check_differentiable` refuses to go on when any 4-bit layer is packed anyway (a bitsandbytes
  upgrade that converts elsewhere, a layer swapped in after loading), naming the layer. The
  loop calls it before every optimizer step, after validation, after a resume and before a
  checkpoint is written. Converting back is not offered: the inverse re-quantizes the absmax
  statistics from bfloat16, so the restored layer is not the layer that was loaded.
"""

from __future__ import annotations


from pipeline.platform import four_bit_layers, is_packed

__all__ = ["PackedWeightError", "check_differentiable", "four_bit_layers", "is_packed", "keep_differentiable"]


class PackedWeightError(RuntimeError):
    """A 4-bit layer of a model being trained is in a state backward cannot go through."""


def keep_differentiable(model) -> int:
    """Stop bitsandbytes from converting any 4-bit layer to its inference-only CPU layout;
    returns how many layers there are."""
    layers = four_bit_layers(model)
    for _name, module in layers:
        # read by Linear4bit.forward before it converts; set per instance at construction from
        # the CPU probe, so turning it off here changes this model only
        module.support_avx512bf16_for_cpu = False
    check_differentiable(model, "start training")
    return len(layers)


def check_differentiable(model, when: str) -> None:
    """Raise PackedWeightError naming the first 4-bit layer backward cannot go through."""
    packed = [name for name, m in four_bit_layers(model) if is_packed(m)]
    if packed:
        more = f" (and {len(packed) - 1} more)" if len(packed) > 1 else ""
        raise PackedWeightError(
            f"refusing to {when}: 4-bit layer {packed[0]}{more} is in bitsandbytes' packed CPU inference layout, "
            "which has no backward (its input would get no gradient). Training must not run the model in eval "
            "mode with packing enabled; pipeline.train.guard.keep_differentiable turns it off.")
