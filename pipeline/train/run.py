"""train(): one training run, composed from setup.py (base, model, optimizer), data.py (the
encoded splits), loop.py (the steps) and report.py (the adapter and the report)."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import torch

from pipeline.artifacts import QUANTIZE_REPORT
from pipeline.base import check_lock
from pipeline.files import read_json, verify_files
from pipeline.params import TrainParams
from pipeline.platform import detect
from pipeline.train.checkpoint import Checkpoints, run_key
from pipeline.train.data import load_training_data
from pipeline.train.distributed import setup as setup_ranks
from pipeline.train.loop import fit, loss_on_labels, resume
from pipeline.train.report import train_report, training_meta, write_adapter
from pipeline.train.setup import (
    device, hardware, library_versions, load_trainable, make_optimizer, memory_plan, training_base,
)

log = logging.getLogger(__name__)


def train(params: TrainParams, base_q: str | Path, base_dir: str | Path, data_dir: str | Path,
          out_dir: str | Path, checkpoint_dir: str | Path | None = None) -> dict:
    """base_dir is the 16-bit base: the tokenizer comes from it, and the weights too under
    base_precision=reference. With checkpoint_dir, checkpoints are written there every
    params.checkpoint_every_steps and a run of the same configuration resumes from the last
    complete one (pipeline/train/checkpoint.py). Returns the report (reports/train.json)."""
    base_q, base_dir = Path(base_q), Path(base_dir)
    if params.num_threads:
        torch.set_num_threads(params.num_threads)
    # Seeded first: loading the model and initialising the LoRA weights draw from these.
    random.seed(params.seed)
    torch.manual_seed(params.seed)
    base_lock = check_lock(base_dir)
    quant = read_json(base_q / QUANTIZE_REPORT)
    verify_files(base_q, quant["files"])
    ranks = setup_ranks(quant["params"])  # Ranks() unless a launcher started several processes
    model_dir, model_dtype, base_digest = training_base(params, base_q, base_dir, quant)
    data = load_training_data(base_dir, data_dir)
    memory = memory_plan(params, model_dir, quant, data.train)  # over budget: fails before the model loads

    if ranks.fsdp:  # loaded in the storage dtype (= compute dtype, checked) so every flat tensor has one dtype
        model_dtype = getattr(torch, quant["params"]["compute_dtype"])
    model = load_trainable(model_dir, params, model_dtype, device_map=ranks.device_map(device()))
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer, optimizer_name = make_optimizer(params, trainable)
    n_trainable = sum(p.numel() for p in trainable)
    log.info("training %d LoRA parameters on %d examples (%d val), %d steps, optimizer %s, on the %s base",
             n_trainable, len(data.train), len(data.val), params.max_steps, optimizer_name, params.base_precision)

    versions, where = library_versions(), hardware()
    ckpts = None
    if checkpoint_dir is not None and params.checkpoint_every_steps and not ranks.fsdp:
        key = run_key(params, base_digest, data.digest, versions, where, ranks.key_extra())
        ckpts = Checkpoints(checkpoint_dir, key, params.keep_checkpoints)
    run = resume(ckpts, ranks, model, optimizer, params.max_steps)
    forward, optimizer = ranks.prepare(model, optimizer, loss_on_labels)
    train_s = fit(params, model, optimizer, forward, trainable, ranks, data, run, ckpts)

    meta = training_meta(params, base_digest, data, versions, where, optimizer_name, ranks.key_extra())
    state = ranks.adapter_state()  # FSDP: gathers the shards (every rank takes part), whole on rank 0
    if ranks.is_main:
        write_adapter(out_dir, model, state, meta)
        if ckpts is not None:  # the adapter is written: nothing left to resume
            ckpts.clear()
        # The base must come out of training exactly as it went in.
        check_lock(base_dir)
        verify_files(base_q, quant["files"])
    ranks.barrier()
    ranks.close()
    report = train_report(params, run, train_s, meta, memory, n_trainable, len(base_lock["files"]), ranks.key_extra())
    # not in training.json (digested): the adapter's bytes are compared across platforms instead
    report["platform"] = detect(model).as_record()
    return report
