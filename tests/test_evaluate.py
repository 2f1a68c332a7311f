"""Evaluation runs: the oracle solves the small suites through the agent loop, lock-step batching, resume."""

import json

import pytest

from refinelib import evaluate
from refinelib.episodes import EpisodeLog
from refinelib.policies import OraclePolicy, RandomPolicy, TransformersPolicy
from tests.tiny_model import tiny_model, tiny_tokenizer


def test_oracle_succeeds_on_the_small_pddl_suite_within_30_steps(tmp_path):
    episodes = evaluate.run(OraclePolicy(), ["pddl"], log_path=tmp_path / "e.jsonl", progress_bar=False)
    assert len(episodes) == 8 and all(e.success and e.progress == 1.0 for e in episodes)
    assert all(len(e.turns) <= 30 for e in episodes)
    assert not any(t.format_error or not t.valid for e in episodes for t in e.turns)
    e = episodes[0]
    assert e.key == ("oracle", "pddl", "pddl/gripper/0", 0, "none", 0)
    assert e.meta["prompt_version"] == "pddl-1+base-1" and e.split == "held_out" and e.turns[-1].done


def test_oracle_succeeds_on_the_small_babyai_suite(tmp_path):
    # The BabyAI oracle needs 39 steps on BlockedUnlockPickup/1234 (more than AgentBoard's 30), so this
    # checks the loop with room to spare; the 30-step figure is the suite's business.
    episodes = evaluate.run(OraclePolicy(), ["babyai"], max_steps=60, batch_size=5, progress_bar=False)
    assert len(episodes) == 12 and all(e.success for e in episodes)


def test_random_policy_runs_is_reproducible_and_scores_below_the_oracle(tmp_path):
    a = evaluate.run(RandomPolicy(), ["pddl"], seeds=(0, 1), max_steps=10, progress_bar=False)
    b = evaluate.run(RandomPolicy(), ["pddl"], seeds=(0, 1), max_steps=10, batch_size=3, progress_bar=False)
    assert [e.to_json() for e in a] != [] and [_strip(e) for e in a] == [_strip(e) for e in b]
    assert len(a) == 16 and {e.seed for e in a} == {0, 1}
    assert sum(e.success for e in a) < len(a)
    assert all(t.valid for e in a for t in e.turns)  # random *valid* actions


def _strip(episode):
    """The episode without its timing (the only field that may differ between two runs)."""
    data = json.loads(episode.to_json())
    data["meta"].pop("seconds")
    return data


def test_resume_after_a_partial_run_gives_no_duplicates_and_the_same_episodes(tmp_path):
    full = tmp_path / "full.jsonl"
    part = tmp_path / "part.jsonl"
    suites = ["pddl", "babyai"]
    reference = evaluate.run(RandomPolicy(), suites, max_steps=8, log_path=full, progress_bar=False)
    # "killed" midway: only some suites/instances done, plus a line cut by the kill
    evaluate.run(RandomPolicy(), ["babyai"], max_steps=8, log_path=part, max_instances=5, progress_bar=False)
    with part.open("a") as f:
        f.write('{"policy": "random", "suite": "pd')
    resumed = evaluate.run(RandomPolicy(), suites, max_steps=8, log_path=part, batch_size=7,
                           progress_bar=False)
    keys = [json.loads(line)["instance"] for line in part.read_text().splitlines() if line.endswith("}")]
    assert len(keys) == len(set(keys)) == len(reference) == 20
    assert [_strip(e) for e in resumed] == [_strip(e) for e in reference]
    log = EpisodeLog(part)
    assert len(log.read()) == 20 and log.skipped_lines == 1  # the cut line is skipped, not fatal
    # running again does nothing new
    again = evaluate.run(RandomPolicy(), suites, max_steps=8, log_path=part, progress_bar=False)
    assert len(part.read_text().splitlines()) == 21  # 20 episodes + the cut fragment's line
    assert [_strip(e) for e in again] == [_strip(e) for e in reference]


@pytest.fixture(scope="module")
def tiny_policy():
    tok = tiny_tokenizer()
    return TransformersPolicy(tiny_model(tok), tok, name="tiny", max_new_tokens=12, max_prompt_tokens=600)


def test_local_policy_batched_run_equals_sequential_run(tiny_policy):
    kwargs = dict(suites=["pddl", "babyai"], max_steps=3, max_instances=2, progress_bar=False)
    batched = evaluate.run(tiny_policy, batch_size=8, **kwargs)
    sequential = evaluate.run(tiny_policy, batch_size=1, **kwargs)
    assert [_strip(e) for e in batched] == [_strip(e) for e in sequential]
    assert len(batched) == 4 and all(len(e.turns) == 3 for e in batched)
    # the untrained model writes no "Action:": every step is a format error, fed back, window in budget
    turns = [t for e in batched for t in e.turns]
    assert all(t.format_error == (t.action is None) for t in turns)
    assert batched[0].meta["policy"]["name"] == "tiny"


def test_perturbed_runs_are_logged_under_the_rule_id_and_the_oracle_still_wins(tmp_path):
    log = tmp_path / "episodes.jsonl"
    episodes = evaluate.run(OraclePolicy(), ["pddl"], perturbations=("none", "R1"), max_instances=2,
                            log_path=log, progress_bar=False)
    assert [e.perturbation for e in episodes] == ["none", "none", "perturb-v1:R1", "perturb-v1:R1"]
    assert all(e.success for e in episodes)
    original, perturbed = episodes[0], episodes[2]
    assert original.turns[0].action != perturbed.turns[0].action  # the agent saw other command words
    assert len(EpisodeLog(log).done()) == 4


def test_a_perturbation_the_family_lacks_is_a_clear_error():
    with pytest.raises(ValueError, match="no perturbation 'R9' for family 'pddl'"):
        evaluate.jobs_for(["pddl"], perturbations=("R9",))
