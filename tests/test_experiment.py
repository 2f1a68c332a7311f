"""The evaluation experiments: shared logs by model name, the main table, failure modes, paper tables."""

import json

import pandas as pd
import pytest

from refinelib.analysis import metrics, reference, tables, taxonomy
from refinelib.eval import evaluate, experiment
from refinelib.eval.episodes import AgentTurn, Episode, EpisodeLog
from refinelib.report import display


@pytest.fixture
def artifacts(tmp_path, monkeypatch):
    monkeypatch.setenv("REFINELIB_ARTIFACTS", str(tmp_path / "artifacts"))
    return tmp_path / "artifacts"


def _episode(family, turns, perturbation="none", policy="m", suite=None, success=False):
    return Episode(policy, suite or family, f"{family}/0", 0, family, "t", "held_out", "1", "goal", "obs",
                   perturbation=perturbation, turns=turns, success=success)


def _turn(action, valid=False, observation="Nothing happens."):
    return AgentTurn(f"Thought: x\nAction: {action}", "x", action, observation, valid, 0.0,
                     format_error=action is None)


def test_shared_log_is_reused_across_calls_and_models_get_their_own_file(artifacts):
    kw = dict(eval_run_id="r", max_instances=2, max_steps=30, progress_bar=False)
    oracle = experiment.evaluate_model("oracle", "oracle", ["pddl"], **kw)
    assert [e.policy for e in oracle] == ["oracle", "oracle"] and all(e.success for e in oracle)
    path = experiment.episodes_path("r", "oracle")
    assert path == artifacts / "evaluation" / "r" / "episodes" / "oracle.jsonl"
    lines = path.read_text().splitlines()
    # a second notebook asking for a superset plays only the new keys, and returns the old ones as logged
    more = experiment.evaluate_model("oracle", "oracle", ["pddl", "babyai"], **kw)
    assert len(more) == 4 and more[:2] == oracle
    assert path.read_text().splitlines()[:2] == lines and len(EpisodeLog(path).read()) == 4
    both = experiment.evaluate_models({"oracle": "oracle", "random": "random"}, ["pddl"], **kw)
    assert {e.policy for e in both} == {"oracle", "random"}
    assert experiment.episodes_path("r", "random").is_file()


def test_per_suite_perturbations_play_each_suite_with_its_own_rules(artifacts):
    rules = {"household_held_in": ["none", "R1"], "pddl": ["none", "R3"]}
    episodes = experiment.evaluate_model("random", "random", ["household_held_in", "pddl", "babyai"],
                                         eval_run_id="p", max_instances=1, max_steps=2, perturbations=rules,
                                         progress_bar=False)
    assert [(e.suite, e.perturbation) for e in episodes] == [
        ("household_held_in", "none"), ("household_held_in", "perturb-v1:R1"), ("pddl", "none"),
        ("pddl", "perturb-v1:R3"), ("babyai", "none")]


def test_other_settings_under_the_same_run_id_set_the_old_log_aside_and_play_again(artifacts):
    kw = dict(eval_run_id="r", max_instances=1, progress_bar=False)
    first = experiment.evaluate_model("random", "random", ["pddl"], max_steps=2, **kw)
    assert experiment.evaluate_model("random", "random", ["pddl"], max_steps=2, **kw) == first  # reused
    with pytest.warns(UserWarning, match=r"max_steps: 2 -> 6"):
        again = experiment.evaluate_model("random", "random", ["pddl"], max_steps=6, **kw)
    assert len(first[0].turns) <= 2 < len(again[0].turns)  # played again with the new step limit
    path = experiment.episodes_path("r", "random")
    stale = path.with_name("random.stale-1.jsonl")
    assert stale.is_file() and json.loads(stale.read_text().splitlines()[0])["instance"] == first[0].instance
    assert json.loads(path.with_suffix(".settings.json").read_text())["max_steps"] == 6


