"""The GGUF export for llama.cpp and Ollama, written from the merged weights with `gguf`'s writer.

The weights are the merged export's (dequant(NF4 base) + the adapter, in float32: merged.py),
written once at the declared GGUF type: f32, f16, bf16 or q8_0 (gguf's own quantizer; a tensor
whose rows do not split into q8_0's 32-value blocks is written f16 and listed). Nothing passes
through the original 16-bit weights or a second quantization of them.

What an export most often loses, it carries here, and `check_gguf` reads back before the
export is kept (a file that fails is refused, naming what is missing):

- the bundle's chat template, byte for byte (`tokenizer.chat_template`);
- the end-of-turn token as the end of generation (`tokenizer.ggml.eos_token_id`, and the
  second stop token, if any, as end-of-turn), so llama.cpp stops where the bundle stops;
- the tokenizer: every token by id, its type (added special tokens are control tokens) and the
  merges, from the bundle's tokenizer files (gguf's BPE vocabulary reader);
- the bundle digest and the pinned system prompt (`tailgate.*` keys), and an Ollama Modelfile
  that sets that system prompt and the stop token.

Llama-architecture models only (Llama, SmolLM, Mistral-style without sliding windows): the
query and key projections are permuted into llama.cpp's rotary layout as its own converter
does; another architecture is refused by name rather than written wrong.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np

from pipeline.export.merged import ExportError, finish, load_merged, staging
from pipeline.files import atomic_write_text

log = logging.getLogger(__name__)

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")
ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama"}


def _types():
    import gguf

    q, f = gguf.GGMLQuantizationType, gguf.LlamaFileType
    return {"f32": (q.F32, f.ALL_F32), "f16": (q.F16, f.MOSTLY_F16), "bf16": (q.BF16, f.MOSTLY_BF16),
            "q8_0": (q.Q8_0, f.MOSTLY_Q8_0)}


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """Hugging Face's rotary layout (halves) into llama.cpp's (interleaved pairs), per head."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _rope_theta(config) -> float:
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    kind = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if kind not in ("default", None):
        raise ExportError(f"rope scaling {kind!r} is not written by the GGUF export yet")
    theta = rope.get("rope_theta") if isinstance(rope, dict) else None
    return float(theta if theta is not None else getattr(config, "rope_theta", 10000.0))


def _tensor(name: str, data: np.ndarray, gguf_type: str, fallbacks: list[str]):
    """(array, raw dtype) for one tensor at the declared type; vectors stay f32 (llama.cpp's norms)."""
    import gguf

    qtype = _types()[gguf_type][0]
    if data.ndim == 1 or gguf_type == "f32":
        return data.astype(np.float32), gguf.GGMLQuantizationType.F32
    if gguf_type == "f16":
        return data.astype(np.float16), gguf.GGMLQuantizationType.F16
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if data.shape[-1] % block:
        fallbacks.append(name)
        return data.astype(np.float16), gguf.GGMLQuantizationType.F16
    return gguf.quants.quantize(data.astype(np.float32), qtype), qtype


def write_gguf(merged, tokenizer_dir: Path, tokenizer, manifest, path: Path, gguf_type: str, pre_tokenizer: str) -> dict:
    import gguf

    config = merged.config
    arch = (config.architectures or [type(merged).__name__])[0]
    if ARCHITECTURES.get(arch) != "llama" or getattr(config, "sliding_window", None):
        raise ExportError(f"the GGUF export writes Llama-architecture models; this bundle's base is {arch}")
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name(f"tailgate export of bundle {manifest.bundle_digest[:12]}")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_file_type(_types()[gguf_type][1])

    # the tokenizer, as llama.cpp's converter writes a GPT-2-style BPE one
    vocab = gguf.vocab.BpeVocab(tokenizer_dir)
    tokens, types = [], []
    for text, _score, kind in vocab.all_tokens():
        tokens.append(text.encode("utf-8") if isinstance(text, str) else text)
        types.append(kind)
    if len(tokens) < config.vocab_size:  # embedding rows past the tokenizer's vocabulary
        for i in range(len(tokens), config.vocab_size):
            tokens.append(f"[PAD{i}]".encode())
            types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(tokenizer_dir, load_merges=True, n_vocab=len(tokens))
    stops = list(manifest.tokenizer.stop_token_ids)
    special.special_token_ids["eos"] = stops[0]  # where the bundle stops, whatever the base's config says
    if len(stops) > 1:
        special.special_token_ids["eot"] = stops[1]
    special.chat_template = None  # the bundle's own, below
    special.add_to_gguf(writer, quiet=True)
    template = tokenizer.chat_template
    if not template:
        raise ExportError("the bundle's tokenizer has no chat template to embed")
    writer.add_chat_template(template)
    writer.add_string("tailgate.bundle_digest", manifest.bundle_digest)
    if manifest.tokenizer.system_prompt is not None:
        writer.add_string("tailgate.system_prompt", manifest.tokenizer.system_prompt)

    fallbacks: list[str] = []
    counts: dict[str, int] = {}
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, tensor in merged.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reads the embedding as the output head when there is none
        stem, _, suffix = hf_name.rpartition(".")
        gguf_name = names.get_name(stem)
        if gguf_name is None:
            raise ExportError(f"no GGUF name for tensor {hf_name}")
        data = tensor.detach().float().cpu().numpy()
        if stem.endswith("self_attn.q_proj"):
            data = _permute(data, heads)
        elif stem.endswith("self_attn.k_proj"):
            data = _permute(data, kv_heads)
        array, raw = _tensor(hf_name, data, gguf_type, fallbacks)
        writer.add_tensor(f"{gguf_name}.{suffix}", array, raw_dtype=raw)
        counts[raw.name] = counts.get(raw.name, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"tensors_by_type": dict(sorted(counts.items())), "f16_fallbacks": fallbacks}


