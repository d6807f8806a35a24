"""A decode pass over a Llama decoder without transformers' module machinery: the same ops.

Why: with the matmuls from 4-bit codes (pipeline/engines/fixedmm.py), a lone row's decode step
of the default model spent about 12 of its 25 ms outside the matmuls and attention, most of it
the Python of transformers' forward: the model's output-capturing decorators, a causal mask
built for an attention that does not read it (each row attends over its own cache), and some 400
module calls a step. `decode_pass` runs the same torch ops on the same tensors in the order
transformers 5 writes them (LlamaModel.forward, LlamaDecoderLayer, LlamaAttention, LlamaMLP,
LlamaRMSNorm), calling each projection's forward directly, so its numbers are the model's own,
bit for bit.

`applies` admits only a decoder made of exactly those classes, with no forward hooks anywhere
(calling a forward directly would skip them); the runner compares one decode pass both ways when
it loads (rowwise.RowwiseRunner) and keeps transformers' forward on any difference, so a
transformers release that changes a layer changes nothing here but the speed.
"""

from __future__ import annotations

import torch


def _llama():
    from transformers.models.llama import modeling_llama

    return modeling_llama


def _hooked(module: torch.nn.Module) -> bool:
    from torch.nn.modules import module as nn_module

    if nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def applies(decoder) -> bool:
    """Whether `decode_pass` computes this decoder's pass (exactly Llama's classes, no hooks)."""
    ml = _llama()
    if type(decoder) is not ml.LlamaModel or type(decoder.norm) is not ml.LlamaRMSNorm or _hooked(decoder):
        return False
    return all(type(layer) is ml.LlamaDecoderLayer and type(layer.self_attn) is ml.LlamaAttention
               and type(layer.mlp) is ml.LlamaMLP and type(layer.input_layernorm) is ml.LlamaRMSNorm
               and type(layer.post_attention_layernorm) is ml.LlamaRMSNorm
               for layer in decoder.layers[: decoder.config.num_hidden_layers])


def _norm(norm, x: torch.Tensor) -> torch.Tensor:
    # LlamaRMSNorm.forward
    dtype = x.dtype
    h = x.to(torch.float32)
    variance = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(variance + norm.variance_epsilon)
    return norm.weight * h.to(dtype)


def decode_pass(decoder, ids: torch.Tensor, pos: torch.Tensor, attention, rows) -> torch.Tensor:
    """LlamaModel.forward's last hidden state for (rows, 1) token ids at their positions, each
    layer's attention `attention` (rowwise.rowwise_attention) over `rows`, the rows' caches."""
    rotate = _llama().apply_rotary_pos_emb
    hidden = decoder.embed_tokens(ids)
    cos, sin = decoder.rotary_emb(hidden, position_ids=pos)
    for layer in decoder.layers[: decoder.config.num_hidden_layers]:
        attn, mlp = layer.self_attn, layer.mlp
        residual = hidden
        h = _norm(layer.input_layernorm, hidden)
        shape = h.shape[:-1]
        heads = (*shape, -1, attn.head_dim)
        q = attn.q_proj.forward(h).view(heads).transpose(1, 2)
        k = attn.k_proj.forward(h).view(heads).transpose(1, 2)
        v = attn.v_proj.forward(h).view(heads).transpose(1, 2)
        q, k = rotate(q, k, cos, sin)
        out, _ = attention(attn, q, k, v, None, dropout=0.0, scaling=attn.scaling, tailgate_rows=rows)
        hidden = residual + attn.o_proj.forward(out.reshape(*shape, -1).contiguous())
        residual = hidden
        h = _norm(layer.post_attention_layernorm, hidden)
        hidden = residual + mlp.down_proj.forward(mlp.act_fn(mlp.gate_proj.forward(h)) * mlp.up_proj.forward(h))
    return _norm(decoder.norm, hidden)
