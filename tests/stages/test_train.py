"""train: QLoRA on the pre-quantized base; the base is untouched; runs are reproducible."""

from __future__ import annotations

import json
import logging
import math
import shutil

import pytest
import torch

from pipeline.base import check_lock
from pipeline.files import hash_files, read_json, verify_files
from pipeline.params import load_section
from pipeline.train import lr_at, make_optimizer, train
from pipeline.train.data import read_jsonl, system_prompt_of
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


def test_training_json_and_manifest_pin_the_shared_system_prompt(tiny_pipeline):
    records = read_jsonl(tiny_pipeline["data"] / "train.jsonl")
    shared = {r["messages"][0]["content"] for r in records if r["messages"][0]["role"] == "system"}
    assert shared == {"You write structured hospital discharge summaries."}
    assert all(r["messages"][0]["role"] == "system" for r in records)
    meta = read_json(tiny_pipeline["adapter"] / "training.json")
    assert meta["system_prompt"] == next(iter(shared))
    assert meta["system_prompts_distinct"] == 1 and meta["records_without_system_prompt"] == 0
    manifest = read_json(tiny_pipeline["bundle"] / "manifest.json")
    assert manifest["tokenizer"]["system_prompt"] == meta["system_prompt"]


def _turns(system: str | None) -> dict:
    head = [{"role": "system", "content": system}] if system is not None else []
    return {"messages": [*head, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}


@pytest.mark.parametrize(("systems", "text", "distinct", "without"), [
    (["S", "S", "S"], "S", 1, 0),
    ([None, None], None, 0, 2),       # none: the template's default is what was learned
    (["S", None, "S"], None, 1, 1),   # mixed
    (["S", "T"], None, 2, 0),         # differing
], ids=["shared", "none", "mixed", "differing"])
def test_system_prompt_of_the_records(systems, text, distinct, without, caplog):
    with caplog.at_level(logging.WARNING, logger="pipeline.train.data"):
        got = system_prompt_of([_turns(s) for s in systems])
    assert (got.text, got.distinct, got.records_without) == (text, distinct, without)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert bool(warned) == (text is None and distinct > 0)
    if warned:
        assert "do not share one system prompt" in warned[0] and f"{distinct} distinct" in warned[0]


def test_mixed_system_prompts_pin_none_through_train_and_bundle(tiny_pipeline, tmp_path, caplog):
    """Records without the system turn mixed in: training warns, training.json and the manifest
    pin null; an adapter whose training.json predates the key bundles with null too."""
    from pipeline.bundle.build import build_bundle

    data = tmp_path / "data"
    shutil.copytree(tiny_pipeline["data"], data)
    records = read_jsonl(data / "train.jsonl")
    for r in records[::2]:
        r["messages"] = r["messages"][1:]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    params_path = tiny_params(tmp_path, train={"max_steps": 1, "val_every_steps": 1})
    with caplog.at_level(logging.WARNING, logger="pipeline.train.data"):
        train(load_section("train", params_path), tiny_pipeline["base_q"], tiny_pipeline["base"], data,
              tmp_path / "adapter")
    assert any("do not share one system prompt" in r.getMessage() for r in caplog.records)
    meta = read_json(tmp_path / "adapter/training.json")
    assert meta["system_prompt"] is None and meta["system_prompts_distinct"] == 1
    assert meta["records_without_system_prompt"] == len(records[::2])
    manifest = build_bundle(load_section("bundle", params_path), tiny_pipeline["base"], tiny_pipeline["base_q"],
                            tmp_path / "adapter", tmp_path / "bundle")
    assert manifest.tokenizer.system_prompt is None

    legacy = tmp_path / "legacy_adapter"
    shutil.copytree(tiny_pipeline["adapter"], legacy)
    old = {k: v for k, v in read_json(legacy / "training.json").items() if "system_prompt" not in k}
    (legacy / "training.json").write_text(json.dumps(old))
    manifest = build_bundle(load_section("bundle", params_path), tiny_pipeline["base"], tiny_pipeline["base_q"],
                            legacy, tmp_path / "legacy_bundle")
    assert manifest.tokenizer.system_prompt is None


def test_base_is_unchanged_by_training(tiny_pipeline):
    check_lock(tiny_pipeline["base"])
    verify_files(tiny_pipeline["base_q"], read_json(tiny_pipeline["base_q"] / "quantize.json")["files"])


def test_report_measures_the_run(tiny_pipeline):
    report = tiny_pipeline["train_report"]
    params = load_section("train", tiny_pipeline["params"])
    assert len(report["steps"]) == params.max_steps
    assert report["real_tokens"] == sum(s["tokens"] for s in report["steps"]) > 0
    # the rate is the tokens over the seconds it reports, not a separate timer
    # (train_time_s is rounded to 0.01 s, which on the tiny model's sub-second run is itself ~1%)
    t, rate = report["train_time_s"], report["real_tokens_per_s"]
    assert report["real_tokens"] / (t + 0.005) * 0.999 <= rate <= report["real_tokens"] / max(t - 0.005, 1e-3) * 1.001
    # the peak held at least the quantized weights it trained on (a unit slip would not)
    weights = sum(f.stat().st_size for f in tiny_pipeline["base_q"].glob("*.safetensors"))
    assert report["peak_rss_mb"] * 2**20 >= weights
    # validated every val_every_steps and at the last step
    want = sorted({*range(params.val_every_steps, params.max_steps + 1, params.val_every_steps), params.max_steps})
    assert [v["step"] for v in report["val"]] == want
    assert all(math.isfinite(v["val_loss"]) and v["val_loss"] > 0 for v in report["val"])


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


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU choice; the CUDA one is test_paged_adamw_runs_on_cuda")
def test_the_optimizer_named_is_the_one_that_steps():
    """The name recorded in reports/train.json must describe the update that happened: three
    steps with what make_optimizer returns move the weights exactly as three steps of the named
    optimizer built independently, with the params' learning rate and weight decay, and not as
    plain AdamW with other settings would."""
    from pipeline.params import TrainParams

    params = TrainParams(learning_rate=0.05, weight_decay=0.1)

    def three_steps(make):
        torch.manual_seed(0)
        w = torch.nn.Parameter(torch.randn(4, 3))
        opt = make([w])
        for _ in range(3):
            opt.zero_grad()
            (w.square().sum() + w.sum()).backward()
            opt.step()
        return w.detach()

    got_name = []

    def ours(ws):
        opt, name = make_optimizer(params, ws)
        got_name.append(name)
        return opt

    ours_w = three_steps(ours)
    assert got_name == ["adamw_torch"]
    assert torch.equal(ours_w, three_steps(lambda ws: torch.optim.AdamW(ws, lr=0.05, weight_decay=0.1)))
    assert not torch.equal(ours_w, three_steps(lambda ws: torch.optim.AdamW(ws, lr=0.05, weight_decay=0.0)))
    for paged in ("paged_adamw_32bit", "paged_adamw_8bit"):  # asked for by name, never silently replaced
        with pytest.raises(RuntimeError, match="needs CUDA"):
            make_optimizer(TrainParams(optimizer=paged), [torch.nn.Parameter(torch.zeros(2))])


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


def test_the_adapter_does_not_depend_on_where_the_stage_ran(tiny_pipeline):
    """No file of the adapter names the directory training read the base from: the same weights
    trained from another checkout (or with the stage run in place elsewhere) are the same bundle."""
    adapter = tiny_pipeline["adapter"]
    assert not (adapter / "README.md").exists()  # peft's stub card wrote the base's load path
    root = str(tiny_pipeline["root"]).encode()
    for f in sorted(adapter.iterdir()):
        assert root not in f.read_bytes() and b"artifacts/base_q" not in f.read_bytes(), f.name
