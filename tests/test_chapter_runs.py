"""The chapters' runs, moved into the library: artifact paths named once, the one smoke fixture, chapter
03's datasets and models, chapter 07's data and models, the diversity chapter's inputs and Best-of-N, the
verifier's corrupted copies, and what the results chapters gather."""

from __future__ import annotations

import json
import os
import time

import pandas as pd
import pytest

from refinelib import paths
from refinelib.eval import inputs, sampling
from refinelib.report import display, gather
from refinelib.synth import corrupt, smoke
from refinelib.tune import ablation
from refinelib.tune import experiment as tuning


@pytest.fixture
def artifacts(tmp_path, monkeypatch):
    monkeypatch.setenv("REFINELIB_ARTIFACTS", str(tmp_path / "art"))
    return tmp_path / "art"


def test_artifact_paths_are_named_once_and_created_by_nobody(artifacts):
    assert paths.dataset_dir("r", "expert") == artifacts / "synthesis" / "r" / "datasets" / "expert"
    assert paths.samples_dir("r") == artifacts / "synthesis" / "r" / "samples"
    assert paths.model_dir("t", "refine") == artifacts / "tuning" / "t" / "refine"
    assert paths.episode_log("e", "base") == artifacts / "evaluation" / "e" / "episodes" / "base.jsonl"
    robustness = paths.table_path("robustness", "x", suite="pddl")
    assert robustness == artifacts / "robustness" / "x" / "robustness_pddl.csv"
    assert not artifacts.exists()
    with pytest.raises(ValueError, match="unknown table 'tabel'"):
        paths.table_path("tabel", "x")


def test_grounded_records_are_seeded_chat_records_with_errors():
    records = smoke.grounded_records(3, seed=5)
    assert [r["id"] for r in records] == ["grounded-0", "grounded-1", "grounded-2"]
    assert records == smoke.grounded_records(3, seed=5) and records != smoke.grounded_records(3)
    assert all(any(t["from"] == "gpt" and not t["loss"] for t in r["conversations"]) for r in records)
    assert smoke.grounded_records(2, seed=1)[0] == smoke.grounded_records(2, seed=0)[1] | {"id": "grounded-0"}


def test_each_corruption_fails_the_verifier_except_the_original():
    from refinelib.synth import teacher, themes

    script = themes.generate_script(3)
    table = corrupt.verdict_table(script, corrupt.corruptions(teacher.grounded_trajectory(script, 3)))
    assert table["sample"].iloc[0] == "as generated" and table["ok"].tolist() == [True] + [False] * 5
    assert table["reason"].iloc[1:].nunique() >= 4  # the copies fail different rules


def test_chapter_03_datasets_round_trip_and_a_missing_one_names_chapter_02(tmp_path, artifacts):
    records = smoke.grounded_records(3)
    dirs = tuning.write_datasets(tmp_path / "smoke", refinement=records, expert=records[:2])
    data = tuning.load_datasets(dirs, max_train=1)
    assert [len(data["refinement"][s]) for s in ("train", "validation")] == [1, 1]
    assert data["refinement"]["validation"] == records[-1:]
    assert tuning.dataset_table(data)["records"].tolist() == [1, 1, 1, 1]
    assert tuning.mask_example(records)["id"] == "grounded-0"
    with pytest.raises(FileNotFoundError, match="data_run_id='gone'.*Run notebook 02"):
        tuning.load_datasets(tuning.dataset_dirs("gone"), data_run_id="gone")
    assert tuning.chapter_models(["refine", "strip_errors"]) == {
        "expert_only": ("expert", "refine"), "refine": ("refinement", "refine"),
        "strip_errors": ("refinement", "strip_errors")}


def test_chapter_07_sizes_and_data(artifacts):
    assert ablation.resolve_sizes([2, "all"], 9) == [2, 9]
    with pytest.raises(ValueError, match=r"sizes \[12\]: the training split holds 9"):
        ablation.resolve_sizes([2, 12], 9)
    with pytest.raises(FileNotFoundError, match="run notebook 02_refinement_synthesis"):
        ablation.load_refinement("gone", 3)
    records = smoke.grounded_records(4)
    table = ablation.subset_table(ablation.nested_subsets(records[:3], [1, 3]), records[3:])
    assert table["set"].tolist() == ["train subset 1", "train subset 3", "held-out"]


