"""The platform record: what it names, what makes two platforms one class, and each kernel-deciding
feature simulated on any host (an env var torch or oneDNN reads, the CPU probe, the GPU queries,
bitsandbytes' per-layer packing flag) so that the AVX2 hosts CI runs on check the other classes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline import platform as plat
from pipeline.platform import KERNEL_4BIT, Platform, detect, differences, kernel_4bit

REPO = Path(__file__).resolve().parents[2]
DETECT = "import json; from pipeline.platform import detect; print(json.dumps(detect().as_record()))"


def _detect_in_subprocess(**env) -> dict:
    """The platform a fresh process detects with these variables set (None: unset)."""
    import os

    merged = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    out = subprocess.run([sys.executable, "-c", DETECT], capture_output=True, text=True, check=True, env=merged)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_record_round_trips_and_its_id_ignores_only_the_cpu_model_name():
    here = detect()
    again = Platform.from_record(json.loads(json.dumps(here.as_record())))
    assert again == here and again.platform_id == here.platform_id
    renamed = here.model_copy(update={"cpu_model": "another name of the same chip"})
    assert renamed.platform_id == here.platform_id and differences(here, renamed) == []
    assert here.platform_id in here.describe() and here.kernel_4bit in KERNEL_4BIT


def test_a_lower_aten_capability_is_another_platform():
    """ATEN_CPU_CAPABILITY picks torch's vectorised kernels (what an AVX2-only CPU gets)."""
    here = detect()
    lowered = Platform.from_record(_detect_in_subprocess(ATEN_CPU_CAPABILITY="default"))
    assert lowered.torch_cpu_capability == "DEFAULT" != here.torch_cpu_capability
    assert lowered.platform_id != here.platform_id
    assert any(d.startswith("torch_cpu_capability:") for d in differences(here, lowered))


def test_a_capped_onednn_isa_is_another_platform():
    capped = Platform.from_record(_detect_in_subprocess(ONEDNN_MAX_CPU_ISA="AVX2"))
    assert capped.onednn_max_isa == "AVX2"
    # against a process without the cap (this one may run capped: how the AVX2 class is simulated)
    uncapped = Platform.from_record(_detect_in_subprocess(ONEDNN_MAX_CPU_ISA=None))
    assert uncapped.onednn_max_isa is None and capped.platform_id != uncapped.platform_id


def test_a_capped_mkl_isa_is_another_platform():
    capped = Platform.from_record(_detect_in_subprocess(MKL_ENABLE_INSTRUCTIONS="AVX2"))
    assert capped.mkl_max_isa == "AVX2" and "MKL capped at AVX2" in capped.describe()
    uncapped = Platform.from_record(_detect_in_subprocess(MKL_ENABLE_INSTRUCTIONS=None))
    assert uncapped.mkl_max_isa is None and capped.platform_id != uncapped.platform_id


def test_fields_added_later_keep_an_older_records_id_until_they_are_set():
    """A record written before `mkl_max_isa` and `decode_matmul` existed names the same class
    (releases carry such records); a decode plan other than F.linear is another class."""
    here = detect().model_copy(update={"mkl_max_isa": None, "decode_matmul": None})
    record = here.as_record()
    assert "decode_matmul" not in record and "mkl_max_isa" not in record  # unset: as older records were
    # records written by the code before these fields, with the ids it gave them
    older = json.loads((REPO / "benchmarks/results/platform_diff.json").read_text())["b"]
    for rec in (older["platform"], older["train_platform"]):
        assert Platform.from_record(rec).platform_id == rec["platform_id"]
    planned = here.model_copy(update={"decode_matmul": "576x1536 float32: transposed"})
    assert planned.platform_id != here.platform_id
    assert differences(here, planned) == ["decode_matmul: None -> 576x1536 float32: transposed"]
    again = Platform.from_record(json.loads(json.dumps(planned.as_record())))
    assert again == planned and "decode blocks 576x1536 float32: transposed" in again.describe()


def test_the_thread_count_is_part_of_the_platform():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = detect()
        torch.set_num_threads(2)
        two = detect()
    finally:
        torch.set_num_threads(before)
    assert (one.threads, two.threads) == (1, 2) and differences(one, two) == ["threads: 1 -> 2"]


def test_another_cpu_vendor_and_isa_are_another_platform(monkeypatch):
    """The CPU probe simulated: an AMD EPYC with AVX2 only against this host."""
    here = detect()
    monkeypatch.setattr(plat, "cpu_info", lambda: ("AuthenticAMD", "AMD EPYC", ["avx2", "fma", "sse4_2"]))
    epyc = detect()
    assert epyc.cpu_isa == ["avx2", "fma"] and epyc.cpu_vendor == "AuthenticAMD"
    diff = differences(here, epyc)
    if here.cpu_vendor != "AuthenticAMD":
        assert any(d.startswith("cpu_vendor:") for d in diff)
    if here.cpu_isa != ["avx2", "fma"]:
        assert any(d.startswith("cpu_isa:") for d in diff)


def test_a_gpu_is_named_with_its_compute_capability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda _i=0: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda _i=0: "NVIDIA H100 80GB HBM3")
    gpu = detect()
    assert gpu.device == "cuda" and gpu.gpu.startswith("NVIDIA H100 80GB HBM3 (sm_90")
    monkeypatch.undo()
    assert gpu.platform_id != detect().platform_id


@pytest.mark.parametrize("avx512bf16", [True, False])
def test_the_4bit_kernel_follows_bitsandbytes_packing_flag(tiny_pipeline, avx512bf16):
    """bitsandbytes sets the flag per layer from its CPU probe; set here as either host would."""
    from pipeline.engines.hf import load_model
    from pipeline.platform import four_bit_layers

    model = load_model(tiny_pipeline["base_q"], None)
    layers = four_bit_layers(model)
    assert layers
    for _n, m in layers:
        m.support_avx512bf16_for_cpu = avx512bf16
    assert kernel_4bit(model) == ("cpu-packed-bf16" if avx512bf16 else "cpu-dequantize")
    assert detect(model).kernel_4bit == kernel_4bit(model)


def test_a_16bit_model_has_no_4bit_kernel(tiny_pipeline):
    from pipeline.engines.hf import load_model

    assert kernel_4bit(load_model(tiny_pipeline["base"], None)) == "none"