def test_a_changed_prompt_version_sets_the_shared_log_aside_and_plays_again(artifacts, monkeypatch):
    kw = dict(eval_run_id="r", max_instances=1, max_steps=3, progress_bar=False)
    first = experiment.evaluate_model("random", "random", ["pddl"], **kw)
    path = experiment.episodes_path("r", "random")
    monkeypatch.setattr(evaluate, "prompt_version", lambda family: f"{family}-2+base-1")
    loaded = []
    real_load = experiment.load_policy
    monkeypatch.setattr(experiment, "load_policy", lambda *a, **k: loaded.append(a) or real_load(*a, **k))
    with pytest.warns(UserWarning, match=r"prompt:pddl: 'pddl-1\+base-1' -> 'pddl-2\+base-1'"):
        again = experiment.evaluate_model("random", "random", ["pddl"], **kw)
    assert loaded and again[0].meta["prompt_version"] == "pddl-2+base-1"  # played again, not reused
    assert path.with_name("random.stale-1.jsonl").read_text() == first[0].to_json() + "\n"
    loaded.clear()
    assert experiment.evaluate_model("random", "random", ["pddl"], **kw) == again and not loaded


@pytest.mark.parametrize("field,value", [("max_steps", 0), ("batch_size", 0), ("max_instances", -1)])
def test_an_argument_out_of_range_is_refused_before_the_log_is_touched(artifacts, field, value):
    kw = dict(eval_run_id="r", max_instances=1, max_steps=3, progress_bar=False)
    experiment.evaluate_model("random", "random", ["pddl"], **kw)
    path = experiment.episodes_path("r", "random")
    before = path.read_text(), path.with_suffix(".settings.json").read_text()
    with pytest.raises(ValueError, match=f"^evaluate: {field} must be"):
        experiment.evaluate_model("random", "random", ["pddl"], **{**kw, field: value})
    assert (path.read_text(), path.with_suffix(".settings.json").read_text()) == before


def test_a_missing_model_folder_says_to_run_notebook_03(artifacts):
    models = experiment.default_models("nope")
    assert models["base"] is None and models["refine"].endswith("tuning/nope/refine")
    with pytest.raises(FileNotFoundError, match="expert_only: .*refine: .*run notebook 03_tuning first"):
        experiment.evaluate_models(models, ["pddl"], eval_run_id="r")


def test_a_trained_folder_is_loaded_with_its_adapter_and_named_by_the_model(tmp_path):
    from peft import LoraConfig, get_peft_model

    from tests.tiny_model import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    model = get_peft_model(tiny_model(tok), LoraConfig(r=2, target_modules=["q_proj"]))
    model.save_pretrained(tmp_path / "expert_only" / "adapter")
    tok.save_pretrained(tmp_path / "base")
    tiny_model(tok).save_pretrained(tmp_path / "base")
    policy = experiment.load_policy("expert_only", str(tmp_path / "expert_only"),
                                    base_model=str(tmp_path / "base"), max_new_tokens=4,
                                    max_prompt_tokens=300)
    assert policy.name == "expert_only" and policy.max_new_tokens == 4
    assert not hasattr(policy.model, "peft_config")  # merged for speed
    assert len(policy.generate([[{"role": "user", "content": "hi"}]])) == 1
    (tmp_path / "unfinished" / "checkpoint-1").mkdir(parents=True)  # a training that never finished
    with pytest.raises(FileNotFoundError, match="unfinished holds no finished model"):
        experiment.load_policy("refine", str(tmp_path / "unfinished"))


def test_a_finished_training_run_is_evaluated_under_the_models_name(artifacts, tmp_path):
    from refinelib.tune.train import train
    from refinelib.tune.train_config import TrainConfig
    from tests.tiny_model import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    tiny_model(tok).save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    record = {"id": "r", "conversations": [
        {"from": "human", "loss": False, "value": "Your goal is to put a mug on the table."},
        {"from": "gpt", "loss": True, "value": "Thought: I see it.\nAction: take mug from table"}]}
    folder = tmp_path / "tuning" / "expert_only"
    train(TrainConfig(base_model=str(tmp_path / "base"), train_records=[record] * 4, output_dir=str(folder),
                      max_length=100, max_steps=1, batch_size=2, save_steps=1000, eval_steps=1000))
    episodes = experiment.evaluate_model("expert_only", str(folder), ["pddl"], eval_run_id="t",
                                         max_instances=1, max_steps=1, max_new_tokens=4, max_prompt_tokens=90,
                                         base_model=str(tmp_path / "base"), progress_bar=False)
    assert [e.policy for e in episodes] == ["expert_only"] and len(episodes[0].turns) == 1
    sidecar_path = experiment.episodes_path("t", "expert_only").with_suffix(".settings.json")
    sidecar = json.loads(sidecar_path.read_text())
    assert sidecar["model"] == str(folder) and sidecar["model_identity"]  # retraining is told apart


