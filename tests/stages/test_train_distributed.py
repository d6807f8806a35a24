"""train under a launcher: two real processes (torchrun, gloo on CPU) doing data-parallel QLoRA.

The stage script runs in a wrapper that records, per rank, the micro-batches it trained on, the
files it wrote and its final LoRA weights, so the tests can check the distributed rules of
pipeline/train/distributed.py rather than only that the run finished. On CUDA the same runs go
through `accelerate launch` with the committed configs (the `gpu` tests at the end).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from pipeline.files import hash_files
from tests.conftest import REPO

ADAPTER_FILES = ["adapter_model.safetensors", "adapter_config.json"]
WRAPPER = textwrap.dedent("""
    import json, os, signal, sys
    sys.path.insert(0, {repo!r})
    import torch
    import pipeline.train.report as tr
    import pipeline.train.checkpoint as ck
    import pipeline.train.distributed as d
    import stages.train as stage

    out, kill_at, rank = {out!r}, {kill_at!r}, os.environ["RANK"]
    seen, batches, writes = {{}}, [], []
    init, forward = d._LossModule.__init__, d._LossModule.forward
    def _init(self, peft, loss_fn):
        init(self, peft, loss_fn)
        seen["model"] = peft
    def _forward(self, batch):
        if torch.is_grad_enabled():  # training micro-batches, not validation
            batches.append(int(batch["attention_mask"].sum()))
        return forward(self, batch)
    d._LossModule.__init__, d._LossModule.forward = _init, _forward
    def recording(fn, what):
        def wrapped(path, *a, **k):
            writes.append(what + ":" + os.path.basename(str(path)))
            return fn(path, *a, **k)
        return wrapped
    tr.atomic_dir = recording(tr.atomic_dir, "adapter")
    stage.atomic_write_json = recording(stage.atomic_write_json, "report")
    stage.atomic_write_text = recording(stage.atomic_write_text, "report")
    real_rename = os.rename
    def rename(src, dst):
        writes.append("checkpoint:" + os.path.basename(str(dst)))
        if kill_at and str(dst).endswith("step-%07d" % kill_at):
            os.kill(os.getpid(), signal.SIGKILL)
        real_rename(src, dst)
    ck.os.rename = rename
    rc = stage.main(sys.argv[1:])
    trained = {{n: p.detach().clone() for n, p in seen["model"].named_parameters() if p.requires_grad}}
    torch.save(trained, os.path.join(out, "rank%s.pt" % rank))
    with open(os.path.join(out, "rank%s.json" % rank), "w") as f:
        json.dump({{"batches": batches, "writes": writes}}, f)
    sys.exit(rc)
