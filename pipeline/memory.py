"""Memory planner: predict peak training memory of a QLoRA run before loading anything.

    python -m pipeline.memory --config artifacts/base/config.json --seq-len 1024 --batch-size 4
    python -m pipeline.memory --paper      # the planning table for LLaMA 7B/13B/33B/65B

The plan adds up what a QLoRA step holds at its peak, term by term, from the model config:

- quantized linear weights at the measured bits per parameter (NF4 + double quantization at
  blocksize 64: 4 + 8/64 + 32/(64*256) = 4.127 bits; without double quantization 4.5; none 16);
- the unquantized embeddings, output head (when untied) and norms, stored in the compute dtype;
- LoRA parameters, their gradients and the optimizer's moments (peft keeps adapters in fp32;
  AdamW holds two fp32 moments per parameter, the 8-bit variant two bytes);
- activations saved for backward, per token per layer: the tensors a Llama block keeps in the
  compute dtype (float32 by default on CPU, bf16 on a GPU)
  (norm inputs and outputs, q/k/v, attention output, the four MLP intermediates), the fp32
  copies peft makes of each adapter's input when the compute dtype is not fp32, and the rank-r
  adapter intermediates; with
  gradient checkpointing only each block's input plus one block recomputed at a time; the
  attention probabilities (heads x L x L) when the attention kernel materializes them;
- the loss: logits in bf16 and fp32 plus the saved log-softmax, over the labelled positions
  only when the trainer runs the head there (tailgate's does), else over every position;
- the runtime (CUDA context, or on CPU the interpreter with torch/transformers/peft loaded);
- on CPU under glibc's default allocator, the heap it keeps: freed blocks stay mapped and are
  reused imperfectly, and the measured peak RSS sits about one full set of (unrecomputed)
  activations above the live peak, whatever the shape or checkpointing
  (benchmarks/results/memory_plan.json). A process that returns large blocks to the system
  (MALLOC_MMAP_THRESHOLD_ set: slower) does not keep it; a GPU's caching allocator is another
  matter (not measured).

Checked against measured peaks on the tiny and default models by benchmarks/memory_plan.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

GIB = 1024 ** 3
# Runtime floor measured on this project's machines: the CUDA context and cuBLAS workspace on a
# GPU; on CPU the interpreter with torch, transformers, peft and bitsandbytes imported (426 MiB).
RUNTIME_BYTES = {"cuda": int(0.75 * GIB), "cpu": 426 * 1024 ** 2}
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def bits_per_param(method: str, double_quant: bool, blocksize: int = 64, blocksize2: int = 256) -> float:
    """Stored bits per quantized weight: 4-bit codes plus the per-block constants."""
    if method == "none":
        return 16.0
    if double_quant:  # 8-bit absmax per block, fp32 absmax per block of absmaxes
        return 4 + 8 / blocksize + 32 / (blocksize * blocksize2)
    return 4 + 32 / blocksize


@dataclass(frozen=True)
class Shape:
    """What the plan needs of a decoder-only Llama-family config."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    head_dim: int

    @classmethod
    def from_config(cls, cfg: dict) -> "Shape":
        heads = cfg["num_attention_heads"]
        return cls(layers=cfg["num_hidden_layers"], hidden=cfg["hidden_size"], intermediate=cfg["intermediate_size"],
                   heads=heads, kv_heads=cfg.get("num_key_value_heads") or heads, vocab=cfg["vocab_size"],
                   tied=bool(cfg.get("tie_word_embeddings", False)),
                   head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads)

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each projection in one block."""
        h, i, kv = self.hidden, self.intermediate, self.kv_heads * self.head_dim
        q = self.heads * self.head_dim
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.linear_shapes().values())


@dataclass(frozen=True)
class Setup:
    """How the model is trained: what changes the memory, nothing else."""

    seq_len: int
    batch_size: int
    lora_r: int = 16
    targets: tuple[str, ...] = LORA_TARGETS
    method: str = "nf4"
    double_quant: bool = True
    gradient_checkpointing: bool = False
    optimizer: str = "adamw"                 # adamw (two fp32 moments) | adamw_8bit
    device: str = "cpu"
    compute_bytes: int = 2                   # the compute dtype's: bf16 2, float32 4
    adapter_bytes: int = 4                   # peft keeps adapters (and casts their inputs) in fp32
    labelled_fraction: float = 1.0           # share of positions the head runs on
    attention_matrix: bool = False           # the kernel keeps heads x L x L probabilities for backward
    heap_retention: bool = False             # CPU, glibc's default allocator: its kept heap is planned


@dataclass
class Plan:
    terms: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.terms.values())

    def as_dict(self) -> dict:
        return {"terms_bytes": self.terms, "total_bytes": self.total, "total_gib": round(self.total / GIB, 3)}


def _block_activation_bytes(s: Shape, u: Setup) -> int:
    """Bytes one block saves for backward, per token."""
    h, i = s.hidden, s.intermediate
    q, kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    # in the compute dtype: norm-1 input and output, q, k, v, attention output, norm-2 input and
    # output, gate, up, SiLU(gate), SiLU(gate) * up (the down projection's input)
    compute = u.compute_bytes * (4 * h + 2 * q + 2 * kv + 4 * i)
    shapes = s.linear_shapes()
    # each adapter keeps its rank-r intermediate; peft also keeps a copy of the adapter's input
    # cast to the adapter dtype, unless the input already is in it (float32 compute): then the
    # tensor saved is the block's own, counted above
    copied = u.compute_bytes != u.adapter_bytes
    adapters = sum(u.adapter_bytes * (shapes[t][0] * copied + u.lora_r) for t in u.targets if t in shapes)
    lse = 4 * s.heads  # the attention kernel's fp32 log-sum-exp per head
    return compute + adapters + lse


def plan(s: Shape, u: Setup) -> Plan:
    p = Plan()
    shapes = s.linear_shapes()
    p.terms["quantized_weights"] = int(s.linear_params() * bits_per_param(u.method, u.double_quant) / 8)
    sixteen = s.vocab * s.hidden * (1 if s.tied else 2) + s.hidden * (2 * s.layers + 1)
    p.terms["16bit_embeddings_norms"] = u.compute_bytes * sixteen  # stored in the compute dtype
    lora = s.layers * sum(u.lora_r * (shapes[t][0] + shapes[t][1]) for t in u.targets if t in shapes)
    moments = 8 if u.optimizer == "adamw" else 2
    p.terms["lora_weights_grads_optimizer"] = lora * (u.adapter_bytes * 2 + moments)
    tokens = u.seq_len * u.batch_size
    per_block = _block_activation_bytes(s, u)
    attn = u.batch_size * s.heads * u.seq_len ** 2 * u.compute_bytes if u.attention_matrix else 0
    if u.gradient_checkpointing:  # block inputs kept; one block's activations rebuilt at a time
        p.terms["activations"] = s.layers * tokens * s.hidden * u.compute_bytes + tokens * per_block + attn
    else:
        p.terms["activations"] = s.layers * (tokens * per_block + attn)
    # backward of one block: gradients of its activations and one dequantized weight at a time
    p.terms["backward_workspace"] = tokens * per_block + u.compute_bytes * max(a * b for a, b in shapes.values())
    labelled = int(tokens * u.labelled_fraction)
    p.terms["loss_logits"] = labelled * s.vocab * (u.compute_bytes + 4 + 4) + tokens * s.hidden * u.compute_bytes * 2
    p.terms["runtime"] = RUNTIME_BYTES[u.device]
    if u.heap_retention and u.device == "cpu":
        p.terms["cpu_heap_retained"] = s.layers * (tokens * per_block + attn)
    return p


def heap_retained(device: str, environ=None) -> bool:
    """Whether a process on `device` keeps glibc's freed heap: on CPU unless told to return large
    blocks to the system (MALLOC_MMAP_THRESHOLD_, or the same glibc tunable)."""
    import os

    env = os.environ if environ is None else environ
    returned = "MALLOC_MMAP_THRESHOLD_" in env or "glibc.malloc.mmap_threshold" in env.get("GLIBC_TUNABLES", "")
    return device == "cpu" and not returned


def dtype_bytes(dtype: str | None) -> int:
    """Bytes per element of a compute dtype by name (None: bf16, the QLoRA recipe's)."""
    return 4 if dtype in ("float32", "fp32") else 2


def compute_dtype_of(config: dict) -> str | None:
    """The compute dtype a pre-quantized base's config records (bitsandbytes' quantization_config)."""
    return (config.get("quantization_config") or {}).get("bnb_4bit_compute_dtype")


class MemoryBudgetExceeded(ValueError):
    """The plan for a training run is larger than train.memory_budget_gb."""


def plan_training(config: dict, params, quant_params: dict, lengths_labelled: list[tuple[int, int]],
                  device: str) -> tuple[Setup, Plan]:
    """The plan of the train stage's largest micro-batch.

    lengths_labelled holds (tokens, labelled tokens) per training example. Length-grouped
    batches pad to their longest member, so the peak step is the batch of the longest
    examples: its padded length and labelled share are what the plan takes.
    """
    top = sorted(lengths_labelled, reverse=True)[:params.batch_size]
    seq_len = top[0][0]
    labelled = sum(n for _, n in top) / (seq_len * len(top))
    method = quant_params.get("method", "none") if params.base_precision == "quantized" else "none"
    setup = Setup(seq_len=seq_len, batch_size=params.batch_size, lora_r=params.lora_r, method=method,
                  double_quant=bool(quant_params.get("double_quant", False)),
                  gradient_checkpointing=params.gradient_checkpointing,
                  optimizer="adamw_8bit" if params.optimizer == "paged_adamw_8bit" else "adamw",
                  device="cuda" if device.startswith("cuda") else "cpu", labelled_fraction=labelled,
                  heap_retention=heap_retained("cuda" if device.startswith("cuda") else "cpu"),
                  # the default computes in float32 on CPU: every activation twice the bf16 size
                  compute_bytes=dtype_bytes(quant_params.get("compute_dtype")))
    return setup, plan(Shape.from_config(config), setup)


def check_budget(p: Plan, setup: Setup, budget_gb: float | None) -> None:
    """Raise MemoryBudgetExceeded, naming the largest terms and what would shrink them."""
    if budget_gb is None or p.total <= budget_gb * GIB:
        return
    top = sorted(p.terms.items(), key=lambda kv: -kv[1])[:3]
    hints = []
    if not setup.gradient_checkpointing:
        hints.append("train.gradient_checkpointing: true")
    if setup.batch_size > 1:
        hints.append("a smaller train.batch_size with more train.grad_accum_steps")
    hints.append("a lower curate.max_seq_len_tokens")
    raise MemoryBudgetExceeded(
        f"the memory plan for the largest batch ({setup.batch_size} x {setup.seq_len} tokens) is "
        f"{p.total / GIB:.2f} GiB, over train.memory_budget_gb = {budget_gb:g}; largest terms: "
        + ", ".join(f"{k} {v / GIB:.2f} GiB" for k, v in top) + ". Try " + ", or ".join(hints) + ".")


# LLaMA-1 configs (the QLoRA paper's models) and the paper's own figures: the 4-bit model's
# memory (Guanaco, Table 6) and the headline claim that the 65B model finetunes on one 48 GB GPU.
PAPER_MODELS: dict[str, dict] = {
    "7B": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32},
    "13B": {"hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40, "num_attention_heads": 40},
    "33B": {"hidden_size": 6656, "intermediate_size": 17920, "num_hidden_layers": 60, "num_attention_heads": 52},
    "65B": {"hidden_size": 8192, "intermediate_size": 22016, "num_hidden_layers": 80, "num_attention_heads": 64},
}
PAPER_MODEL_GB = {"7B": 5, "13B": 10, "33B": 21, "65B": 41}
PAPER_FINETUNE_FITS_GB = {"65B": 48}


def paper_table(seq_len: int = 512, batch_size: int = 1, lora_r: int = 64) -> list[dict]:
    """The planner on the paper's setting: LoRA r=64 on every linear layer, 32-bit paged AdamW,
    gradient checkpointing, bf16 compute and bf16 adapters (the paper's code casts the LoRA
    modules to bf16; peft's default, and tailgate's, keeps them in fp32), on CUDA."""
    rows = []
    for name, cfg in PAPER_MODELS.items():
        s = Shape.from_config({**cfg, "vocab_size": 32000, "tie_word_embeddings": False})
        u = Setup(seq_len=seq_len, batch_size=batch_size, lora_r=lora_r, gradient_checkpointing=True, device="cuda",
                  adapter_bytes=2)
        p = plan(s, u)
        t = p.terms
        rows.append({"model": name, "params_b": round((s.linear_params() + s.vocab * s.hidden * 2) / 1e9, 2),
                     "weights_gb": round((t["quantized_weights"] + t["16bit_embeddings_norms"]) / 1e9, 1),
                     "lora_state_gb": round(t["lora_weights_grads_optimizer"] / 1e9, 2),
                     "activations_gb": round((t["activations"] + t["backward_workspace"] + t["loss_logits"]) / 1e9, 2),
                     "total_gb": round(p.total / 1e9, 1), "paper_model_gb": PAPER_MODEL_GB[name],
                     "paper_finetune_fits_gb": PAPER_FINETUNE_FITS_GB.get(name)})
    return rows


def format_plan(p: Plan) -> str:
    width = max(len(k) for k in p.terms)
    lines = [f"  {k:<{width}}  {v / GIB:8.3f} GiB" for k, v in p.terms.items()]
    return "\n".join(lines + [f"  {'total':<{width}}  {p.total / GIB:8.3f} GiB"])


def format_paper_table(rows: list[dict]) -> str:
    head = ("| model | params (B) | 4-bit weights + 16-bit embeddings (GB) | LoRA + grads + AdamW (GB) "
            "| activations + loss (GB) | planned total (GB) | paper: 4-bit model (GB) | paper: finetune fits in (GB) |")
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        fits = r["paper_finetune_fits_gb"] or "-"
        lines.append(f"| {r['model']} | {r['params_b']} | {r['weights_gb']} | {r['lora_state_gb']} | "
                     f"{r['activations_gb']} | {r['total_gb']} | {r['paper_model_gb']} | {fits} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.memory", description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, help="a model's config.json")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--method", choices=("nf4", "fp4", "none"), default="nf4")
    ap.add_argument("--no-double-quant", action="store_true")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--optimizer", choices=("adamw", "adamw_8bit"), default="adamw")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--labelled-fraction", type=float, default=1.0)
    ap.add_argument("--compute-dtype", choices=("bfloat16", "float16", "float32"),
                    help="default: the config's bitsandbytes compute dtype, else bfloat16")
    ap.add_argument("--attention-matrix", action="store_true", help="the attention kernel keeps L x L probabilities")
    ap.add_argument("--live", action="store_true",
                    help="live tensors only: leave out the heap glibc keeps on CPU (what the process peaks at "
                         "with MALLOC_MMAP_THRESHOLD_ set)")
    ap.add_argument("--paper", action="store_true", help="print the LLaMA 7B-65B table next to the QLoRA paper")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.paper:
        rows = paper_table()
        print(json.dumps(rows, indent=1) if args.json else format_paper_table(rows))
        return 0
    if args.config is None:
        ap.error("--config or --paper is required")
    cfg = json.loads(args.config.read_text())
    s = Shape.from_config(cfg)
    u = Setup(seq_len=args.seq_len, batch_size=args.batch_size, lora_r=args.lora_r, method=args.method,
              double_quant=not args.no_double_quant, gradient_checkpointing=args.gradient_checkpointing,
              optimizer=args.optimizer, device=args.device, labelled_fraction=args.labelled_fraction,
              attention_matrix=args.attention_matrix, heap_retention=not args.live and heap_retained(args.device),
              compute_bytes=dtype_bytes(args.compute_dtype or compute_dtype_of(cfg)))
    p = plan(s, u)
    print(json.dumps({"shape": asdict(s), "setup": asdict(u), **p.as_dict()}, indent=1) if args.json
          else format_plan(p))
    return 0


if __name__ == "__main__":
    sys.exit(main())
