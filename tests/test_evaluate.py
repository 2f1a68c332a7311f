"""Evaluation runs: the oracle solves the small suites through the agent loop, lock-step batching, resume."""

import json

import pytest

from refinelib.eval import evaluate
from refinelib.eval.episodes import EpisodeLog
from refinelib.eval.policies import OraclePolicy, RandomPolicy, TransformersPolicy
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


# ----- arguments, identities and the lock (issue 12) ----------------------------------------------------
def _raises_in_time(call, seconds=120):
    """What ``call`` raised, run in a thread so that a call that loops forever fails the test instead."""
    import threading

    outcome = []

    def target():
        try:
            call()
            outcome.append(None)
        except BaseException as why:  # noqa: BLE001 - handed to the test
            outcome.append(why)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"the call did not return within {seconds} s"
    return outcome[0]


@pytest.mark.parametrize("field,value", [("batch_size", 0), ("max_steps", 0), ("max_steps", -3),
                                         ("max_instances", -1), ("samples", 0), ("samples", -1),
                                         ("batch_size", True), ("max_steps", 2.5)])
def test_an_argument_out_of_range_is_one_error_naming_it_before_anything_is_played(tmp_path, field, value):
    log = tmp_path / "e.jsonl"
    kwargs = {"max_steps": 2, "max_instances": 1, "progress_bar": False, "log_path": log, field: value}
    error = _raises_in_time(lambda: evaluate.run(RandomPolicy(), ["pddl"], **kwargs))
    assert isinstance(error, ValueError) and str(error).startswith(f"evaluate: {field} must be"), error
    assert not log.exists() and not evaluate.identity_path(log).exists()


def test_max_instances_zero_plays_nothing(tmp_path):
    assert evaluate.run(RandomPolicy(), ["pddl"], max_instances=0, progress_bar=False) == []


def _played(log, **kwargs):
    return evaluate.run(OraclePolicy(), ["pddl"], max_instances=1, progress_bar=False, log_path=log, **kwargs)


def test_a_changed_prompt_version_sets_the_old_log_aside_and_plays_again(tmp_path, monkeypatch):
    log = tmp_path / "e.jsonl"
    first = _played(log)
    assert _played(log) == first  # same identity: read back, not replayed
    monkeypatch.setattr(evaluate, "prompt_version", lambda family: f"{family}-2+base-1")
    with pytest.warns(UserWarning, match=r"prompt:pddl: 'pddl-1\+base-1' -> 'pddl-2\+base-1'"):
        again = _played(log)
    assert (tmp_path / "e.stale-1.jsonl").read_text() == _json_lines(first)
    assert again[0].meta["prompt_version"] == "pddl-2+base-1"  # played again, under the new prompt
    assert json.loads(evaluate.identity_path(log).read_text())["prompt:pddl"] == "pddl-2+base-1"
    assert len(EpisodeLog(log).read()) == 1  # only the episode played with the new prompt


def _json_lines(episodes):
    return "".join(e.to_json() + "\n" for e in episodes)


def test_a_changed_environment_version_or_code_sets_the_old_log_aside(tmp_path, monkeypatch):
    from refinelib.envs.pddl import PDDLEnv

    log = tmp_path / "e.jsonl"
    _played(log)
    monkeypatch.setattr(PDDLEnv, "version", "2")
    with pytest.warns(UserWarning, match=r"suite:pddl: '1\+pddl-1' -> '1\+pddl-2'"):
        _played(log)
    monkeypatch.setattr(evaluate, "environment_code", lambda family: "edited")
    with pytest.warns(UserWarning, match=r"env_code:pddl: '\w+' -> 'edited'"):
        _played(log)
    assert (tmp_path / "e.stale-1.jsonl").is_file() and (tmp_path / "e.stale-2.jsonl").is_file()