def fake_training(base_models):
    """train_variant that writes a finished model's manifest (the base model from ``base_models``)."""
    def train_variant(name, records, output_dir, **settings):
        output_dir.mkdir(parents=True, exist_ok=True)
        base = base_models.get(output_dir.name, settings["base_model"])
        (output_dir / "manifest.json").write_text(json.dumps({"config": {"base_model": base}}))
        return output_dir, True
    return train_variant


def test_chapter_07_models_trained_here_or_taken_from_chapter_03(tmp_path, artifacts, monkeypatch):
    monkeypatch.setattr(ablation, "train_variant", fake_training({}))
    subsets = {2: [{}] * 2, 6: [{}] * 6}
    models = ablation.ablation_models(["refine", "erroneous_loss"], subsets, tmp_path / "m", None,
                                      max_steps=6, batch_size=1, learning_rate=1e-3, base_model="b")
    assert list(models.folders) == ["refine", "erroneous_loss", "refine@2"] and not models.from_tuning
    assert models.scaling == {2: "refine@2", 6: "refine"}
    assert models.describe().startswith("every model trained here: 6 steps of batch 1")
    assert models.table()["origin"].tolist() == ["trained here"] * 3
    for name in ("refine", "erroneous_loss"):  # chapter 03 trained every variant: its models are used
        paths.model_dir("t", name).mkdir(parents=True)
        (paths.model_dir("t", name) / "manifest.json").write_text("{}")
    models = ablation.ablation_models(["refine", "erroneous_loss"], subsets, tmp_path / "m", "t",
                                      base_model="b")
    assert models.from_tuning and models.scaling == {2: "refine@2", 6: "refine@6"}
    assert models.origin["refine"] == "notebook 03 (t)" and models.origin["refine@6"] == "trained here"
    monkeypatch.setattr(ablation, "train_variant", fake_training({"refine@2": "other"}))
    with pytest.raises(ValueError, match="would mix base models"):
        ablation.ablation_models(["refine"], subsets, tmp_path / "n", None, base_model="b")


def test_the_diversity_inputs_name_every_missing_one(artifacts):
    missing = inputs.missing_inputs(["base"], "e", "d", {"refine": str(artifacts / "nowhere"), "base": None})
    assert [m.rsplit("(", 1)[1] for m in missing] == [
        "notebook 04_generalization)", "notebook 03_refinement_tuning)", "notebook 02_refinement_synthesis)",
        "notebook 02_refinement_synthesis)"]
    with pytest.raises(FileNotFoundError, match="missing inputs; run the named notebooks first"):
        inputs.diversity_inputs(["base"], "e", "d", {})


def test_best_of_n_plays_greedy_and_sampled_episodes_into_their_logs(tmp_path):
    greedy, sampled = sampling.best_of_n({"random": "random"}, ["pddl"], tmp_path, n_samples=2, max_steps=2,
                                         progress_bar=False)
    assert len(greedy) == 1 and [e.sample for e in sampled] == [0, 1]
    assert sorted(p.name for p in tmp_path.glob("*.jsonl")) == ["random-greedy.jsonl", "random-sampled.jsonl"]
    again = sampling.best_of_n({"random": "random"}, ["pddl"], tmp_path, n_samples=2, max_steps=2,
                               progress_bar=False)
    assert [e.turns for e in again[1]] == [e.turns for e in sampled]  # read back from the logs


def test_transcript_texts(tmp_path):
    from refinelib.envs import make_instance, play, suite

    instance = suite("pddl").instances[0]
    text = display.oracle_transcripts({"pddl": play(make_instance(instance), instance.seed)})
    assert text.startswith("=== pddl: ") and text.endswith("\n") and "Goal: " in text
    found = pd.DataFrame(columns=["mode", "policy"])
    assert display.failure_mode_transcripts([], found, first="a") == (  # as the chapter printed them
        "===== memorised format: 0 episode(s) =====\nNone found in these episodes.\n\n"
        "===== repeated failed action: 0 episode(s) =====\nNone found in these episodes.\n")
    assert display.old_format([], ["a"]) == "No household rule in `rules`."