def test_main_table_marks_held_in_cells_only_for_memorising_models_and_gives_cis():
    rows = [{"policy": p, "suite": s, "family": "f", "task": "t", "split": split, "instance": str(i),
             "seed": 0, "perturbation": "none", "sample": 0, "success": i % 2 == 0, "progress": 0.5}
            for p in ("base", "expert_only")
            for s, split in (("household_held_in", "held_in"), ("pddl", "held_out")) for i in range(4)]
    rows.append({**rows[0], "perturbation": "perturb-v1:R1", "success": True})  # ignored: not original
    table = tables.main_table(pd.DataFrame(rows), n_boot=200)
    held = table.set_index(["policy", "suite"]).held_in
    assert held[("expert_only", "household_held_in")] and held.sum() == 1
    assert (table.success_rate == 50.0).all() and (table.progress_rate == 50.0).all()
    assert (table.n_episodes == 4).all() and (table.success_rate_lo <= 50).all()
    assert table.paper_task.tolist() == ["ALFWorld", "PDDL", "ALFWorld", "PDDL"]
    shown = tables.wide(table, order=["expert_only", "base"])
    assert shown.index.tolist() == ["expert_only", "base"]
    assert shown.loc["expert_only", "household_held_in"] == "50.0 / 50.0*"
    assert shown.loc["base", "household_held_in"] == "50.0 / 50.0"
    # the held-in cell is left out, and the label says how many suites the mean averages
    assert shown.loc["expert_only", "held-out mean"] == "50.0 / 50.0 (1 suite)"
    assert shown.loc["base", "held-out mean"] == "50.0 / 50.0 (2 suites)"
    counted = tables.held_out_mean(table).set_index("policy").suites
    assert counted.to_dict() == {"base": 2, "expert_only": 1}


def test_memorised_format_on_another_family_and_under_a_household_perturbation():
    pddl = _episode("pddl", [_turn("take apple 1 from countertop 1"), _turn("pick ball1 rooma left", True),
                             _turn("go to countertop 1"), _turn("take apple 1 from countertop 1")])
    assert taxonomy.memorised_format_steps(pddl) == [0, 2, 3]
    babyai = _episode("babyai", [_turn("go to red ball 1"), _turn("move apple 1 to fridge 1")])
    assert taxonomy.memorised_format_steps(babyai) == [1]  # "go to <id>" is BabyAI's own command
    r1 = _episode("household", [_turn("take apple 1 from countertop 1"),
                                _turn("from countertop 1 take apple 1", True, "You pick up the apple 1."),
                                _turn("from countertop 2 take apple 1")], perturbation="perturb-v1:R1")
    assert taxonomy.memorised_format_steps(r1) == [0]  # only the old format, not a new-format mistake
    original = _episode("household", [_turn("take apple 1 from countertop 1")])
    assert taxonomy.memorised_format_steps(original) == []


def test_repeated_failed_action_needs_three_rejections_of_the_same_action():
    turns = [_turn("open box"), _turn("look", True, "A room."), _turn("open box."), _turn("take key"),
             _turn("open  box"), _turn("take key"), _turn(None)]
    episode = _episode("textadventure", turns)
    assert taxonomy.repeated_failed_actions(episode) == {"open box": [0, 2, 4]}
    assert taxonomy.repeated_failed_actions(episode, min_repeats=2) == {"open box": [0, 2, 4],
                                                                          "take key": [3, 5]}
    found = taxonomy.failure_modes([episode, _episode("pddl", [_turn("look", True, "x")], policy="q")])
    assert found[["policy", "mode", "action", "n_steps", "steps"]].to_dict("records") == [
        {"policy": "m", "mode": "repeated failed action", "action": "open box", "n_steps": 3,
         "steps": [0, 2, 4]}]
    rates = taxonomy.failure_mode_rates([episode, _episode("pddl", [], policy="m", suite="pddl")], found,
                                          by=["policy"])
    assert rates["repeated failed action rate"].tolist() == [0.5]
    assert rates["memorised format rate"].tolist() == [0.0]


def test_transcript_marks_steps_and_shows_taxonomy_labels():
    episode = _episode("pddl", [_turn("take apple 1 from countertop 1"), _turn(None)])
    text = display.render_episode(episode, mark=[0])
    assert ">> step 1 [invalid_action]" in text and "   step 2 [format_error]" in text
    assert "Action: (none: Thought: x Action: None)" in text
    assert display.render_episode(episode, max_turns=1).endswith("... 1 more steps")