def test_a_change_to_another_family_keeps_the_log_and_a_new_suite_adds_to_it(tmp_path, monkeypatch):
    import warnings

    log = tmp_path / "e.jsonl"
    first = _played(log)
    monkeypatch.setattr(evaluate, "prompt_version",
                        lambda family: "babyai-9+base-1" if family == "babyai" else f"{family}-1+base-1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no set aside: this log never played babyai
        assert _played(log) == first
        both = evaluate.run(OraclePolicy(), ["pddl", "babyai"], max_instances=1, progress_bar=False,
                            log_path=log)
    assert both[0] == first[0] and len(EpisodeLog(log).read()) == 2
    recorded = json.loads(evaluate.identity_path(log).read_text())
    assert recorded["prompt:babyai"] == "babyai-9+base-1" and recorded["prompt:pddl"] == "pddl-1+base-1"


def test_a_log_without_a_recorded_identity_is_not_reused(tmp_path):
    log = tmp_path / "e.jsonl"
    first = _played(log)
    evaluate.identity_path(log).unlink()  # a log written by an older refinelib: no identity
    with pytest.warns(UserWarning, match="no identity recorded"):
        _played(log)
    assert (tmp_path / "e.stale-1.jsonl").read_text() == _json_lines(first)
    # an older sidecar (settings only, no versions) is not trusted either
    evaluate.identity_path(log).write_text(json.dumps({"max_steps": 30}))
    with pytest.warns(UserWarning, match=r"suite:pddl: None -> '1\+pddl-1'"):
        _played(log)


def test_an_edit_of_the_agent_loop_sets_the_old_log_aside(tmp_path, monkeypatch):
    from refinelib import runs

    log = tmp_path / "e.jsonl"
    _played(log)
    recorded = json.loads(evaluate.identity_path(log).read_text())
    assert recorded["agent_code"] == runs.code_version("refinelib.eval.agent")
    monkeypatch.setattr(evaluate, "agent_code", lambda: "edited")
    with pytest.warns(UserWarning, match=r"agent_code: '\w+' -> 'edited'"):
        _played(log)


def test_environment_code_versions_each_familys_own_files():
    assert evaluate.environment_code("pddl") == evaluate.environment_code("pddl")
    assert len({evaluate.environment_code(f) for f in ("pddl", "babyai", "household")}) == 3
    with pytest.raises(ValueError, match="unknown environment family"):
        evaluate.environment_code("chess")


def test_a_second_writer_of_a_log_folder_is_refused_naming_the_holder(tmp_path):
    from refinelib.runs import RunLockedError
    from tests.writers import held

    with held(tmp_path) as holder:
        with pytest.raises(RunLockedError, match=rf"pid {holder.pid}\b"):
            _played(tmp_path / "e.jsonl")
        assert not (tmp_path / "e.jsonl").exists()
    _played(tmp_path / "e.jsonl")  # released with the holder


# ----- which instances a limited run plays (issue 11: representative samples) --------------------------
@pytest.mark.parametrize(("name", "n", "tasks"), [("household_held_in", 20, 4), ("pddl", 20, 4),
                                                  ("babyai", 28, 28), ("sciworld", 20, 10)])
def test_a_limited_run_spreads_its_instances_over_the_suites_tasks(name, n, tasks):
    from collections import Counter

    from refinelib.envs import registry

    s = registry.suite(name, "agentboard")
    assert len({i.task for i in s.instances[:n]}) < tasks  # the suite's own prefix is one or a few tasks
    counts = Counter(i.task for i in evaluate.select_instances(s, n))
    assert len(counts) == tasks and max(counts.values()) - min(counts.values()) <= 1
    assert sum(counts.values()) == n


def test_the_selection_is_deterministic_prefix_stable_and_all_without_a_limit():
    from refinelib.envs import registry

    s = registry.suite("household_held_in", "agentboard")
    twenty, thirty = evaluate.select_instances(s, 20), evaluate.select_instances(s, 30)
    assert thirty[:20] == twenty and len(set(thirty)) == 30
    assert evaluate.select_instances(registry.suite("household_held_in", "agentboard"), 20) == twenty
    assert evaluate.select_instances(s, None) == s.instances  # all: the suite's own order
    everything = evaluate.select_instances(s, len(s) + 5)  # more than the suite has: each instance once
    assert sorted(everything, key=str) == sorted(s.instances, key=str)
    assert evaluate.select_instances(s, 0) == ()
    jobs = evaluate.jobs_for([s], "agentboard", max_instances=3)
    assert [j.instance for j in jobs] == list(twenty[:3])
    assert [j.instance.task for j in jobs] == ["pick_and_place_simple", "pick_clean_then_place_in_recep",
                                               "pick_heat_then_place_in_recep"]


def test_a_suites_tasks_run_out_unevenly_and_the_others_go_on():
    from refinelib.envs import registry
    from refinelib.envs.base import Instance

    made = tuple(Instance("pddl", t, k) for t, n in (("a", 3), ("b", 1), ("c", 2)) for k in range(n))
    s = registry.Suite("x", "1", "held_out", "pddl", "small", made, "synthetic")
    assert [i.id for i in evaluate.select_instances(s, 6)] == [
        "pddl/a/0", "pddl/b/0", "pddl/c/0", "pddl/a/1", "pddl/c/1", "pddl/a/2"]


@pytest.mark.parametrize("scale", ["small", "agentboard"])
def test_an_instance_id_names_the_instance_so_a_log_key_never_changes_meaning(scale):
    """Episodes are keyed by instance id, not position: the id must be unique in its suite and spell out
    everything that makes the instance (family, task, options, seed), so that a selection that now picks
    other positions cannot make an old log key refer to another instance."""
    from refinelib.envs import registry

    for name in registry.EVALUATION_SUITES:
        s = registry.suite(name, scale)
        ids = [i.id for i in s.instances]
        assert len(ids) == len(set(ids)), name
        for inst in s.instances:
            options = "".join(f",{k}={v}" for k, v in inst.options)
            assert inst.id == f"{inst.family}/{inst.task}{options}/{inst.seed}"


def test_a_larger_limit_adds_to_the_log_and_replays_nothing(tmp_path):
    log = tmp_path / "e.jsonl"
    first = evaluate.run(OraclePolicy(), ["pddl"], max_instances=2, log_path=log, progress_bar=False)
    assert [e.instance for e in first] == ["pddl/gripper/0", "pddl/blocksworld/0"]  # two tasks, not one
    lines = log.read_text().splitlines()
    more = evaluate.run(OraclePolicy(), ["pddl"], max_instances=5, log_path=log, progress_bar=False)
    assert log.read_text().splitlines()[:2] == lines and len(log.read_text().splitlines()) == 5
    assert [_strip(e) for e in more[:2]] == [_strip(e) for e in first]  # read back, not played again
    assert [e.instance for e in more] == ["pddl/gripper/0", "pddl/blocksworld/0", "pddl/tyreworld/0",
                                          "pddl/barman/0", "pddl/gripper/1"]
    assert all(e.instance.startswith(f"pddl/{e.task}/") for e in more)  # the key names the task it played
