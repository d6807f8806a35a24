"""The `train` and `bundle` sections: QLoRA fine-tuning and the bundle it ships in."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from pipeline.params.common import _Strict


class TrainParams(_Strict):
    """QLoRA fine-tuning of LoRA adapters on the frozen (quantized) base."""

    seed: int = Field(1234, description="Seed for adapter init, dropout and batch order.")
    lora_r: int = Field(16, gt=0, description="LoRA rank.")
    lora_alpha: int = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input (0.05 cost 1.35x step time on CPU here).")
    target_modules: str | list[str] = Field(
        "all-linear", description="Modules that get adapters; all-linear = every linear layer but the head."
    )
    learning_rate: float = Field(2e-4, gt=0.0, description="Peak learning rate.")
    warmup_steps: int = Field(10, ge=0, description="Linear warm-up steps before cosine decay.")
    max_steps: int = Field(50, gt=0, description="Optimizer steps.")
    batch_size: int = Field(4, gt=0, description="Sequences per micro-batch.")
    grad_accum_steps: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay on LoRA parameters.")
    max_grad_norm: float = Field(1.0, gt=0.0, description="Gradient clipping norm.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in backward: less memory, slower (about 30% here)."
    )
    optimizer: Literal["auto", "adamw_torch", "paged_adamw_32bit", "paged_adamw_8bit"] = Field(
        "auto", description="auto = paged AdamW (bitsandbytes) on CUDA, torch AdamW on CPU."
    )
    val_every_steps: int = Field(25, gt=0, description="Validation loss interval in optimizer steps.")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after this many validations without a new best val loss; None = never.")
    checkpoint_every_steps: int = Field(
        10, ge=0, description="Write an atomic, resumable checkpoint every N optimizer steps (0 = never). A killed "
        "run resumes from the last complete one; the final adapter is the same as an uninterrupted run's.")
    keep_checkpoints: int = Field(2, ge=1, description="Complete checkpoints kept while the run is going.")
    base_precision: Literal["quantized", "reference"] = Field(
        "quantized", description="quantized: QLoRA, the adapter learns on the exact base that ships. reference: train "
        "on the 16-bit base and ship the adapter on the quantized one (post-training quantization of a LoRA); "
        "the manifest pins the 16-bit base as the adapter's, and evaluation's damage pass measures the cost.")
    num_threads: int | None = Field(None, description="torch CPU threads; None = torch's default.")
    memory_budget_gb: float | None = Field(
        None, gt=0.0, description="Fail before loading the model when the memory plan (pipeline/memory.py) for the "
        "longest batch exceeds this many GiB; None = log the plan only.")

    # Every field is in exactly one of the three groups below (tests/unit/test_train_params.py
    # fails on a new field until it is placed). The adapter's identity -- `params` and
    # params_digest in training.json, hence the bundle digest; the checkpoint key; the keys
    # dvc.yaml declares for the train stage -- covers only the settings that can change the
    # adapter's bytes, so a runtime knob neither retrains under `dvc repro` nor renames the
    # model. "Same bytes": the tiny test model's adapter on CPU with the setting changed, which
    # tests/stages/test_train_runtime.py re-checks for every runtime setting at once.
    ADAPTER_FIELDS: ClassVar[tuple[str, ...]] = (
        "seed", "lora_r", "lora_alpha", "lora_dropout", "target_modules",  # the adapter's init and shape
        "learning_rate", "warmup_steps", "max_steps", "batch_size", "grad_accum_steps", "weight_decay",
        "max_grad_norm", "optimizer",  # the update rule and the data each step sees
        "early_stopping_patience",  # where training stops
        "base_precision",  # which base the adapter learns on
        # Float reductions may be split across threads: the tiny adapter has the same bytes at
        # 1 and 2 threads, but a 3M-element fp32 sum does not, and torch promises nothing across
        # thread counts. Wrongly calling it runtime would give two byte-different adapters one
        # identity; wrongly calling it deciding costs a rerun. (The report records the count a
        # null resolved to: torch's default depends on the machine.)
        "num_threads",
    )
    # Where validations fall is where early stopping may stop, so the cadence decides the
    # adapter only when early_stopping_patience is set. Otherwise validation runs in eval mode
    # under no_grad, draws no random numbers and touches neither the weights nor the batch
    # stream (same bytes at val_every_steps 1, 3 and 6). DVC cannot see the condition, so
    # dvc.yaml declares it anyway: a change reruns the stage, which writes the same adapter.
    EARLY_STOPPING_FIELDS: ClassVar[tuple[str, ...]] = ("val_every_steps",)
    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = (
        # When and how many checkpoints are written: saving copies weights, optimizer and RNG
        # states without advancing them (same bytes checkpointing every step and never; a
        # resumed run equals an uninterrupted one, tests/stages/test_train_resume.py).
        "checkpoint_every_steps", "keep_checkpoints",
        # Only decides whether the run may start (the plan is checked before the model loads).
        "memory_budget_gb",
        # Recomputes the same activations in backward, with the RNG state restored for the
        # recomputation (same bytes with and without, at lora_dropout 0 and 0.1).
        "gradient_checkpointing",
    )

    def adapter_params(self) -> dict:
        """The settings that decide the adapter's bytes: training.json's `params`, digested."""
        keep = set(self.ADAPTER_FIELDS)
        if self.early_stopping_patience is not None:
            keep |= set(self.EARLY_STOPPING_FIELDS)
        return {k: v for k, v in self.model_dump(mode="json").items() if k in keep}

    def runtime_params(self) -> dict:
        """Every setting adapter_params leaves out (reports/train.json records them; the adapter does not)."""
        identity = self.adapter_params()
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in identity}

    @classmethod
    def dvc_keys(cls) -> list[str]:
        """The keys dvc.yaml declares for the train stage: all that can decide the adapter."""
        return [f"train.{k}" for k in (*cls.ADAPTER_FIELDS, *cls.EARLY_STOPPING_FIELDS)]


class BundleParams(_Strict):
    """Assembling the self-contained, verifiable bundle."""

    link_mode: Literal["hardlink", "copy"] = Field(
        "hardlink", description="hardlink shares bytes with artifacts/ where the filesystem allows; copy otherwise."
    )
    max_new_tokens: int = Field(160, gt=0, description="Default max_tokens served when a request gives none.")
    temperature: float = Field(0.0, ge=0.0, description="Default sampling temperature (0 = greedy).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Default nucleus sampling mass.")
