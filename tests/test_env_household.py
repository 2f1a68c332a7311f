"""Household (ALFWorld engine on generated ALFRED problems): contract, generator, subgoals, oracle.

Engine tests skip when alfworld, TextWorld's PddlEnv or the Fast Downward build cannot be imported.
A cold cache generates the 12 small games (~0.5 s each); the whole file takes ~15 s.
"""

from __future__ import annotations

import json
import random
import sys

import pytest

from refinelib.envs import household as hh
from refinelib.envs.base import BackendMissing
from refinelib.envs.household import Subgoal, SubgoalTracker, instances, subgoals

try:
    import alfworld.agents.environment.alfred_tw_env  # noqa: F401
    import fast_downward  # noqa: F401
    from textworld.envs import PddlEnv  # noqa: F401

    HAVE_ENGINE = True
except ImportError:
    HAVE_ENGINE = False
needs_engine = pytest.mark.skipif(
    not HAVE_ENGINE, reason="alfworld / textworld[pddl] / Fast Downward missing"
)

SMALL = instances("small")
ENVS: dict[str, hh.HouseholdEnv] = {}


def env_for(task: str) -> hh.HouseholdEnv:
    """One environment per task type for the module (each holds a copy of libdownward)."""
    if task not in ENVS:
        ENVS[task] = hh.HouseholdEnv(task)
    return ENVS[task]


# ----- no backend needed -------------------------------------------------------------------
def test_instance_lists():
    assert len(hh.TASKS) == 6 and [(i.task, i.seed) for i in SMALL[:2]] == [
        (hh.TASKS[0], 100000),
        (hh.TASKS[0], 100001),
    ]
    assert len(SMALL) == 12 and len({i.id for i in SMALL}) == 12
    board = instances("agentboard")
    assert len(board) == 134 and len({i.id for i in board}) == 134
    assert sum(i.task == "look_at_obj_in_light" for i in board) == 18
    train = instances("small", tasks=["pick_heat_then_place_in_recep"], first_seed=0)
    assert [(i.task, i.seed) for i in train] == [
        ("pick_heat_then_place_in_recep", 0),
        ("pick_heat_then_place_in_recep", 1),
    ]
    with pytest.raises(ValueError, match="agentboard"):
        instances("huge")
    with pytest.raises(ValueError, match="pick_and_place_simple"):
        instances("small", tasks=["make_coffee"])


def test_subgoals_per_task_type():
    params = {"object_target": "Apple", "parent_target": "CounterTop", "toggle_target": "DeskLamp"}
    names = {t: [g.name for g in subgoals(t, params)] for t in hh.TASKS}
    assert names["pick_and_place_simple"] == ["find", "take", "place"]
    assert names["pick_heat_then_place_in_recep"] == ["find", "take", "heat", "place"]
    assert names["pick_clean_then_place_in_recep"] == ["find", "take", "clean", "place"]
    assert names["look_at_obj_in_light"] == ["find", "take", "light"]
    assert names["pick_two_obj_and_place"] == ["find", "take", "place", "take second", "place second"]


def test_tracker_counts_distinct_objects_and_uses_n_plus_one():
    goals = subgoals(
        "pick_two_obj_and_place",
        {"object_target": "Apple", "parent_target": "CounterTop", "toggle_target": ""},
    )
    t = SubgoalTracker(goals)
    assert t.observe("You arrive at fridge 1. The fridge 1 is open. In it, you see a apple 2, and a egg 1.")
    t.observe("You pick up the apple 2 from the fridge 1.")
    t.observe("You move the apple 2 to the countertop 1.")
    t.observe("You pick up the apple 2 from the countertop 1.")  # the same apple again
    t.observe("You move the apple 2 to the countertop 1.")
    assert t.done == [True, True, True, False, False] and t.progress == pytest.approx(3 / 6)
    t.observe("You pick up the apple 1 from the sinkbasin 1.")
    t.observe("You move the apple 1 to the countertop 1.")
    assert all(t.done) and t.progress == pytest.approx(5 / 6)
    # Word boundaries: a pen is not a pencil, and the wrong receptacle is no placement.
    pen = SubgoalTracker(
        subgoals(
            "pick_and_place_simple", {"object_target": "Pen", "parent_target": "Desk", "toggle_target": ""}
        )
    )
    pen.observe("On the desk 1, you see a pencil 1.")
    pen.observe("You move the pen 1 to the dresser 1.")
    assert pen.reached == 0
    assert SubgoalTracker([Subgoal("x", r"foo (\d+)")]).progress == 0.0


def test_missing_backend_is_one_clear_error(monkeypatch):
    import refinelib.envs.base as base

    real = base.importlib.import_module

    def fake(name, *args):
        if name.startswith(("alfworld", "textworld", "fast_downward")):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args)

    monkeypatch.setattr(base.importlib, "import_module", fake)
    hh._engine_modules.cache_clear()
    try:
        with pytest.raises(BackendMissing, match="household"):
            hh.HouseholdEnv("pick_and_place_simple")
    finally:
        hh._engine_modules.cache_clear()
    with pytest.raises(ValueError, match="pick_two_obj_and_place"):
        hh.HouseholdEnv("no_such_task")


