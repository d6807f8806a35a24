"""Benchmarks, run on demand (`make bench`); each writes its results under benchmarks/results/."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from pipeline.files import atomic_write_text


def machine() -> dict:
    """What a result was measured on: ratios are only compared within one machine."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "python": platform.python_version()}


def load_avg() -> list[float]:
    """The 1-, 5- and 15-minute load averages, rounded: recorded before and after a measurement
    so that a figure taken on a busy machine says so (README: a loaded machine's figure is labelled)."""
    return [round(x, 2) for x in os.getloadavg()]


def versions(*packages: str) -> dict[str, str]:
    """Installed versions of the libraries a result depends on (absent ones left out: the
    serving benchmark may run in .venv-vllm, whose packages and pins differ)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in packages:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def write_result(path: str | Path, result: dict) -> None:
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")


def train_step(model, optimizer, batch) -> float:
    """One optimizer step as the train stage takes it (loss on the labelled positions only,
    backward, step); returns its seconds. The benchmarks that time or measure bare steps share
    it, so a change to the stage's loss is mirrored in one place."""
    from pipeline.train import loss_on_labels

    t0 = time.perf_counter()
    loss, _ = loss_on_labels(model, batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - t0
