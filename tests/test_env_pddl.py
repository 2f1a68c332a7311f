"""PDDL-text: contract checks on the small suite, the strict parser, rendering, progress, the oracle,
the generators and AgentBoard's original problems (skipped when their directory is absent)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pyperplan")

from env_contract import (  # noqa: E402
    assert_deterministic,
    assert_invalid_action_keeps_state,
    assert_oracle_solves,
    partial_progress,
)

from refinelib.envs import pddl, pddl_problems  # noqa: E402
from refinelib.envs.base import BackendMissing  # noqa: E402
from refinelib.envs.pddl import PDDLEnv, agentboard_instances, instances  # noqa: E402
from refinelib.envs.registry import make_instance  # noqa: E402
from refinelib.envs.rollout import play  # noqa: E402

SMALL = instances("small")
SHARED_COPY = Path(__file__).resolve().parents[2] / "shared" / "data" / "agentboard-pddl"
AGENTBOARD_DIR = Path(os.environ.get("REFINELIB_AGENTBOARD_PDDL", SHARED_COPY))
needs_agentboard = pytest.mark.skipif(not (AGENTBOARD_DIR / "gripper.pddl").is_file(),
                                      reason=f"AgentBoard's PDDL problems not found in {AGENTBOARD_DIR}")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory, monkeypatch):
    """Generated problems go to a per-session temporary cache."""
    monkeypatch.setenv("REFINELIB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


# ----- the contract on the small suite -------------------------------------------------------
def test_instance_lists():
    assert [(i.task, i.seed) for i in SMALL] == [(t, s) for t in pddl.TASKS for s in (0, 1)]
    full = instances("agentboard")
    counts = {t: sum(i.task == t for i in full) for t in pddl.TASKS}
    assert counts == {"gripper": 20, "blocksworld": 10, "tyreworld": 10, "barman": 20}
    assert [i.seed for i in instances("small", ["barman"], first_seed=7)] == [7, 8]
    with pytest.raises(ValueError, match="small, agentboard"):
        instances("huge")
    with pytest.raises(ValueError, match="blocksworld"):
        instances("small", ["blockworld"])
    with pytest.raises(ValueError, match="known"):
        PDDLEnv("sokoban")
    with pytest.raises(ValueError, match="oracle_time_limit"):
        PDDLEnv("gripper", colour="red")


@pytest.mark.parametrize("inst", SMALL, ids=lambda i: i.id)
def test_oracle_solves_small_suite(inst):
    assert_oracle_solves(make_instance(inst), inst.seed)


@pytest.mark.parametrize("task", pddl.TASKS)
def test_invalid_action_keeps_state(task):
    assert_invalid_action_keeps_state(PDDLEnv(task), 0, "dance wildly")


@pytest.mark.parametrize("inst", [SMALL[0], SMALL[-1]], ids=lambda i: i.id)
def test_deterministic(inst):
    assert_deterministic(make_instance(inst), inst.seed)


def test_a_bad_policy_gets_partial_progress():
    assert any(0.0 < partial_progress(make_instance(i), i.seed) < 1.0 for i in SMALL)


# ----- the strict parser ---------------------------------------------------------------------
@pytest.fixture
def gripper():
    env = PDDLEnv("gripper", size=3)
    env.reset(0)  # balls 1 and 2 in rooma with the robot, ball3 in roomb
    assert env.snapshot() == tuple(sorted(env.problem.init))
    return env


@pytest.mark.parametrize("action, message", [
    ("grab ball1", "Unknown action 'grab'. The actions are: drop, move, pick."),
    ("pick ball1", "'pick' takes 3 arguments (pick <ball> <room> <gripper>), got 1."),
    ("pick ball9 rooma left", "No object named 'ball9'. The objects are: ball1, ball2, ball3, left, right,"),
    ("pick rooma rooma left", "'rooma' is a room, but argument 1 of 'pick' must be a ball"),
    ("pick ball3 rooma left", "The action is not applicable. Unmet condition: Ball ball3 is in room rooma."),
    ("pick ball1 roomb left", "Unmet conditions: Ball ball1 is in room roomb. The robot is in room roomb."),
    ("move rooma rooma", "The action 'move rooma rooma' would change nothing."),
    ("", "Empty action."),
])
def test_parser_messages_leave_the_state(gripper, action, message):
    before = gripper.snapshot()
    step = gripper.step(action)
    assert not step.valid and message in step.observation, step.observation
    assert gripper.snapshot() == before


def test_parser_accepts_case_brackets_and_commas(gripper):
    for action in ("(pick ball1 rooma left)", "Pick Ball2, roomA, right."):
        assert gripper.step(action).valid
    assert "The left gripper is carrying ball ball1." in gripper.step("move rooma roomb").observation


def test_tokenizer_and_preconditions_with_constants():
    assert pddl.tokenize(" (Unstack b1, 'b2') ") == ["unstack", "b1", "b2"]
    env = PDDLEnv("tyreworld")
    env.reset(0)
    assert env.step("loosen nut1 hub1").observation.endswith("Unmet condition: You have wrench.")
    step = env.step("jack-up jack")
    assert "'jack' is a tool, but argument 1 of 'jack-up' must be a hub" in step.observation


# ----- rendering and progress ---------------------------------------------------------------------
def test_sentences_and_goal_text():
    assert pddl.sentence("gripper", "(at ball1 rooma)") == "Ball ball1 is in room rooma."
    assert pddl.sentence("gripper", "(free left)") == "The left gripper is free."
    assert pddl.sentence("blocksworld", "(on b1 b2)") == "Block b1 is on block b2."
    assert pddl.sentence("tyreworld", "(free hub1)") == "Hub hub1 is free."  # templates are per domain
    assert pddl.sentence("barman", "(mystery a b)") == "The fact 'mystery a b' holds."
    assert pddl.render("blocksworld", ["(clear b2)", "(arm-empty)"]) == "Block b2 is clear. The arm is empty."
    assert pddl.action_text("(pick ball1 rooma left)") == "pick ball1 rooma left"
    env = PDDLEnv("blocksworld")
    start = env.reset(0)
    assert start.goal.startswith("The goal is to satisfy the following conditions: Block ")
    assert all(a.split()[0] in ("pickup", "unstack") for a in start.valid_actions)


def test_static_facts_are_shown_once():
    env = PDDLEnv("barman")
    start = env.reset(0)
    assert "The dispenser1 dispenses ingredient1." in start.observation
    step = env.step(start.valid_actions[0])
    assert step.valid and "dispenses" not in step.observation and "The shaker1 is" in step.observation


def test_progress_is_the_goal_fraction_max_tracked(gripper):
    # goal: every ball in the other room; deliver ball1, then pick it up again
    for action in ("pick ball1 rooma left", "move rooma roomb"):
        assert gripper.step(action).progress == 0.0
    step = gripper.step("drop ball1 roomb left")
    assert step.progress == pytest.approx(1 / 3) and gripper.goal_fraction() == pytest.approx(1 / 3)
    step = gripper.step("pick ball1 roomb left")
    assert gripper.goal_fraction() == 0.0 and step.progress == pytest.approx(1 / 3)


def test_winning_says_so():
    env = PDDLEnv("blocksworld")
    record = play(env, 0)
    assert record.success and record.turns[-1][1].observation.endswith("The goal is satisfied.")


# ----- the oracle ---------------------------------------------------------------------------------
def test_oracle_keeps_its_plan_and_replans_after_a_deviation(monkeypatch):
    calls = []
    find_plan = pddl.find_plan
    monkeypatch.setattr(pddl, "find_plan", lambda *a, **k: calls.append(1) or find_plan(*a, **k))
    env = PDDLEnv("gripper", size=4)
    env.reset(3)
    for _ in range(3):
        env.step(env.oracle_action())
    assert len(calls) == 1  # the suffix of the first plan was reused
    detour = next(a for a in env.valid_actions() if a != env.oracle_action())
    env.step(detour)
    record = [env.step(env.oracle_action()) for _ in range(60) if not env.done]
    assert env.success and all(s.valid for s in record) and len(calls) == 2


def test_oracle_time_cap_raises_a_clear_error():
    env = PDDLEnv("gripper", size=10, oracle_time_limit=0)
    env.reset(0)
    with pytest.raises(pddl.OracleTimeout, match="oracle_time_limit"):
        env.oracle_action()


def test_oracle_plan_does_not_depend_on_the_hash_seed():
    code = ("from refinelib.envs.pddl import PDDLEnv; from refinelib.envs.rollout import play; "
            "print([a for a, _ in play(PDDLEnv('barman'), 15).turns])")
    plans = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert len(plans) == 1


# ----- generators -----------------------------------------------------------------------------------
@pytest.mark.parametrize("task", pddl.TASKS)
def test_generators_are_seeded_and_cached(task, tmp_path):
    text = pddl_problems.problem_text(task, 3)
    assert text == pddl_problems.problem_text(task, 3) != pddl_problems.problem_text(task, 4)
    path = pddl_problems.write_problem(task, 3, None, tmp_path)
    assert path.read_text() == text and list(tmp_path.iterdir()) == [path]
    env = PDDLEnv(task, problem_file=str(path), domain_file=str(pddl.domain_file(task)))
    env.reset(0)
    assert env.goal_fraction() == 0.0  # no goal fact holds at the start
    assert len(pddl_problems.problem_text(task, 0, size=3)) > len(pddl_problems.problem_text(task, 0, size=1))


def test_sizes_grow_with_the_seed():
    sizes = [pddl_problems.default_size("gripper", s) for s in range(20)]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]


def test_missing_backend_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyperplan.pddl.parser", None)
    with pytest.raises(BackendMissing, match="pyperplan==2.1"):
        PDDLEnv("gripper").reset(0)


# ----- AgentBoard's original problems ------------------------------------------------------------
def test_agentboard_directory_must_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        agentboard_instances(tmp_path)


@needs_agentboard
def test_agentboard_suite_loads():
    items = agentboard_instances(AGENTBOARD_DIR)
    counts = {t: sum(i.task == t for i in items) for t in pddl.TASKS}
    assert counts == {"gripper": 20, "blocksworld": 10, "tyreworld": 10, "barman": 20}
    blocks = [i for i in items if i.task == "blocksworld"]
    assert [Path(dict(i.options)["problem_file"]).name for i in blocks][:3] == [
        "problem1.pddl", "problem2.pddl", "problem3.pddl"]
    for inst in items[::7]:  # every file parses and grounds
        assert make_instance(inst).reset(inst.seed).valid_actions


@needs_agentboard
@pytest.mark.parametrize("task, seed", [("gripper", 1), ("gripper", 12), ("blocksworld", 4),
                                        ("tyreworld", 3)])
def test_oracle_solves_agentboard_problems(task, seed):
    inst = next(i for i in agentboard_instances(AGENTBOARD_DIR, [task]) if i.seed == seed)
    env = make_instance(inst)
    assert "The object rooma is a room." in env.reset(seed).observation or task != "gripper"
    assert_oracle_solves(env, seed)


@needs_agentboard
@pytest.mark.slow
def test_oracle_solves_every_agentboard_problem():
    for inst in agentboard_instances(AGENTBOARD_DIR):
        assert_oracle_solves(make_instance(inst), inst.seed, max_steps=100)
