"""Bad input to TrainConfig, train_cli, train and models.load: one error naming the field or file, raised
before any expensive work (no model load, no output folder made)."""

import dataclasses
import json
import subprocess
import sys
import textwrap

import pytest
from test_train import Crash, config, episode, tiny_dir, write_jsonl  # noqa: F401 (tiny_dir is a fixture)

from refinelib import runs
from refinelib.tune import models
from refinelib.tune.train import train
from refinelib.tune.train_cli import FIELDS, load_config, main, parser
from refinelib.tune.train_config import TrainConfig

GOOD = dict(train_file="train.jsonl")

# (field, bad value, what the one error says); every message starts with "TrainConfig.<field>"
BAD_FIELDS = [
    ("method", "qlora", r"one of \['lora', 'full'\]"),
    ("mask_policy", "mask_everything", "one of"),
    ("learning_rate", "2e-5x", "must be a number"),
    ("learning_rate", 0, "must be > 0"),
    ("learning_rate", None, "must not be None"),
    ("epochs", -1, "must be > 0"),
    ("epochs", float("nan"), "must be > 0"),
    ("batch_size", 0, "must be >= 1"),
    ("batch_size", 2.5, "whole number"),
    ("batch_size", "four", "must be a number"),
    ("batch_size", True, "whole number"),
    ("grad_accumulation", 0, ">= 1"),
    ("micro_batch_size", "some", "must be a number"),
    ("micro_batch_size", 0, ">= 1"),
    ("eval_fraction", 1.0, ">= 0 and < 1"),
    ("warmup_ratio", -0.1, ">= 0 and < 1"),
    ("lora_dropout", 1.5, "< 1"),
    ("lora_r", 0, ">= 1"),
    ("lora_alpha", 0, "> 0"),
    ("lora_target_modules", [1, 2], "a string or list"),
    ("lora_top_layers", -2, ">= 0"),
    ("max_length", 1, ">= 2"),
    ("max_steps", -5, ">= -1"),
    ("lr_scheduler", "cosine-ish", "one of"),
    ("weight_decay", -1, ">= 0"),
    ("seed", -1, ">= 0"),
    ("bf16", "yes", r"one of \[True, False, 'auto'\]"),
    ("gradient_checkpointing", 1, "one of|true or false"),
    ("padding_free", "no", "true or false"),
    ("group_by_length", 0, "true or false"),
    ("supervised_logits_only", None, "must not be None"),
    ("merge", "true", "true or false"),
    ("num_threads", 0, ">= 1"),
    ("num_threads", "many", "must be a number"),
    ("save_steps", 0, ">= 1"),
    ("save_total_limit", 0, ">= 1"),
    ("eval_steps", 0, ">= 1"),
    ("logging_steps", 0, ">= 1"),
    ("output_dir", "", "must not be empty"),
    ("base_model", 3, "a string"),
    ("train_records", ["not a record"], "list"),
]


@pytest.mark.parametrize("name, value, message", BAD_FIELDS, ids=[f"{n}={v!r}" for n, v, _ in BAD_FIELDS])
def test_each_bad_field_value_is_one_error_naming_the_field(name, value, message):
    values = {**GOOD, name: value} if name != "train_records" else {name: value}
    with pytest.raises(ValueError, match=rf"^TrainConfig\.{name}[ :].*({message})"):
        TrainConfig(**values)


def test_every_field_is_checked_by_the_table_or_by_type():
    """The table covers every field a user sets (the paths and records are also checked by train)."""
    covered = {name for name, _, _ in BAD_FIELDS} | {"train_file", "validation_file", "validation_records"}
    assert covered == {f.name for f in dataclasses.fields(TrainConfig)}


