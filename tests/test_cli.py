"""The one command line (``python -m refinelib``) and the one config vocabulary (refinelib.options)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from refinelib import options
from refinelib.__main__ import main, parser
from refinelib.data import chat
from refinelib.synth.llm_types import LLMConfig
from refinelib.synth.synthesis import SynthesisConfig
from refinelib.tune.train_config import TrainConfig


def test_every_config_field_has_help_and_the_command_line_shows_it(capsys):
    for cls in (SynthesisConfig, TrainConfig, LLMConfig):
        assert [f.name for f in dataclasses.fields(cls) if not f.metadata.get("help")] == [], cls
    with pytest.raises(SystemExit):
        main(["synth", "--help"])
    shown = capsys.readouterr().out
    for f in dataclasses.fields(SynthesisConfig):
        assert f"--{f.name}" in shown
    assert "accepted trajectories wanted" in shown


def test_synth_then_export_round_trips_the_records(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["synth", str(out), "--n", "3", "--seed", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)  # the progress bar goes to stderr
    assert summary["accepted"] == 3
    records = chat.load_jsonl(out / "dataset" / "train.jsonl")
    assert records and all(r["conversations"] for r in records)
    target = tmp_path / "train.axolotl.jsonl"
    assert main(["export", str(out / "dataset" / "train.jsonl"), str(target), "--format", "axolotl"]) == 0
    back = main(["export", str(target), str(tmp_path / "back.jsonl"), "--format", "released",
                 "--source_format", "axolotl"])
    assert back == 0
    assert [r["conversations"] for r in chat.load_jsonl(tmp_path / "back.jsonl")] == \
        [r["conversations"] for r in records]


def test_a_config_file_and_flags_combine_and_flags_win(tmp_path):
    config = tmp_path / "synth.yaml"
    config.write_text("n: 7\nseed: 3\nstrict: false\n")
    parsed = options.parse(SynthesisConfig, ["--config", str(config), "--seed", "4"])
    assert (parsed.n, parsed.seed, parsed.strict) == (7, 4, False)


@pytest.mark.parametrize("argv, message", [
    (["--n", "0"], "SynthesisConfig.n must be a positive integer"),
    (["--teacher", "gpt"], "SynthesisConfig.teacher: 'gpt' is not one of"),
    (["--n", "[1"], "--n: cannot read"),
])
def test_a_bad_flag_stops_with_one_message_naming_it(argv, message):
    with pytest.raises(SystemExit, match=message.replace("[", r"\[")):
        options.parse(SynthesisConfig, argv)


def test_a_bad_config_file_is_named_with_its_key(tmp_path):
    config = tmp_path / "synth.yaml"
    config.write_text("n: 5\nerrror_rate: 0.2\n")
    with pytest.raises(SystemExit, match=r"synth.yaml: unknown key\(s\) \['errror_rate'\]"):
        options.parse(SynthesisConfig, ["--config", str(config)])
    config.write_text("- n\n")
    with pytest.raises(SystemExit, match="synth.yaml: expected a mapping of SynthesisConfig fields, got"):
        options.parse(SynthesisConfig, ["--config", str(config)])


def test_train_reads_the_same_vocabulary_and_checks_each_field_where_it_came_from(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text("learning_rate: 2e-5\nepochs: 0\n")
    with pytest.raises(SystemExit, match=r"train.yaml: epochs: TrainConfig.epochs"):
        main(["train", "--config", str(config), "--train_file", "x.jsonl"])


def test_export_of_a_missing_file_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="error: .*nope.jsonl"):
        main(["export", str(tmp_path / "nope.jsonl"), str(tmp_path / "o.jsonl"), "--format", "openai"])
    assert not (tmp_path / "o.jsonl").exists()


def test_the_parser_has_one_subcommand_per_stage():
    actions = [a for a in parser()._actions if a.dest == "stage"]
    assert set(actions[0].choices) == {"synth", "train", "eval", "export"}


def test_eval_plays_models_into_their_logs_and_prints_the_main_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REFINELIB_ARTIFACTS", str(tmp_path))
    settings = tmp_path / "episodes.yaml"
    settings.write_text("scale: small\nmax_instances: 2\nmax_steps: 3\n")
    argv = ["eval", "--model", "oracle=oracle", "--model", "random=random", "--suites", "pddl",
            "--config", str(settings), "--eval_run_id", "t"]
    assert main(argv) == 0
    shown = capsys.readouterr().out
    assert "oracle" in shown and "random" in shown and "4 episodes" in shown
    logs = tmp_path / "evaluation" / "t" / "episodes"
    assert sorted(p.name for p in logs.glob("*.jsonl")) == ["oracle.jsonl", "random.jsonl"]
    assert len((logs / "oracle.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("argv, message", [
    (["eval", "--model", "refine", "--suites", "pddl"], "--model 'refine': give name=folder"),
    (["eval", "--model", "base", "--suites", "pddl", "--max_steps", "0"], "max_steps must be an integer"),
])
def test_eval_refuses_a_bad_model_or_setting_before_playing(argv, message, tmp_path, monkeypatch):
    monkeypatch.setenv("REFINELIB_ARTIFACTS", str(tmp_path))
    with pytest.raises(SystemExit, match=message):
        main(argv)
    assert not (tmp_path / "evaluation").exists()
