"""What a training run is set up with: the base it learns on, the trainable model, the optimizer.

The pieces train() (pipeline/train/run.py) calls before the first step, and that the
benchmarks call to measure the same model and optimizer the stage trains.
"""

from __future__ import annotations

import logging
import platform
from pathlib import Path

import torch

from pipeline.artifacts import BASE_LOCK
from pipeline.chat import IGNORE_INDEX
from pipeline.files import files_digest, read_json, sha256_file
from pipeline.memory import check_budget, format_plan, plan_training
from pipeline.params import TrainParams
from pipeline.train.guard import keep_differentiable

log = logging.getLogger(__name__)


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def hardware() -> str:
    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return f"cpu:{platform.machine()}"


def library_versions() -> dict[str, str]:
    import bitsandbytes
    import peft
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "bitsandbytes": bitsandbytes.__version__}


def make_optimizer(params: TrainParams, trainable):
    """Paged AdamW on CUDA (optimizer states page to host memory under pressure); torch AdamW on
    CPU, where paging buys nothing. Returns (optimizer, the name of what actually runs)."""
    choice = params.optimizer
    if choice == "auto":
        choice = "paged_adamw_32bit" if torch.cuda.is_available() else "adamw_torch"
    kw = {"lr": params.learning_rate, "weight_decay": params.weight_decay}
    if choice.startswith("paged_"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"optimizer {choice} needs CUDA; use adamw_torch or auto on CPU")
        import bitsandbytes as bnb

        cls = bnb.optim.PagedAdamW32bit if choice == "paged_adamw_32bit" else bnb.optim.PagedAdamW8bit
        return cls(trainable, **kw), choice
    return torch.optim.AdamW(trainable, **kw), "adamw_torch"


def resolve_targets(model, target_modules: str | list[str]) -> list[str]:
    """Expand "all-linear" to the sorted names of every linear layer but the output head.

    peft expands it itself, but into full module paths in set order, which would make
    adapter_config.json (and so the bundle digest) differ between otherwise identical runs.
    """
    if target_modules != "all-linear":
        return sorted(target_modules) if isinstance(target_modules, list) else [target_modules]
    import bitsandbytes as bnb

    linear = (torch.nn.Linear, bnb.nn.Linear4bit)
    head = model.get_output_embeddings()
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                   if isinstance(m, linear) and m is not head})


def load_trainable(base_dir: Path, params: TrainParams, dtype: torch.dtype | None = None,
                   device_map: dict | str | None = "device"):
    """The frozen base as saved (no re-quantization) with fresh LoRA adapters.

    device_map "device" puts it all on device(); None leaves it on the CPU (FSDP moves the shards).

    Every 4-bit layer is kept differentiable (pipeline/train/guard.py): bitsandbytes would
    otherwise pack it for inference on AVX512-BF16 CPUs at the first validation.

    peft's prepare_model_for_kbit_training is deliberately not used: it casts norms and
    embeddings to fp32, so training would compute in a precision serving never runs. The base
    stays exactly as shipped.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": dtype} if dtype is not None else {}
    if device_map is not None:
        kwargs["device_map"] = {"": device()} if device_map == "device" else device_map
    model = AutoModelForCausalLM.from_pretrained(base_dir, trust_remote_code=False, **kwargs)
    for p in model.parameters():
        p.requires_grad_(False)
    if params.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = LoraConfig(r=params.lora_r, lora_alpha=params.lora_alpha, lora_dropout=params.lora_dropout,
                      target_modules=resolve_targets(model, params.target_modules), bias="none",
                      task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    # validation must not switch a 4-bit layer to bitsandbytes' packed CPU layout (no backward)
    keep_differentiable(model)
    # Recorded relative to the bundle, so the adapter bytes do not depend on where it was built.
    model.peft_config["default"].base_model_name_or_path = "base_q"
    return model


def training_base(params: TrainParams, base_q: Path, base_dir: Path, quant: dict):
    """(directory, dtype, digest) of the base the adapter learns on.

    quantized: base_q as saved, pinned by the digest of its files. reference: the 16-bit base
    base_q was quantized from, in the compute dtype evaluation's reference pass uses, pinned by
    the sha256 of its lock (the manifest's base.source_sha256), so a bundle says which one it is.
    """
    if params.base_precision == "quantized":
        return base_q, None, files_digest(quant["files"])
    lock_sha = sha256_file(base_dir / BASE_LOCK)
    if lock_sha != quant["base_lock_sha256"]:
        raise ValueError(f"{base_dir} is not the base {base_q} was quantized from "
                         f"(lock {lock_sha[:16]}..., quantize.json says {quant['base_lock_sha256'][:16]}...)")
    return base_dir, getattr(torch, quant["params"]["compute_dtype"]), lock_sha


def memory_plan(params: TrainParams, model_dir: Path, quant: dict, examples) -> dict:
    """Log the plan of the largest step; fail here, before the model loads, over budget."""
    setup, p = plan_training(read_json(model_dir / "config.json"), params, quant["params"],
                             [(len(e.input_ids), sum(x != IGNORE_INDEX for x in e.labels)) for e in examples],
                             device())
    log.info("memory plan for the largest batch (%d x %d tokens, %.0f%% labelled), budget %s:\n%s",
             setup.batch_size, setup.seq_len, 100 * setup.labelled_fraction,
             f"{params.memory_budget_gb:g} GiB" if params.memory_budget_gb else "none", format_plan(p))
    check_budget(p, setup, params.memory_budget_gb)
    return {"seq_len": setup.seq_len, "batch_size": setup.batch_size, "labelled_fraction": round(setup.labelled_fraction, 4),
            "planned_gib": round(p.total / 2 ** 30, 3), "budget_gib": params.memory_budget_gb,
            "terms_mib": {k: round(v / 2 ** 20, 1) for k, v in p.terms.items()}}
