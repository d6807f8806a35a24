"""train stage: QLoRA fine-tuning of LoRA adapters on the frozen pre-quantized base.

Reads: params `train`; `artifacts/base_q/` (the quantized base, loaded as saved, never
re-quantized); `artifacts/base/` (the 16-bit base: its tokenizer, and its weights when
`base_precision: reference`); `data/curated/{train,val}.jsonl` and
`meta.json` (which carries the shipped context length).
Writes: `artifacts/adapter/` (PEFT adapter in safetensors + training.json with the base digest
it was trained on, the settings that decide the adapter and the system prompt the training
records share, null if they share none) and the report dict (loss per step, real tokens/s,
peak RSS, optimizer, the runtime settings).

The base is read-only: its hashes are checked before and after training.

Modules: setup.py (the base, the trainable model, the optimizer), data.py (the encoded splits),
loop.py (loss, schedule, validation, the steps), checkpoint.py (resumable checkpoints),
report.py (adapter, training.json, report), run.py (train() composing them), distributed.py
and launch.py (running under a launcher).
"""

from pipeline.train.loop import loss_on_labels, lr_at, validation_loss
from pipeline.train.run import train
from pipeline.train.setup import device, hardware, library_versions, load_trainable, make_optimizer, resolve_targets

__all__ = [
    "device", "hardware", "library_versions", "load_trainable", "loss_on_labels", "lr_at", "make_optimizer",
    "resolve_targets", "train", "validation_loss",
]