def test_numbers_in_strings_are_converted_and_cross_field_errors_are_named():
    cfg = TrainConfig(train_file="t.jsonl", learning_rate="2e-5", batch_size="4", epochs="1", num_threads="2",
                      micro_batch_size="2", lora_target_modules=("q_proj", "v_proj"))
    assert (cfg.learning_rate, cfg.batch_size, cfg.epochs, cfg.num_threads) == (2e-5, 4, 1.0, 2)
    assert cfg.micro_batch_size == 2 and cfg.lora_target_modules == ["q_proj", "v_proj"]
    with pytest.raises(ValueError, match="TrainConfig.micro_batch_size: 3 does not divide batch_size 4"):
        TrainConfig(train_file="t.jsonl", micro_batch_size=3)
    with pytest.raises(ValueError, match="exactly one of train_file and train_records"):
        TrainConfig()


def test_yaml_number_without_a_dot_is_a_number_not_a_string(tmp_path):
    """YAML 1.1 reads `2e-5` as the string '2e-5'; it used to reach TrainingArguments as a string."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text("train_file: t.jsonl\nlearning_rate: 2e-5\nwarmup_ratio: 3e-2\n")
    config_ = load_config(["--config", str(cfg)])
    assert config_.learning_rate == 2e-5 and config_.warmup_ratio == 0.03


@pytest.mark.parametrize("text, argv, message", [
    ("learning_rate: fast\n", [], "run.yaml: learning_rate: TrainConfig.learning_rate must be a number"),
    ("batch_size: 0\n", [], "run.yaml: batch_size: TrainConfig.batch_size must be >= 1"),
    ("", ["--lora_dropout", "1.5"], r"^--lora_dropout: TrainConfig.lora_dropout must be"),
    ("", ["--bf16", "maybe"], r"^--bf16: TrainConfig.bf16 must be one of"),
    ("", ["--micro_batch_size", "3"], "run.yaml: TrainConfig.micro_batch_size: 3 does not divide"),
])
def test_a_bad_yaml_value_or_flag_is_one_message_naming_file_or_flag_and_field(tmp_path, text, argv, message):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("train_file: t.jsonl\n" + text)
    with pytest.raises(SystemExit, match=message):
        load_config(["--config", str(cfg), *argv])


def test_help_shows_every_fields_help_text(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for f in dataclasses.fields(TrainConfig):
        if f.name in FIELDS:
            assert f"--{f.name} VALUE" in out
            assert " ".join(f.metadata["help"].split())[:40] in out, f.name


@pytest.mark.parametrize("field, value, error, message", [
    ("train_file", "missing.jsonl", FileNotFoundError, "TrainConfig.train_file: .*missing.jsonl does not"),
    ("validation_file", "missing.jsonl", FileNotFoundError, "TrainConfig.validation_file: .*missing.jsonl"),
    ("base_model", "/no/such/dir", FileNotFoundError, "TrainConfig.base_model: model '/no/such/dir': no"),
    ("base_model", "../no/such/dir", FileNotFoundError, "TrainConfig.base_model: model '../no/such/dir'"),
])
def test_train_names_a_missing_file_or_model_before_any_work(tmp_path, field, value, error, message):
    out = tmp_path / "run"
    values = dict(train_records=[episode(0)], output_dir=str(out), **{field: value})
    if field == "train_file":
        values.pop("train_records")
    with pytest.raises(error, match=message):
        train(TrainConfig(**values))
    assert not out.exists()  # nothing made: the check ran before the folder, the tokenizer and the model


def test_train_refuses_an_output_dir_that_is_a_file(tmp_path):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(NotADirectoryError, match="TrainConfig.output_dir: .*taken is a file"):
        train(TrainConfig(train_records=[episode(0)], output_dir=str(tmp_path / "taken")))


def test_train_cli_reports_a_missing_file_as_one_line(tmp_path):
    with pytest.raises(SystemExit, match="^error: TrainConfig.train_file: .*nope.jsonl does not exist"):
        main(["--train_file", str(tmp_path / "nope.jsonl"), "--output_dir", str(tmp_path / "run")])


@pytest.mark.parametrize("name", ["/no/such/dir", "./no/such/dir", "a/b/c", ""])
def test_models_load_names_a_missing_path(name):
    with pytest.raises(FileNotFoundError, match=f"model '{name}'"):
        models.load(name)
    with pytest.raises(FileNotFoundError, match=f"model '{name}'"):
        models.load_tokenizer(name)


def test_models_load_names_a_hub_id_missing_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="model 'nobody/no-such-model': not a local directory"):
        models.load("nobody/no-such-model")


# ----- run folders: an unfinished run never looks finished; resume checks identity; one writer ----------

def test_a_new_run_in_a_used_folder_sets_the_old_manifest_aside_before_training(tiny_dir, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    train(config(tiny_dir, out, max_steps=2, save_steps=2))
    assert (out / "manifest.json").is_file()
    for checkpoint in out.glob("checkpoint-*"):  # the user starts over in the same folder ...
        for f in sorted(checkpoint.rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
        checkpoint.rmdir()
    with pytest.warns(runs.StaleRunWarning, match="manifest is kept as manifest.stale-1.json"):
        with pytest.raises(KeyboardInterrupt):  # ... and the new run is interrupted
            train(config(tiny_dir, out, max_steps=4, save_steps=2, learning_rate=1e-3), callbacks=[Crash(2)])
    assert not (out / "manifest.json").exists()  # evaluation cannot take it for finished
    assert json.loads((out / "manifest.stale-1.json").read_text())["config"]["max_steps"] == 2


def test_resume_refuses_checkpoints_without_a_recorded_identity(tiny_dir, tmp_path):  # noqa: F811
    with pytest.raises(KeyboardInterrupt):
        train(config(tiny_dir, tmp_path, save_steps=2), callbacks=[Crash(step=2)])
    (tmp_path / "run.json").unlink()  # checkpoints from elsewhere (another tool, an older refinelib)
    with pytest.raises(runs.StaleRunError, match="no identity recorded"):
        train(config(tiny_dir, tmp_path, save_steps=2))


def test_resume_names_every_changed_field_and_the_identity_has_code_and_data(tiny_dir, tmp_path):  # noqa: F811
    with pytest.raises(KeyboardInterrupt):
        train(config(tiny_dir, tmp_path, save_steps=2), callbacks=[Crash(step=2)])
    identity = json.loads((tmp_path / "run.json").read_text())
    assert identity["code"] and identity["dataset_fingerprint"] and identity["packages"]["torch"]
    with pytest.raises(runs.StaleRunError, match="lora_r: 8 -> 4.*seed: 0 -> 1"):
        train(config(tiny_dir, tmp_path, save_steps=2, lora_r=4, seed=1))
    with pytest.raises(runs.StaleRunError, match="dataset_fingerprint"):
        train(config(tiny_dir, tmp_path, save_steps=2, train_records=[episode(i) for i in range(20)]))
    # how the loss is computed is not what is trained: the same run resumes with the other settings
    result = train(config(tiny_dir, tmp_path, save_steps=2, supervised_logits_only=False, micro_batch_size=4,
                          num_threads=None))
    assert result.completed and result.resumed_from.endswith("checkpoint-2")


def test_a_second_writer_gets_one_error_naming_the_holders_pid(tiny_dir, tmp_path):  # noqa: F811
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from refinelib import runs
        with runs.RunLock({str(tmp_path)!r}):
            print("held", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(runs.RunLockedError, match=f"pid {holder.pid}"):
            train(config(tiny_dir, tmp_path, max_steps=1))
        assert not list(tmp_path.glob("checkpoint-*")) and not (tmp_path / "run.json").exists()
    finally:
        holder.kill()
        holder.wait()
    # the kernel dropped the lock with the holder: the folder is usable again
    assert train(config(tiny_dir, tmp_path, max_steps=1)).completed