def read_fields(path: str | Path) -> dict:
    """The GGUF's scalar and string metadata (arrays left out), as gguf's reader gives them."""
    import gguf

    reader = gguf.GGUFReader(path)
    out = {}
    for key, field in reader.fields.items():
        if field.types and field.types[0] == gguf.GGUFValueType.ARRAY:
            continue
        out[key] = field.contents()
    out["_tokens"] = reader.fields["tokenizer.ggml.tokens"].contents() if "tokenizer.ggml.tokens" in reader.fields else []
    return out


def check_gguf(path: str | Path, bundle, tokenizer=None) -> list[str]:
    """What the file lacks to answer as the bundle does (empty: nothing): the chat template byte
    for byte, the stop token as end of generation, the tokenizer's tokens by id, the digest."""
    from transformers import AutoTokenizer

    m = bundle.manifest
    fields = read_fields(path)
    tok = tokenizer or AutoTokenizer.from_pretrained(bundle.root / "tokenizer")
    problems = []
    if fields.get("tokenizer.chat_template") != tok.chat_template:
        problems.append("tokenizer.chat_template is missing or not the bundle's chat template")
    eog = {fields.get("tokenizer.ggml.eos_token_id"), fields.get("tokenizer.ggml.eot_token_id")}
    if not set(m.tokenizer.stop_token_ids) & eog:
        problems.append(f"no stop token of the bundle ({list(m.tokenizer.stop_token_ids)}) ends generation "
                        f"(eos {fields.get('tokenizer.ggml.eos_token_id')})")
    vocab = tok.convert_ids_to_tokens(list(range(len(tok))))
    if fields["_tokens"][:len(vocab)] != vocab:
        problems.append("tokenizer.ggml.tokens differ from the bundle's tokenizer")
    if fields.get("tailgate.bundle_digest") != m.bundle_digest:
        problems.append("tailgate.bundle_digest does not name this bundle")
    if m.tokenizer.system_prompt is not None and fields.get("tailgate.system_prompt") != m.tokenizer.system_prompt:
        problems.append("tailgate.system_prompt is not the bundle's pinned system prompt")
    return problems


def modelfile(gguf_name: str, manifest, stop_texts: list[str]) -> str:
    """An Ollama Modelfile: the GGUF, the pinned system prompt, the stop tokens, greedy decoding
    (what was evaluated) and the bundle's context."""
    system = manifest.tokenizer.system_prompt
    if system is not None and '"""' in system:
        raise ExportError('the pinned system prompt contains """, which a Modelfile cannot quote')
    lines = ["# Ollama: ollama create NAME -f Modelfile (in this folder). Ollama takes the chat template",
             "# embedded in the GGUF; the pinned system prompt and the stop tokens are set here.",
             f"FROM ./{gguf_name}"]
    if system is not None:
        lines.append(f'SYSTEM """{system}"""')
    lines += [f"PARAMETER stop {json.dumps(t)}" for t in stop_texts]
    lines += ["PARAMETER temperature 0", f"PARAMETER num_ctx {manifest.inference.max_context_tokens}"]
    return "\n".join(lines) + "\n"


def export_gguf(bundle_dir: str | Path, out_dir: str | Path, gguf_type: str = "q8_0",
                pre_tokenizer: str = "default") -> dict:
    """Write the bundle's merged model as one GGUF file (+ Modelfile and export record) to out_dir."""
    if gguf_type not in GGUF_TYPES:
        raise ValueError(f"GGUF type {gguf_type!r}: one of {', '.join(GGUF_TYPES)}")
    bundle, merged = load_merged(bundle_dir)
    m = bundle.manifest
    out, tmp = staging(out_dir)
    name = f"model-{gguf_type}.gguf"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bundle.root / "tokenizer")
    written = write_gguf(merged, bundle.root / "tokenizer", tok, m, tmp / name, gguf_type, pre_tokenizer)
    problems = check_gguf(tmp / name, bundle, tok)
    if problems:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ExportError("the GGUF written does not carry the bundle: " + "; ".join(problems))
    stops = tok.convert_ids_to_tokens(list(m.tokenizer.stop_token_ids))
    atomic_write_text(tmp / "Modelfile", modelfile(name, m, stops))
    record = finish(tmp, out, m, {
        "kind": "gguf", "gguf_type": gguf_type, "file": name,
        "recipe": "dequantize_4bit(NF4 base), widened to float32, + peft merge of the adapter, written once "
                  "at the GGUF type by gguf's writer",
        "pre_tokenizer": pre_tokenizer, **written})
    log.info("export: %s GGUF of bundle %s in %s", gguf_type, m.bundle_digest[:12], out)
    return record