# ----- the generator -----------------------------------------------------------------------
@needs_engine
def test_generator_is_deterministic_and_alfred_shaped():
    from refinelib.envs.household_gen import generate

    a, b = (
        generate("pick_cool_then_place_in_recep", 100003),
        generate("pick_cool_then_place_in_recep", 100003),
    )
    assert a == b and a != generate("pick_cool_then_place_in_recep", 100004)
    obj, recep = a.pddl_params["object_target"], a.pddl_params["parent_target"]
    assert a.task_desc.split()[-1] == recep.lower() and obj.lower() in a.task_desc
    assert f"(canContain {recep}Type {obj}Type)" in a.pddl_problem
    assert "_bar_" in a.pddl_problem and "(isCool ?o)" in a.pddl_problem
    assert recep != "Fridge" and a.pddl_problem.count("FridgeType)") >= 1
    # Evaluation seeds use ALFRED's test floor plans (1-6, 201-206, ...), training seeds the others.
    for seed, test in ((100000, True), (100001, True), (7, False), (8, False)):
        plan = int(generate("pick_and_place_simple", seed).floor_plan.removeprefix("FloorPlan"))
        assert (plan % 100 <= 6) == test


# ----- the contract over the small suite ---------------------------------------------------
@needs_engine
@pytest.mark.parametrize("inst", SMALL, ids=[i.id for i in SMALL])
def test_oracle_solves(inst):
    from env_contract import assert_oracle_solves

    assert_oracle_solves(env_for(inst.task), inst.seed, max_steps=30)


@needs_engine
@pytest.mark.parametrize("task", hh.TASKS)
def test_subgoals_reached_in_order_on_the_oracle_run(task):
    env = env_for(task)
    start = env.reset(hh.EVAL_FIRST_SEED)
    assert start.goal.startswith("Your task is to: ") and start.goal.endswith(".")
    assert start.observation.startswith(
        "You are in the middle of a room. Looking quickly around you, you see"
    )
    history = []
    while not env.done:
        env.step(env.oracle_action())
        history.append(env.subgoals_done)
    for done in history:
        assert done == sorted(done, reverse=True), f"{task}: subgoals out of order: {history}"
    assert all(history[-1]) and history[-2].count(False) >= 1


@needs_engine
def test_invalid_actions_keep_state_and_get_alfworlds_feedback():
    from env_contract import assert_invalid_action_keeps_state

    env = env_for("pick_heat_then_place_in_recep")
    for bad in ("dance wildly", "take apple 99 from countertop 1", "put mug 1 in microwave 1", "go to"):
        assert_invalid_action_keeps_state(env, hh.EVAL_FIRST_SEED, bad)
        env.reset(hh.EVAL_FIRST_SEED)
        assert env.step(bad).observation == "Nothing happens."


@needs_engine
def test_actions_are_the_engines_commands():
    env = env_for("pick_clean_then_place_in_recep")
    start = env.reset(hh.EVAL_FIRST_SEED)
    assert {"look", "inventory"} <= set(start.valid_actions)
    assert all(a.startswith(("go to ", "look", "inventory", "help")) for a in start.valid_actions)
    step = env.step("Inventory.")  # case and a trailing period are forgiven
    assert step.valid and step.observation == "You are not carrying anything."
    first = env.oracle_action()
    step = env.step(first)
    assert step.valid and step.observation.startswith(f"You arrive at {first[6:]}.")


@needs_engine
def test_deterministic_and_partial_progress():
    from env_contract import assert_deterministic, partial_progress

    env = env_for("pick_two_obj_and_place")
    assert_deterministic(env, hh.EVAL_FIRST_SEED)
    assert 0.0 < partial_progress(env, hh.EVAL_FIRST_SEED) < 1.0


@needs_engine
@pytest.mark.parametrize("task", hh.TASKS)
def test_oracle_recovers_after_the_agent_wanders(task):
    env = env_for(task)
    env.reset(hh.EVAL_FIRST_SEED + 1)
    rng = random.Random(task)
    for _ in range(5):  # random valid actions, e.g. picking up the wrong object
        if env.step(rng.choice(env.valid_actions())).done:
            return
    for _ in range(30):
        step = env.step(env.oracle_action())
        assert step.valid
        if step.done:
            break
    assert env.success and env.progress == 1.0


@needs_engine
def test_games_are_cached_with_walkthrough_and_argv_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("REFINELIB_CACHE", str(tmp_path))
    argv = list(sys.argv)
    env = hh.HouseholdEnv("look_at_obj_in_light")
    env.reset(5)
    assert sys.argv == argv  # Fast Downward's translator rewrites it
    game_dir = tmp_path / "household" / hh.HouseholdEnv.version / "look_at_obj_in_light" / "5"
    game = json.loads((game_dir / "game.tw-pddl").read_text())
    traj = json.loads((game_dir / "traj_data.json").read_text())
    assert game["solvable"] and game["walkthrough"][0].startswith("go to ")
    assert "UNKNOWN GOAL" not in game["grammar"] and traj["task_desc"] in game["grammar"]
    assert traj["task_type"] == "look_at_obj_in_light" and traj["pddl_params"]["toggle_target"] == "DeskLamp"
    assert sorted(p.name for p in game_dir.iterdir()) == ["game.tw-pddl", "traj_data.json"]
