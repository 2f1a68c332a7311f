"""The multi-GPU launch configs load and validate with accelerate's own classes (no GPU, no DeepSpeed).

What is checked is what `accelerate launch` itself does before it starts any process: the YAML is read by
accelerate's ClusterConfig, the launcher turns it into its environment variables, and the DeepSpeed /
FSDP plugins are built from those variables exactly as every training process builds them. DeepSpeed is
not installed here, so neither its engine nor transformers' filling of the JSON's "auto" values (that
imports deepspeed) runs, and no GPU is involved.
"""

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import (
    DeepSpeedPlugin,
    DistributedType,
    FullyShardedDataParallelPlugin,
    prepare_deepspeed_cmd_env,
    prepare_multi_gpu_env,
)

import refinelib.tune.train
from refinelib.tune.train_config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "accelerate"
LAUNCH = ["-m", "refinelib.tune.train_cli", "--train_file", "data/train.jsonl"]


def launcher_env(config: str, monkeypatch) -> dict[str, str]:
    """What `accelerate launch --config_file <config>` exports to each process (set in os.environ too)."""
    monkeypatch.chdir(ROOT)  # the YAML names ds_zero3.json relative to the repository root
    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / config), *LAUNCH])
    args, defaults, mp_from_config = _validate_launch_command(args)
    if args.use_deepspeed:  # as accelerate.commands.launch.launch_command does before deepspeed_launcher
        fields = list(defaults.deepspeed_config)
        args.deepspeed_fields_from_accelerate_config = ",".join(fields + ["mixed_precision"] * mp_from_config)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    ours = {k: v for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_"))}
    for key, value in ours.items():
        monkeypatch.setenv(key, value)
    return ours


@pytest.mark.parametrize("name, kind", [("deepspeed_zero3.yaml", DistributedType.DEEPSPEED),
                                        ("fsdp.yaml", DistributedType.FSDP)])
def test_configs_load_as_eight_gpu_single_node_clusters(name, kind):
    config = load_config_from_file(str(CONFIGS / name))
    assert isinstance(config, ClusterConfig) and config.distributed_type == kind
    assert (config.num_processes, config.num_machines, config.use_cpu) == (8, 1, False)


def test_deepspeed_zero3_plugin_builds_from_the_launch_environment(monkeypatch):
    env = launcher_env("deepspeed_zero3.yaml", monkeypatch)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    assert env["ACCELERATE_DEEPSPEED_CONFIG_FILE"] == "configs/accelerate/ds_zero3.json"
    plugin = DeepSpeedPlugin()
    assert plugin.zero_stage == 3 and plugin.zero3_init_flag is True
    assert plugin.hf_ds_config.is_zero3() and not plugin.hf_ds_config.is_offload()
    zero = plugin.deepspeed_config["zero_optimization"]
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True  # the saved model is whole, in bf16


def test_deepspeed_leaves_batch_precision_and_clipping_to_the_trainer(monkeypatch):
    """The values TrainConfig sets are "auto" in the JSON, so there is no second copy to disagree with."""
    launcher_env("deepspeed_zero3.yaml", monkeypatch)
    ds = DeepSpeedPlugin().hf_ds_config
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                "gradient_clipping", "bf16.enabled", "fp16.enabled", "zero_optimization.reduce_bucket_size"):
        assert ds.get_value(key) == "auto", key
    assert "optimizer" not in ds.config and "scheduler" not in ds.config  # the Trainer's AdamW + cosine


def test_the_paper_setting_gives_a_global_batch_of_64():
    """8 GPUs x batch 2 x accumulation 4 (docs/scaling.md) = method.md §10's global batch of 64, bf16."""
    paper = TrainConfig(train_file="data/train.jsonl", base_model="meta-llama/Meta-Llama-3-8B-Instruct",
                        method="full", learning_rate=2e-5, epochs=3, batch_size=2, grad_accumulation=4,
                        max_length=8192, bf16=True, output_dir=str(ROOT / "artifacts" / "never-written"))
    args = refinelib.tune.train._training_arguments(paper, has_eval=True, eval_on_start=False)
    gpus = load_config_from_file(str(CONFIGS / "deepspeed_zero3.yaml")).num_processes
    assert gpus * args.per_device_train_batch_size * args.gradient_accumulation_steps == 64
    assert args.bf16 and args.learning_rate == 2e-5 and args.lr_scheduler_type == "cosine"
    assert args.warmup_steps == 0.03 and args.num_train_epochs == 3


def test_fsdp_plugin_builds_from_the_launch_environment(monkeypatch):
    env = launcher_env("fsdp.yaml", monkeypatch)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True  # full sharding
    assert plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"
    assert plugin.activation_checkpointing and plugin.cpu_ram_efficient_loading
    assert plugin.state_dict_type.name == "FULL_STATE_DICT"


def test_a_broken_config_is_refused_by_accelerate(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((CONFIGS / "fsdp.yaml").read_text() + "fsdp_typo: true\n")
    with pytest.raises(ValueError, match="unknown keys"):
        load_config_from_file(str(bad))
