"""Runtime settings change how a run goes, never the adapter: the same bytes, the same
training.json, the same bundle digest; the report says which runtime settings were used."""

from __future__ import annotations

from pipeline.files import hash_files, read_json
from pipeline.params import TrainParams, load_section
from pipeline.train import train

ADAPTER_FILES = ["adapter_model.safetensors", "adapter_config.json", "training.json"]


def test_runtime_settings_leave_the_adapter_and_the_bundle_digest_alone(tiny_pipeline, tmp_path):
    from pipeline.bundle.build import build_bundle

    params = load_section("train", tiny_pipeline["params"])
    assert params.early_stopping_patience is None  # so the validation cadence is runtime too
    # every runtime setting at once, each away from the fixture's value
    runtime = params.model_copy(update={
        "checkpoint_every_steps": 1, "keep_checkpoints": 1, "memory_budget_gb": 64.0,
        "gradient_checkpointing": not params.gradient_checkpointing, "val_every_steps": params.val_every_steps + 1})
    assert set(runtime.runtime_params()) == {*TrainParams.RUNTIME_FIELDS, *TrainParams.EARLY_STOPPING_FIELDS}
    assert all(runtime.runtime_params()[k] != v for k, v in params.runtime_params().items())

    report = train(runtime, tiny_pipeline["base_q"], tiny_pipeline["base"], tiny_pipeline["data"],
                   tmp_path / "adapter", tmp_path / "ckpt")
    assert hash_files(tmp_path / "adapter", ADAPTER_FILES) == hash_files(tiny_pipeline["adapter"], ADAPTER_FILES)
    meta = read_json(tmp_path / "adapter/training.json")
    assert meta["params"] == params.adapter_params()
    assert not set(meta["params"]) & set(params.runtime_params())
    assert report["runtime_params"] == runtime.runtime_params() and report["params_digest"] == meta["params_digest"]
    assert report["memory_plan"]["budget_gib"] == 64.0  # the run did use them

    manifest = build_bundle(load_section("bundle", tiny_pipeline["params"]), tiny_pipeline["base"],
                            tiny_pipeline["base_q"], tmp_path / "adapter", tmp_path / "bundle")
    assert manifest.bundle_digest == read_json(tiny_pipeline["bundle"] / "manifest.json")["bundle_digest"]

