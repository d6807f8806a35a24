"""Atomic, resumable training checkpoints.

A run that dies at step 900 of 1,000 (OOM killer, preempted node, SIGKILL) restarts from its
last complete checkpoint instead of from zero. Three rules make that safe:

- A checkpoint is written into a temporary directory, every file fsynced, then a marker
  (COMPLETE.json, the sha256 of every file) is written last and the directory renamed into
  place. A kill at any moment leaves either a complete checkpoint or a temporary directory
  that is never loaded (and is removed on the next start). A checkpoint whose files do not
  match its marker is skipped with a warning.
- Checkpoints live under a key: the digest of everything that decides the trajectory (the
  params that decide the adapter, TrainParams.adapter_params; the launcher's world size; base
  and data digests, library versions, hardware). A checkpoint of another configuration is never
  resumed; changing the learning rate starts over, changing a runtime setting (checkpoint
  cadence, memory budget, ...) does not.
- A checkpoint holds all the state the next step reads: the LoRA weights, the optimizer's
  moments, the RNG states, how many micro-batches the data stream has yielded, and the report
  so far. On CPU a resumed run ends with the same adapter bytes as an uninterrupted one
  (tests/stages/test_train_resume.py).

The directory is outside DVC's outputs (DVC deletes a stage's outputs before running it) and
is removed when the stage finishes.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path

import torch

from pipeline.files import digest_json, sha256_file
from pipeline.params import TrainParams

log = logging.getLogger(__name__)

MARKER = "COMPLETE.json"
WEIGHTS, TRAINER, STATE = "adapter_weights.pt", "trainer.pt", "state.json"
_PREFIX, _TMP = "step-", ".tmp-"


def run_key(params: TrainParams, base_digest: str, data_digest: str, versions: dict, hardware: str,
            ranks_extra: dict | None = None) -> str:
    """The key of a configuration's checkpoints. Its params are the adapter's identity
    (training.json's), not all of them: a runtime setting does not change what training
    computes, so raising the memory budget or checkpointing more often must not throw away a
    killed run. ranks_extra: the launcher's world size (another one is another trajectory)."""
    trajectory = {**params.adapter_params(), **(ranks_extra or {})}
    return digest_json({"params": trajectory, "base": base_digest, "data": data_digest, "versions": versions,
                        "hardware": hardware})


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Checkpoints:
    """The checkpoints of one training configuration under `root/<key>`."""

    def __init__(self, root: str | Path, key: str, keep: int = 2) -> None:
        self.root = Path(root)
        self.dir = self.root / key[:24]
        self.keep = max(1, keep)

    def _complete(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        return sorted((p for p in self.dir.iterdir() if p.name.startswith(_PREFIX) and (p / MARKER).is_file()),
                      key=lambda p: int(p.name[len(_PREFIX):]))

    def latest(self) -> Path | None:
        """The newest checkpoint whose files match its marker; removes leftovers of killed writes."""
        if self.dir.is_dir():
            for p in self.dir.iterdir():
                if p.name.startswith(_TMP) or (p.name.startswith(_PREFIX) and not (p / MARKER).is_file()):
                    log.warning("removing incomplete checkpoint %s (a write that never finished)", p)
                    shutil.rmtree(p, ignore_errors=True)
        for path in reversed(self._complete()):
            problem = self._check(path)
            if problem is None:
                return path
            log.warning("skipping checkpoint %s: %s", path, problem)
        return None

    @staticmethod
    def _check(path: Path) -> str | None:
        try:
            files = json.loads((path / MARKER).read_text())["files"]
        except (OSError, ValueError, KeyError) as exc:
            return f"unreadable marker ({exc})"
        for name, digest in files.items():
            if not (path / name).is_file():
                return f"{name} is missing"
            if sha256_file(path / name) != digest:
                return f"{name} does not match its recorded sha256"
        return None

    def save(self, step: int, model, optimizer, state: dict) -> Path:
        """Write checkpoint `step` atomically; keep the newest `keep` complete ones."""
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.dir / f"{_PREFIX}{step:07d}"
        tmp = self.dir / f"{_TMP}{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        trainable = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}
        torch.save(trainable, tmp / WEIGHTS)
        torch.save({"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                    "python_rng": random.getstate()}, tmp / TRAINER)
        (tmp / STATE).write_text(json.dumps({"step": step, **state}, sort_keys=True))
        files = {}
        for name in (WEIGHTS, TRAINER, STATE):
            _fsync(tmp / name)
            files[name] = sha256_file(tmp / name)
        (tmp / MARKER).write_text(json.dumps({"step": step, "files": files}, sort_keys=True))
        _fsync(tmp / MARKER)
        if final.exists():  # a checkpoint of the same step from an earlier attempt
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync(self.dir)
        for old in self._complete()[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    @staticmethod
    def load(path: Path, model, optimizer) -> dict:
        """Restore weights, optimizer, RNGs; return the saved state (step, counters, report so far)."""
        weights = torch.load(path / WEIGHTS, map_location="cpu", weights_only=True)
        params = dict(model.named_parameters())
        missing = sorted(set(n for n, p in params.items() if p.requires_grad) ^ set(weights))
        if missing:
            raise ValueError(f"checkpoint {path} does not match the model's trainable parameters: {missing[:3]}")
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value)
        trainer = torch.load(path / TRAINER, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(trainer["optimizer"])
        torch.set_rng_state(trainer["torch_rng"])
        if trainer["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(trainer["cuda_rng"])
        random.setstate(trainer["python_rng"])
        return json.loads((path / STATE).read_text())

    def clear(self) -> None:
        """Remove this configuration's checkpoints (the run finished; its adapter is the output)."""
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.root.is_dir() and not any(self.root.iterdir()):
            self.root.rmdir()