def test_paper_tables_are_labelled_and_reproduce_the_papers_averages():
    main = reference.paper_main_table()
    assert "paper" in main.attrs["source"] and len(main) == 14 * 5
    refine = main[main.model == "AgentRefine (L3-8B)"]
    assert round(refine.success_rate.mean(), 1) == 24.7 and round(refine.progress_rate.mean(), 1) == 45.4
    flan = main[main.model == "Agent-FLAN (L3-8B)"].set_index("task").held_in
    assert flan["ALFWorld"] and not flan.drop("ALFWorld").any()
    assert main[(main.model == "AgentGen (L3-8B)") & (main.task == "SciWorld")].success_rate.isna().all()
    shown = reference.paper_wide(["Agent-FLAN (L3-8B)", "AgentRefine (L3-8B)"])
    assert shown.loc["Agent-FLAN (L3-8B)", "ALFWorld"] == "67.2 / 79.7*"
    assert shown.loc["AgentRefine (L3-8B)", "mean"] == "24.7 / 45.4"  # method.md §15.1
    assert shown.loc["AgentRefine (L3-8B)", "tasks in mean"] == 5
    # AgentGen has numbers for 3 of the 5 tasks: its mean says so instead of passing for a five-task mean
    agentgen = reference.paper_wide(["AgentGen (L3-8B)"]).loc["AgentGen (L3-8B)"]
    assert agentgen["tasks in mean"] == 3 and agentgen["mean"] == "20.4 / 35.2"
    assert "five-task mean" not in shown.columns
    assert "paper" in shown.attrs["source"]
    rob = reference.paper_robustness_table()
    assert "paper" in rob.attrs["source"]
    settings = ["original", "P1", "P2", "P3", "P4", "P5"]
    ours = metrics.robustness_summary(
        rob[settings].stack().rename("value").reset_index().rename(columns={"level_2": "perturbation"})
        .pivot_table(index=["model", "perturbation"], columns="metric", values="value").reset_index(),
        by=["model"], original="original")
    # the mean over the 6 settings reproduces the paper's "avg" column (method.md §15.3)
    assert (ours["mean"].round(1).to_numpy() == rob.loc[ours.index, "mean"].to_numpy()).all()


def test_short_rule_names():
    assert tables.short_rule("none") == "original" and tables.short_rule("perturb-v1:R5") == "R5"


def test_settings_sidecar_records_the_model_and_the_versions_of_what_was_played(artifacts):
    experiment.evaluate_model("oracle", "oracle", ["pddl"], eval_run_id="s", max_instances=1, max_steps=4,
                              progress_bar=False)
    sidecar = experiment.episodes_path("s", "oracle").with_suffix(".settings.json")
    recorded = json.loads(sidecar.read_text())
    assert {k: recorded[k] for k in ("model", "scale", "max_steps")} == {"model": "oracle", "scale": "small",
                                                                          "max_steps": 4}
    assert recorded["suite:pddl"] == "1+pddl-1" and recorded["prompt:pddl"] == "pddl-1+base-1"
    assert recorded["env_code:pddl"] == evaluate.environment_code("pddl")
    assert recorded["policy"] == {"name": "oracle", "class": "OraclePolicy"}


def test_an_endpoint_model_is_evaluated_into_the_main_table(artifacts, monkeypatch):
    """A GPT-4o / vLLM row: a model entry that is an OpenAI-compatible endpoint, key from the environment."""
    from fake_openai import FakeOpenAI

    monkeypatch.setenv("REFINELIB_TEST_KEY", "sk-test-endpoint")
    with FakeOpenAI(lambda request: "Thought: I look around.\nAction: check valid actions") as server:
        url = server.base_url.replace("http://", "http://user:hunter2@")  # credentials must not be stored
        models = {"served": {"endpoint": url, "model": "refine", "api_key_env": "REFINELIB_TEST_KEY"},
                  "oracle": "oracle"}
        episodes = experiment.evaluate_models(models, ["pddl"], max_instances=1, max_steps=2,
                                              progress_bar=False)
        assert server.requests and {r["model"] for r in server.requests} == {"refine"}
        assert all(r.get("temperature", 0) == 0 for r in server.requests)  # greedy, like the local rows
    served = [e for e in episodes if e.policy == "served"]
    assert len(served) == 1 and [t.action for t in served[0].turns] == ["check valid actions"] * 2
    table = tables.main_table(metrics.episode_table(episodes))
    assert {"served", "oracle"} <= set(table["policy"])
    for path in experiment.episodes_path("default", "served").parent.iterdir():
        assert "hunter2" not in path.read_text() and "sk-test-endpoint" not in path.read_text()
    again = experiment.evaluate_models(models, ["pddl"], max_instances=1, max_steps=2, progress_bar=False)
    assert [e.key for e in again] == [e.key for e in episodes]  # read back from the log, not replayed