""")


def _launch(tiny, tmp: Path, params: Path, name: str, kill_at: int | None = None) -> subprocess.CompletedProcess:
    record = tmp / f"{name}-ranks"
    record.mkdir(exist_ok=True)
    wrapper = tmp / f"{name}-wrapper.py"
    wrapper.write_text(WRAPPER.format(repo=str(REPO), out=str(record), kill_at=kill_at))
    args = ["--params", str(params), "--base-q", str(tiny["base_q"]), "--base", str(tiny["base"]),
            "--data", str(tiny["data"]), "--out", str(tmp / name), "--report", str(tmp / f"{name}.json"),
            "--plot", str(tmp / f"{name}.csv"), "--metrics", str(tmp / f"{name}-metrics.json"),
            "--checkpoints", str(tmp / "ckpt")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two ranks on a small machine: no oversubscription
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(wrapper), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _ranks(tmp: Path, name: str) -> list[dict]:
    return [json.loads((tmp / f"{name}-ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]


def _expected_stream(tiny, n: int) -> list[int]:
    """Token counts of the first n micro-batches of the single-process seeded stream."""
    from transformers import AutoTokenizer

    from pipeline.chat import stop_token_ids
    from pipeline.files import read_json
    from pipeline.params import load_section
    from pipeline.train.data import batches, collate, encode_records, read_jsonl

    params = load_section("train", tiny["params"])
    tok = AutoTokenizer.from_pretrained(tiny["base"])
    stops = stop_token_ids(tok)
    examples = encode_records(tok, read_jsonl(tiny["data"] / "train.jsonl"), stops,
                              int(read_json(tiny["data"] / "meta.json")["max_seq_len_tokens"]))
    stream = batches(examples, params.batch_size, params.seed)
    pad = tok.pad_token_id if tok.pad_token_id is not None else stops[0]
    return [int(collate(next(stream), pad)["attention_mask"].sum()) for _ in range(n)]


@pytest.fixture(scope="module")
def ddp_run(tiny_pipeline, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    params = yaml.safe_load(tiny_pipeline["params"].read_text())
    params["train"].update(max_steps=6, val_every_steps=3, checkpoint_every_steps=2, keep_checkpoints=2)
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    done = _launch(tiny_pipeline, tmp, path, "whole")
    assert done.returncode == 0, done.stderr[-3000:]
    return {"tmp": tmp, "params": path, "proc": done}


@pytest.mark.slow
def test_two_ranks_split_the_stream_sync_weights_and_only_rank0_writes(tiny_pipeline, ddp_run):
    tmp = ddp_run["tmp"]
    report = json.loads((tmp / "whole.json").read_text())
    rank0, rank1 = _ranks(tmp, "whole")
    steps = len(report["steps"])
    assert steps == 6 and report["world_size"] == 2
    # Rank r trained on micro-batches r, r+2, r+4, ... of the single-process stream: disjoint shares.
    expected = _expected_stream(tiny_pipeline, 2 * steps)
    assert rank0["batches"] == expected[0::2] and rank1["batches"] == expected[1::2]
    # The report counts both ranks' tokens, step by step.
    assert [s["tokens"] for s in report["steps"]] == [a + b for a, b in zip(expected[0::2], expected[1::2])]
    assert report["real_tokens"] == sum(expected)
    # DDP averaged the gradients: both ranks end with the same LoRA weights, which training moved,
    # and they are what rank 0 wrote.
    w0 = torch.load(tmp / "whole-ranks/rank0.pt", weights_only=True)
    w1 = torch.load(tmp / "whole-ranks/rank1.pt", weights_only=True)
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    assert any(k.endswith("lora_B.default.weight") and w0[k].abs().sum() > 0 for k in w0)  # B starts at zero
    saved = load_file(tmp / "whole" / "adapter_model.safetensors")
    assert {k.replace(".default", ""): v for k, v in w0.items()}.keys() == saved.keys()
    assert all(torch.equal(w0[k].to(saved[k.replace(".default", "")].dtype), saved[k.replace(".default", "")])
               for k in w0)
    # Only rank 0 wrote: adapter, checkpoints, report; rank 1 nothing at all.
    assert rank1["writes"] == []
    kinds = {w.split(":")[0] for w in rank0["writes"]}
    assert kinds == {"adapter", "checkpoint", "report"}, rank0["writes"]
    assert json.loads((tmp / "whole" / "training.json").read_text())["world_size"] == 2
    assert not (tmp / "ckpt").exists()  # cleared once the adapter was written


@pytest.mark.slow
def test_two_ranks_resume_after_sigkill_to_the_same_adapter(tiny_pipeline, ddp_run):
    tmp = ddp_run["tmp"]
    killed = _launch(tiny_pipeline, tmp, ddp_run["params"], "resumed", kill_at=4)
    assert killed.returncode != 0 and not (tmp / "resumed").exists()
    again = _launch(tiny_pipeline, tmp, ddp_run["params"], "resumed")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "step 2 of 6" in again.stderr
    report = json.loads((tmp / "resumed.json").read_text())
    whole = json.loads((tmp / "whole.json").read_text())
    assert report["resumed_from_step"] == 2
    assert [s["loss"] for s in report["steps"]] == [s["loss"] for s in whole["steps"]]
    assert hash_files(tmp / "resumed", ADAPTER_FILES) == hash_files(tmp / "whole", ADAPTER_FILES)


# --- CUDA: the committed accelerate configs, really launched (skipped without 2 GPUs) -------------

def _accelerate_launch(tiny, tmp: Path, config: Path, params: Path) -> subprocess.CompletedProcess:
    args = ["--params", str(params), "--base-q", str(tiny["base_q"]), "--base", str(tiny["base"]),
            "--data", str(tiny["data"]), "--out", str(tmp / "out"), "--report", str(tmp / "report.json"),
            "--plot", str(tmp / "plot.csv"), "--metrics", str(tmp / "metrics.json"), "--checkpoints", str(tmp / "ck")]
    return subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
                           "--main_process_port", "0", str(REPO / "stages/train.py"), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=900)


def _needs_two_gpus():
    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs 2 CUDA devices, found {torch.cuda.device_count()}")


@pytest.mark.gpu
def test_ddp_config_trains_on_two_gpus(tiny_pipeline, tmp_path):
    _needs_two_gpus()
    params = yaml.safe_load(tiny_pipeline["params"].read_text())
    params["train"].update(max_steps=4, val_every_steps=2)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    done = _accelerate_launch(tiny_pipeline, tmp_path, REPO / "configs/accelerate/ddp.yaml", path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["world_size"] == 2 and report["optimizer"] == "paged_adamw_32bit"
    assert report["hardware"].startswith("cuda") and (tmp_path / "out/adapter_model.safetensors").is_file()


@pytest.mark.gpu
def test_fsdp_qlora_config_trains_on_two_gpus(tmp_path):
    """FSDP-QLoRA on a base quantized with quant_storage = compute dtype (its own tiny pipeline)."""
    _needs_two_gpus()
    from tests.conftest import build_tiny_pipeline, tiny_params

    tiny = build_tiny_pipeline(tmp_path / "tiny")
    path = tiny_params(tmp_path / "tiny", quantize={"quant_storage": "bfloat16"},
                       train={"max_steps": 4, "val_every_steps": 2})
    # the base of build_tiny_pipeline packs uint8: the loop must refuse it under FSDP
    refused = _accelerate_launch(tiny, tmp_path / "refused", REPO / "configs/accelerate/fsdp-qlora.yaml", path)
    assert refused.returncode != 0 and "quantize.quant_storage" in refused.stderr
    from pipeline.params import load_section
    from pipeline.quantize import quantize_base

    quantize_base(load_section("quantize", path), tiny["base"], tiny["base_q"])
    done = _accelerate_launch(tiny, tmp_path, REPO / "configs/accelerate/fsdp-qlora.yaml", path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["world_size"] == 2 and report["fsdp"] is True
    saved = load_file(tmp_path / "out/adapter_model.safetensors")
    assert saved and all("lora_" in k for k in saved)  # whole LoRA tensors gathered from the shards