def manifest(folder, notebook, smoke_run=True, **fields):
    folder.mkdir(parents=True, exist_ok=True)
    written = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    (folder / "manifest.json").write_text(json.dumps({"notebook": notebook, "smoke": smoke_run,
                                                      "written": written, **fields}))


def test_the_results_chapter_gathers_this_builds_tables_only(tmp_path, artifacts, monkeypatch):
    notes = []
    monkeypatch.setattr(gather, "_note", notes.append)
    executed = tmp_path / "executed"
    executed.mkdir()
    (executed / "04_generalization.run.json").write_text(json.dumps(
        {"notebook": "04_generalization.ipynb", "seconds": 60,
         "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
    outputs = gather.BuildOutputs(executed, smoke=True)
    assert outputs.table("main_table", "x", "chapter 04") is None and "not run" in notes[-1]
    manifest(paths.run_dir("generalization", "x"), "04_generalization")
    assert outputs.table("main_table", "x", "chapter 04") is None and "is missing" in notes[-1]
    pd.DataFrame({"policy": ["a"]}).to_csv(paths.table_path("main_table", "x"), index=False)
    assert outputs.table("main_table", "x", "chapter 04")["policy"].tolist() == ["a"]
    assert outputs.found == {"generalization/x": True}
    outputs.record({"evaluation/x": "not run", "ablations/x": None})
    assert outputs.found["evaluation/x"] is False and "`evaluation/x` (not run)" in notes[-1]


def test_the_reproducibility_tables(tmp_path):
    executed, notebooks = tmp_path / "executed", tmp_path / "notebooks"
    executed.mkdir(), notebooks.mkdir()
    (notebooks / "00_a.ipynb").touch()
    for name in ("00_a", "99_removed"):
        (executed / f"{name}.run.json").write_text(json.dumps({"notebook": f"{name}.ipynb", "seconds": 90}))
    records = gather.run_records(executed, notebooks)
    assert [r["notebook"] for r in records] == ["00_a.ipynb"]
    assert gather.time_table(records)["minutes"].tolist() == [1.5, 1.5]  # the chapter, then the total
    manifests = {"a/x": {"notebook": "00_a", "seed": 3, "config": {"method": "lora"},
                         "packages": {"p": "1"}}, "b/x": {"run_id": "x", "packages": {"p": "1"}}}
    settings = gather.settings_table(manifests)
    assert settings.loc[0, "seed"] == 3 and settings.loc[0, "method"] == "lora"
    versions = gather.versions_table({**manifests, "c/x": {"packages": {"p": "0", "q": "1"}}}, {"p": "2"})
    assert list(versions.columns) == ["a/x, b/x", "c/x", "this chapter"]
    assert versions.loc["q"].tolist() == ["—", "1", "—"] and versions.loc["p", "this chapter"] == "2"


def test_the_synthesis_datasets(artifacts):
    from refinelib.data import dataset

    records = smoke.grounded_records(4)
    meta = {r["id"]: {"theme": "t"} for r in records}
    infos = dataset.save_synthesis_datasets("r", records, meta, records[:2], {}, teacher="grounded", seed=0)
    assert list(infos) == ["refinement", "refinement_stripped", "expert"]
    assert all(info.path == paths.dataset_dir("r", name) for name, info in infos.items())
    stripped = dataset.load(paths.dataset_dir("r", "refinement_stripped")) + dataset.load(
        paths.dataset_dir("r", "refinement_stripped"), "validation")
    assert all(t["loss"] for r in stripped for t in r["conversations"] if t["from"] == "gpt")
    assert "grounded teacher" in infos["refinement"].description
    assert os.path.isdir(paths.dataset_dir("r", "expert") / "hf")


def test_say_prints_a_sentence_and_nothing_for_an_empty_one(capsys):
    display.say("")
    display.say("a finding")
    assert capsys.readouterr().out == "a finding\n"