@pytest.mark.parametrize("entry, message", [
    ({"endpoint": "openai"}, "'model' must be a non-empty string"),
    ({"endpoint": "ftp://x", "model": "m", "api_key_env": "REFINELIB_TEST_KEY"}, "http"),
    ({"endpoint": "openai", "model": "m", "key": "sk-1"}, r"unknown endpoint fields \['key'\]"),
    ({"endpoint": "openai", "model": "m", "api_key_env": "REFINELIB_NO_SUCH_KEY"}, "REFINELIB_NO_SUCH_KEY"),
])
def test_a_bad_endpoint_entry_is_one_error_before_anything_runs(artifacts, monkeypatch, entry, message):
    monkeypatch.setenv("REFINELIB_TEST_KEY", "sk-test")
    monkeypatch.delenv("REFINELIB_NO_SUCH_KEY", raising=False)
    with pytest.raises(ValueError, match=message):
        experiment.evaluate_models({"gpt": entry}, ["pddl"], max_instances=1, max_steps=1)
    assert not experiment.episodes_path("default", "gpt").exists()


def test_an_endpoint_model_plays_the_robustness_rules_through_the_endpoint(artifacts, monkeypatch):
    """Chapter 05 with an API row: each perturbed prompt (its re-phrased action templates) reaches the
    endpoint, and the episodes are logged per rule like a local model's."""
    from fake_openai import FakeOpenAI

    monkeypatch.setenv("REFINELIB_TEST_KEY", "sk-test")
    with FakeOpenAI(lambda request: "Thought: list them.\nAction: check valid actions") as server:
        entry = {"endpoint": server.base_url, "model": "gpt-4o-mini", "api_key_env": "REFINELIB_TEST_KEY"}
        episodes = experiment.evaluate_model("gpt-4o-mini", entry, ["pddl"], eval_run_id="rob",
                                             max_instances=1, max_steps=1, progress_bar=False,
                                             perturbations={"pddl": ["none", "R3"]})
        systems = [r["messages"][0]["content"] for r in server.requests]
    assert [e.perturbation for e in episodes] == ["none", "perturb-v1:R3"]
    assert len(systems) == 2 and systems[0] != systems[1]  # the R3 prompt's call syntax went out
    assert any("in brackets, separated by commas" in s for s in systems)


def test_best_of_n_through_an_endpoint_samples_with_seeds(artifacts, monkeypatch, tmp_path):
    """Chapter 06's Best-of-N with an API row: greedy requests at temperature 0 without a seed, sampled
    ones at the chapter's temperature, each sample with its own seed (so a re-run asks the same)."""
    from fake_openai import FakeOpenAI

    from refinelib.analysis import tables
    from refinelib.eval import experiment

    monkeypatch.setenv("REFINELIB_TEST_KEY", "sk-test")
    with FakeOpenAI(lambda request: "Thought: list.\nAction: check valid actions") as server:
        entry = {"endpoint": server.base_url, "model": "gpt-4o", "api_key_env": "REFINELIB_TEST_KEY"}
        policy = experiment.load_policy("gpt-4o", entry, max_new_tokens=32)
        run = dict(max_steps=1, max_instances=1, seeds=(7,), progress_bar=False)
        greedy = evaluate.run(policy, ["pddl"], log_path=tmp_path / "greedy.jsonl", **run)
        policy.temperature = 0.7
        sampled = evaluate.run(policy, ["pddl"], samples=3, log_path=tmp_path / "sampled.jsonl", **run)
        policy.close()
        requests = list(server.requests)
    assert [r.get("temperature") for r in requests] == [0.0, 0.7, 0.7, 0.7]
    assert "seed" not in requests[0] and len({r["seed"] for r in requests[1:]}) == 3
    table = tables.best_of_n_table(metrics.episode_table(greedy), metrics.episode_table(sampled))
    assert table.loc[0, "n_samples"] == 3 and table.loc[0, "policy"] == "gpt-4o"
