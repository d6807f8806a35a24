"""train: QLoRA on the pre-quantized base; the base is untouched; runs are reproducible."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.base import check_lock
from pipeline.files import hash_files, read_json, verify_files
from pipeline.params import load_section
from pipeline.train import lr_at, make_optimizer, train
from tests.conftest import tiny_params


def test_adapter_files_and_metadata(tiny_pipeline):
    adapter = tiny_pipeline["adapter"]
    names = {p.name for p in adapter.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "training.json"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pkl"))]
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "base_q"  # relative: bytes do not depend on the build path
    assert cfg["r"] == load_section("train", tiny_pipeline["params"]).lora_r
    # all-linear: every projection of every layer carries an adapter
    assert set(cfg["target_modules"]) >= {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    # written in a fixed order: peft's set order differs between processes and moved the digest
    assert cfg["target_modules"] == sorted(cfg["target_modules"])
    meta = read_json(adapter / "training.json")
    assert meta["optimizer"] == "adamw_torch"  # what actually ran on CPU
    assert meta["hardware"].startswith("cpu")


def test_base_is_unchanged_by_training(tiny_pipeline):
    check_lock(tiny_pipeline["base"])
    verify_files(tiny_pipeline["base_q"], read_json(tiny_pipeline["base_q"] / "quantize.json")["files"])


def test_report_measures_the_run(tiny_pipeline):
    report = tiny_pipeline["train_report"]
    params = load_section("train", tiny_pipeline["params"])
    assert len(report["steps"]) == params.max_steps
    assert report["real_tokens"] == sum(s["tokens"] for s in report["steps"]) > 0
    assert report["real_tokens_per_s"] > 0 and report["peak_rss_mb"] > 0
    assert all(v["val_loss"] > 0 for v in report["val"])


def test_loss_falls_and_training_is_deterministic(tiny_pipeline, tmp_path):
    params_path = tiny_params(tmp_path, train={"max_steps": 12, "val_every_steps": 12})
    params = load_section("train", params_path)
    runs = []
    for name in ("a", "b"):
        report = train(params, tiny_pipeline["base_q"], tiny_pipeline["base"], tiny_pipeline["data"], tmp_path / name)
        runs.append(report)
    assert runs[0]["loss_last10_mean"] < runs[0]["loss_first10_mean"]
    assert [s["loss"] for s in runs[0]["steps"]] == [s["loss"] for s in runs[1]["steps"]]
    files = ["adapter_model.safetensors", "adapter_config.json"]
    assert hash_files(tmp_path / "a", files) == hash_files(tmp_path / "b", files)


def test_optimizer_choice_is_honest_on_cpu():
    from pipeline.params import TrainParams

    opt, name = make_optimizer(TrainParams(), [torch.nn.Parameter(torch.zeros(2))])
    assert name == ("paged_adamw_32bit" if torch.cuda.is_available() else "adamw_torch")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="needs CUDA"):
            make_optimizer(TrainParams(optimizer="paged_adamw_8bit"), [torch.nn.Parameter(torch.zeros(2))])


def test_schedule_warms_up_then_decays():
    from pipeline.params import TrainParams

    p = TrainParams(learning_rate=1.0, warmup_steps=4, max_steps=20)
    lrs = [lr_at(s, p) for s in range(20)]
    assert lrs[:4] == sorted(lrs[:4]) and lrs[3] == 1.0
    assert lrs[4:] == sorted(lrs[4:], reverse=True) and lrs[-1] >= 0.1


@pytest.mark.gpu
def test_paged_adamw_runs_on_cuda(tiny_pipeline, tmp_path):
    """On CUDA, optimizer=auto must really be bitsandbytes' paged AdamW, and a run completes."""
    params = load_section("train", tiny_params(tmp_path, train={"max_steps": 2, "val_every_steps": 2}))
    report = train(params, tiny_pipeline["base_q"], tiny_pipeline["base"], tiny_pipeline["data"], tmp_path / "a")
    assert report["optimizer"] == "paged_adamw_32bit" and report["hardware"].startswith("cuda")
