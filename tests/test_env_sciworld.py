"""ScienceWorld family: the contract on the small suite, plus our seed mapping, rejection and replay logic.

Needs ``scienceworld`` and Java; the backend tests skip cleanly without them. One JVM serves the
module and each task is loaded by one env object (module-scoped fixture); gold paths are cached.
"""

from __future__ import annotations

import shutil
import sys

import pytest
from env_contract import (
    assert_deterministic,
    assert_invalid_action_keeps_state,
    assert_oracle_solves,
    partial_progress,
)

from refinelib.envs import sciworld
from refinelib.envs.base import BackendMissing
from refinelib.envs.rollout import play

SMALL = sciworld.instances("small")


# ----- pure logic (no backend) ----------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 10, 11, 14, 30, 36, 125, 300, 540])
def test_variation_order_is_a_permutation_with_the_test_split_first(n):
    order = sciworld.variation_order(n)
    assert sorted(order) == list(range(n))
    if n >= 5:
        assert order[0] == 3 * (n // 4)  # the test split starts at the fourth block


def test_variation_order_known_cases():
    assert sciworld.variation_order(10) == [6, 7, 8, 9, 4, 5, 0, 1, 2, 3]
    assert sciworld.variation_order(300)[:3] == [225, 226, 227]
    assert sciworld.variation_order(4) == [3, 2, 0, 1]


def test_instances_small_and_agentboard():
    assert [i.id for i in SMALL] == [f"sciworld/{t}/0" for t in sciworld.SMALL_TASKS]
    board = sciworld.instances("agentboard")
    assert len(board) == 90 and len({i.id for i in board}) == 90
    assert {i.task for i in board} == set(sciworld.TASKS)
    assert all(dict(i.options) == {"simplification": "agentboard"} for i in board)
    for task, failing in sciworld.GOLD_FAILS["agentboard"].items():
        assert not {i.seed for i in board if i.task == task} & set(failing)
    shifted = sciworld.instances("small", tasks=["find-plant"], first_seed=5)
    assert [(i.task, i.seed) for i in shifted] == [("find-plant", 5)]


def test_instances_reject_unknown_scale_and_task():
    with pytest.raises(ValueError, match="agentboard"):
        sciworld.instances("huge")
    with pytest.raises(ValueError, match="find-animal"):
        sciworld.instances("small", tasks=["mendelian-genetics-known-plant"])


def test_simplification_strings():
    assert sciworld.simplification_string("find-animal", "easy") == "easy"
    agentboard = sciworld.simplification_string("find-animal", "agentboard")
    assert agentboard == "selfWateringFlowerPots,openContainers,openDoors,noElectricalAction"
    assert "noElectricalAction" not in sciworld.simplification_string("power-component", "agentboard")


def test_missing_package_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(sciworld, "_SIMULATOR", None)
    monkeypatch.setitem(sys.modules, "scienceworld", None)  # makes the import fail
    with pytest.raises(BackendMissing, match="scienceworld==1.2.3"):
        sciworld.SciWorldEnv("find-animal").reset(0)


def test_missing_java_is_one_clear_error(monkeypatch):
    pytest.importorskip("scienceworld")
    monkeypatch.setattr(sciworld, "_SIMULATOR", None)
    monkeypatch.setattr(sciworld.shutil, "which", lambda name: None)
    with pytest.raises(BackendMissing, match="openjdk-17-jre-headless"):
        sciworld.SciWorldEnv("find-animal").reset(0)


# ----- the engine ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def envs():
    pytest.importorskip("scienceworld")
    if shutil.which("java") is None:
        pytest.skip("no Java runtime")
    return {task: sciworld.SciWorldEnv(task) for task in sciworld.SMALL_TASKS}


@pytest.mark.parametrize("inst", SMALL, ids=lambda i: i.task)
def test_oracle_solves_every_small_instance(envs, inst):
    assert_oracle_solves(envs[inst.task], inst.seed, max_steps=60)


def test_invalid_action_keeps_state(envs):
    env = envs["find-animal"]
    assert_invalid_action_keeps_state(env, 0, "dance wildly")
    step = env.step("dance wildly")
    assert not step.valid and step.observation == sciworld.NO_MATCH


def test_ambiguous_request_is_rejected_and_not_left_waiting(envs):
    env = envs["find-animal"]  # seed 0 = variation 225: the kitchen has three doors
    env.reset(0)
    assert env.step("teleport to kitchen").valid
    before = env.snapshot()
    step = env.step("look at door")
    assert not step.valid and step.observation.startswith("Ambiguous request")
    assert step.observation.endswith(sciworld.CANCELLED)
    assert env.snapshot() == before  # no tick, even though cancelling inside the engine costs one
    look = env.step("look around")  # the engine is not waiting for a number
    assert look.valid and look.observation.startswith("This room is called the kitchen")


def test_engine_commands_after_a_won_episode_do_not_inherit_its_score(envs):
    env = envs["lifespan-longest-lived-then-shortest-lived"]
    assert play(env, 0).success
    env.reset(0)
    step = env.step("task")  # answered by the engine without updating its score
    assert step.valid and step.observation.startswith("Task description")
    assert not step.done and step.progress == 0.0


def test_deterministic(envs):
    assert_deterministic(envs["lifespan-longest-lived-then-shortest-lived"], 0)


def test_bad_policy_gets_partial_progress(envs):
    assert 0.0 < partial_progress(envs["find-animal"], 0) < 1.0


def test_progress_is_monotone_and_wrong_focus_loses(envs):
    env = envs["find-animal"]
    record = play(env, 0)
    progress = [step.progress for _, step in record.turns]
    assert progress == sorted(progress) and progress[-1] == 1.0
    start = env.reset(0)
    assert start.goal.startswith("Your task is to find a(n) animal")
    assert env.step("focus on orange").done  # the orange is no animal: score -100, the task fails
    assert not env.success and env.progress == 0.0


def test_valid_actions_are_cached_and_leave_the_randomness_alone(envs):
    env = envs["use-thermometer"]
    start = env.reset(0)
    assert list(start.valid_actions) == sorted(start.valid_actions) and "look around" in start.valid_actions
    env.step(env.oracle_action())
    sim = sciworld.simulator()
    state = sim.random_state()
    env.valid_actions()  # the engine draws random numbers to pick unique object names
    assert sim.random_state() == state
    cached = env._valid
    env.valid_actions()
    assert env._valid is cached  # computed once per state


def test_asking_for_valid_actions_does_not_change_the_episode(envs):
    env = envs["find-animal"]  # animals move at random
    plain = play(env, 0)
    asking = play(env, 0, policy=lambda e: (e.valid_actions(), e.oracle_action())[1])
    assert plain.turns == asking.turns and plain.success


def test_envs_share_one_jvm_and_replay_their_episode(envs):
    a, b = envs["use-thermometer"], envs["identify-life-stages-2"]
    a.reset(0)
    for _ in range(3):
        a.step(a.oracle_action())
    mid = a.snapshot()
    b.reset(0)
    b.step(b.oracle_action())
    assert a.snapshot() == mid  # a's episode was rebuilt by reload + replay
    assert play(a, 0).success


@pytest.mark.slow
@pytest.mark.parametrize("inst", sciworld.instances("agentboard"), ids=lambda i: f"{i.task}-{i.seed}")
def test_oracle_solves_every_agentboard_instance(inst):
    pytest.importorskip("scienceworld")
    assert_oracle_solves(sciworld.SciWorldEnv(inst.task, **dict(inst.options)), inst.seed, max_steps=60)


def test_variation_order_matches_the_engine_split(envs):
    for task in ("identify-life-stages-2", "find-animal"):
        env = envs[task]
        env.reset(0)
        server = sciworld.simulator().server
        test_split = list(server.getVariationsTest())
        n = sciworld.simulator().variations(task)
        assert sciworld.variation_order(n)[: len(test_split)] == test_split
        assert env.variation == test_split[0]
