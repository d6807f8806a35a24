"""Which train settings are the adapter's identity, and that DVC, training.json and the
checkpoint key all agree on it: a runtime knob never retrains and never renames the model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from pipeline.files import digest_json
from pipeline.params import TrainParams
from pipeline.train.checkpoint import run_key

REPO = Path(__file__).resolve().parents[2]
GROUPS = {"adapter": TrainParams.ADAPTER_FIELDS, "early_stopping": TrainParams.EARLY_STOPPING_FIELDS,
          "runtime": TrainParams.RUNTIME_FIELDS}
# A value other than the default for every field (a new field needs one here too).
OTHER = {"seed": 7, "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.1, "target_modules": ["q_proj"],
         "learning_rate": 1e-3, "warmup_steps": 3, "max_steps": 20, "batch_size": 2, "grad_accum_steps": 2,
         "weight_decay": 0.01, "max_grad_norm": 0.5, "optimizer": "adamw_torch", "early_stopping_patience": 3,
         "base_precision": "reference", "num_threads": 1, "val_every_steps": 5, "checkpoint_every_steps": 0,
         "keep_checkpoints": 5, "memory_budget_gb": 64.0, "gradient_checkpointing": True}


def test_every_field_is_classified_exactly_once():
    placed = Counter(f for fields in GROUPS.values() for f in fields)
    assert [f for f, n in placed.items() if n > 1] == [], "a field in two groups"
    unplaced = set(TrainParams.model_fields) - set(placed)
    assert not unplaced, f"classify {sorted(unplaced)} in TrainParams: adapter-deciding or runtime?"
    assert set(placed) == set(TrainParams.model_fields), "a group names a field TrainParams does not have"
    assert set(OTHER) == set(TrainParams.model_fields)


@pytest.mark.parametrize("name", sorted(TrainParams.model_fields))
def test_a_field_moves_the_identity_exactly_when_it_decides_the_adapter(name):
    base = TrainParams()
    changed = base.model_copy(update={name: OTHER[name]})
    assert getattr(changed, name) != getattr(base, name)
    moved = digest_json(changed.adapter_params()) != digest_json(base.adapter_params())
    assert moved == (name in TrainParams.ADAPTER_FIELDS), name
    key = lambda p: run_key(p, "base", "data", {"torch": "x"}, "cpu:x")  # noqa: E731
    assert (key(changed) != key(base)) == moved, "the checkpoint key follows the identity"
    # nothing is lost: every setting is in the identity or in the report's runtime_params
    assert {**changed.adapter_params(), **changed.runtime_params()} == changed.model_dump(mode="json")


def test_validation_cadence_is_identity_only_under_early_stopping():
    off, on = TrainParams(), TrainParams(early_stopping_patience=2)
    assert "val_every_steps" not in off.adapter_params() and "val_every_steps" in off.runtime_params()
    assert on.adapter_params()["val_every_steps"] == on.val_every_steps
    assert on.model_copy(update={"val_every_steps": 5}).adapter_params() != on.adapter_params()


def _train_stage() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train"]


def test_dvc_declares_the_deciding_keys_and_no_runtime_key():
    declared = _train_stage()["params"]
    assert declared == TrainParams.dvc_keys()
    assert not {f"train.{f}" for f in TrainParams.RUNTIME_FIELDS} & set(declared)
    # DVC refuses to run a stage whose declared key is missing from params.yaml
    section = yaml.safe_load((REPO / "params.yaml").read_text())["train"]
    assert [k for k in declared if k.removeprefix("train.") not in section] == []


def _dvc(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    out = subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def test_dvc_reruns_train_for_a_deciding_key_and_not_for_a_runtime_one(tmp_path):
    """Real DVC on the train stage's declared params (the command is a stand-in: what is
    checked is DVC's staleness, not training)."""
    stage = _train_stage()
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": {
        "cmd": "python -c \"open('out.txt', 'w').write('trained')\"", "params": stage["params"],
        "outs": ["out.txt"]}}}))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    _dvc(tmp_path, "init", "--no-scm", "-q")
    _dvc(tmp_path, "repro", "-q")

    def stale_after(**train) -> bool:
        edited = {**params, "train": {**params["train"], **train}}
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(edited))
        return json.loads(_dvc(tmp_path, "status", "--json").stdout) != {}

    runtime = {k: OTHER[k] for k in TrainParams.RUNTIME_FIELDS}
    assert not stale_after(**runtime), "a runtime setting made DVC consider train stale"
    assert stale_after(lora_r=OTHER["lora_r"])
    assert stale_after(num_threads=OTHER["num_threads"])
