"""The accelerate launch configurations: generated from params, read by accelerate as intended,
refusing what FSDP-QLoRA cannot train, and the committed files current."""

from __future__ import annotations

import pytest
import yaml

from pipeline.params import QuantizeParams, TrainParams, load_section
from pipeline.train.launch import accelerate_config, check_fsdp, main, render
from tests.conftest import REPO

FSDP_READY = QuantizeParams(quant_storage="bfloat16")  # compute_dtype bfloat16 by default
COMMITTED = REPO / "configs/accelerate"


def _launch_env(config_path) -> tuple[dict, object]:
    """What `accelerate launch --config_file config_path stages/train.py` puts in the ranks' environment."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(config_path), "stages/train.py"])
    args, _defaults, _mp = _validate_launch_command(args)
    return prepare_multi_gpu_env(args), args


def test_ddp_config_is_a_multi_gpu_launch(tmp_path):
    path = tmp_path / "ddp.yaml"
    path.write_text(render("ddp", TrainParams(), QuantizeParams(), num_processes=4))
    env, args = _launch_env(path)
    assert args.multi_gpu and not args.use_fsdp and args.num_processes == 4
    assert "ACCELERATE_USE_FSDP" not in env
    # the loop computes in the base's own compute dtype; accelerate must not autocast on top
    assert env["ACCELERATE_MIXED_PRECISION"] == "no"


def test_fsdp_qlora_config_reaches_the_ranks_as_fsdp_qlora_settings(tmp_path):
    path = tmp_path / "fsdp.yaml"
    path.write_text(render("fsdp-qlora", TrainParams(), FSDP_READY, num_processes=8, num_machines=2))
    env, args = _launch_env(path)
    assert args.use_fsdp and args.num_processes == 8 and args.num_machines == 2
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "1"
    assert env["FSDP_SHARDING_STRATEGY"] == "FULL_SHARD"
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    assert env["FSDP_USE_ORIG_PARAMS"] == "false"
    # rank 0 reads the base, the others receive it: both halves must be on
    assert env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true" and env["FSDP_SYNC_MODULE_STATES"] == "true"
    assert env["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT"
    assert env["FSDP_ACTIVATION_CHECKPOINTING"] == "false" and env["FSDP_OFFLOAD_PARAMS"] == "false"
    assert env["ACCELERATE_MIXED_PRECISION"] == "no"


@pytest.mark.gpu
def test_fsdp_plugin_built_from_that_environment(tmp_path, monkeypatch):
    """accelerate's own plugin, built in a rank from the launch environment, has the QLoRA settings
    (the plugin wants a CUDA device to exist, hence `gpu`)."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import ShardingStrategy

    path = tmp_path / "fsdp.yaml"
    path.write_text(render("fsdp-qlora", TrainParams(), FSDP_READY, num_processes=2))
    env, _ = _launch_env(path)
    for key, value in env.items():
        if key.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 1 and plugin.sharding_strategy == ShardingStrategy.FULL_SHARD
    assert plugin.use_orig_params is False and plugin.cpu_ram_efficient_loading is True
    assert plugin.sync_module_states is True and plugin.activation_checkpointing is False


def test_fsdp_refuses_packed_uint8_storage_naming_the_param():
    with pytest.raises(ValueError, match=r"quantize\.quant_storage=uint8"):
        accelerate_config("fsdp-qlora", TrainParams(), QuantizeParams(), num_processes=2)
    with pytest.raises(ValueError, match=r"quantize\.quant_storage=float32"):
        check_fsdp(QuantizeParams(quant_storage="float32"))
    # the loop checks quantize.json's params; one written before the field existed packed uint8
    with pytest.raises(ValueError, match="quant_storage"):
        check_fsdp({"method": "nf4", "compute_dtype": "bfloat16"})
    # DDP replicates whole modules: any storage dtype is fine
    assert accelerate_config("ddp", TrainParams(), QuantizeParams(), num_processes=2)["distributed_type"] == "MULTI_GPU"


def test_fsdp_refuses_other_known_bad_combinations():
    with pytest.raises(ValueError, match=r"quantize\.compute_dtype=float16"):
        check_fsdp(QuantizeParams(compute_dtype="float16", quant_storage="float16"))
    with pytest.raises(ValueError, match=r"train\.optimizer=paged_adamw_8bit"):
        accelerate_config("fsdp-qlora", TrainParams(optimizer="paged_adamw_8bit"), FSDP_READY, num_processes=2)
    with pytest.raises(ValueError, match="at least 2"):
        accelerate_config("ddp", TrainParams(), QuantizeParams(), num_processes=1)
    with pytest.raises(ValueError, match="multiple of --num-machines"):
        accelerate_config("ddp", TrainParams(), QuantizeParams(), num_processes=3, num_machines=2)


def test_fsdp_over_a_16bit_base_needs_no_storage_change():
    """quantize.method none: plain LoRA under FSDP; there are no packed weights to match."""
    config = accelerate_config("fsdp-qlora", TrainParams(), QuantizeParams(method="none"), num_processes=2)
    assert config["distributed_type"] == "FSDP"


def test_cli_refuses_with_a_clear_message(tmp_path, capsys):
    out = tmp_path / "fsdp.yaml"
    assert main(["--kind", "fsdp-qlora", "--params", str(REPO / "params.yaml"), "--out", str(out)]) == (
        1 if load_section("quantize", REPO / "params.yaml").quant_storage == "uint8" else 0)
    if not out.exists():
        assert "quantize.quant_storage" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["ddp", "fsdp-qlora"])
def test_committed_configs_are_what_the_generator_makes(kind):
    """configs/accelerate/ is generator output for params.yaml (2 GPUs); FSDP's for the GPU recipe,
    bf16 compute with quant_storage bfloat16, as docs/multi-gpu.md tells users to set (the
    default's float32 compute is for CPUs, where FSDP does not run)."""
    train, quantize = load_section("train", REPO / "params.yaml"), load_section("quantize", REPO / "params.yaml")
    if kind == "fsdp-qlora":
        quantize = quantize.model_copy(update={"compute_dtype": "bfloat16", "quant_storage": "bfloat16"})
    committed = (COMMITTED / f"{kind}.yaml").read_text()
    assert committed == render(kind, train, quantize, num_processes=2), (
        f"configs/accelerate/{kind}.yaml is stale: regenerate it with python -m pipeline.train.launch")
    assert yaml.safe_load(committed)["num_processes"] == 2
