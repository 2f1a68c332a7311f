"""The command line `accelerate launch -m refinelib.tune.train_cli` runs: YAML + flags -> TrainConfig ->
train."""

import json
from pathlib import Path

import pytest
from test_train import episode, tiny_dir, write_jsonl  # noqa: F401 (tiny_dir is a fixture)

from refinelib.tune.train_cli import load_config, main


def test_yaml_then_flags_with_yaml_typed_values(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("train_file: data/train.jsonl\nmethod: full\nlearning_rate: 2.0e-5\nbatch_size: 2\n")
    config = load_config(["--config", str(cfg), "--batch_size", "8", "--bf16", "true",
                          "--lora_target_modules", "[q_proj, v_proj]", "--output_dir", "1"])
    assert (config.train_file, config.method, config.learning_rate) == ("data/train.jsonl", "full", 2e-5)
    assert config.batch_size == 8 and config.bf16 is True
    assert config.lora_target_modules == ["q_proj", "v_proj"] and config.output_dir == "1"


@pytest.mark.parametrize("text, message", [
    ("train_file: a.jsonl\nlearning_rat: 1\n", r"run.yaml: unknown key\(s\) \['learning_rat'\]"),
    ("- a\n- b\n", "run.yaml: expected a mapping"),
    ("train_file: a.jsonl\nmethod: qlora\n", r"run.yaml: method: TrainConfig.method must be one of \['lora'"),
    ("train_file: [unclosed\n", "run.yaml: cannot read the config"),
])
def test_a_bad_config_file_is_named_with_the_bad_key(tmp_path, text, message):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(text)
    with pytest.raises(SystemExit, match=message):
        load_config(["--config", str(cfg)])


def test_unknown_flags_and_in_memory_fields_are_refused(capsys):
    for flag in ("--learning_rat", "--train_records"):
        with pytest.raises(SystemExit):
            load_config(["--train_file", "a.jsonl", flag, "1"])
        assert "unrecognized arguments" in capsys.readouterr().err


def test_main_trains_and_prints_a_summary(tiny_dir, tmp_path, capsys):  # noqa: F811
    train_file = write_jsonl(tmp_path / "train.jsonl", [episode(i) for i in range(8)])
    val_file = write_jsonl(tmp_path / "val.jsonl", [episode(i) for i in range(8, 10)])
    out = tmp_path / "run"
    code = main(["--base_model", tiny_dir, "--train_file", train_file, "--validation_file", val_file,
                 "--output_dir", str(out), "--max_steps", "2", "--batch_size", "4", "--save_steps", "2"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["global_step"] == 2 and summary["eval_loss"] > 0
    assert summary["counts"]["train"]["kept"] == 8
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["train_file"] == train_file and manifest["config"]["max_steps"] == 2


def test_the_paper_config_in_the_scaling_notes_loads(tmp_path):
    """docs/scaling.md's paper_8b.yaml is a valid TrainConfig with method.md §10's settings."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "scaling.md").read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "paper_8b.yaml").write_text(block)
    config = load_config(["--config", str(tmp_path / "paper_8b.yaml"), "--gradient_checkpointing", "false"])
    assert (config.method, config.learning_rate, config.epochs, config.max_length) == ("full", 2e-5, 3, 8192)
    assert config.batch_size * config.grad_accumulation * 8 == 64 and config.bf16 is True
    assert config.gradient_checkpointing is False and config.mask_policy == "refine"
