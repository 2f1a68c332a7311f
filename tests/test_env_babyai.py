"""BabyAI-text: the contract over the small suite, the describer, action expansion, progress, oracle."""

from __future__ import annotations

import random

import pytest

pytest.importorskip("minigrid")

from env_contract import (  # noqa: E402
    assert_deterministic,
    assert_invalid_action_keeps_state,
    assert_oracle_solves,
    partial_progress,
)
from minigrid.core.world_object import Ball, Door, Key, Wall  # noqa: E402

from refinelib.envs import babyai_text as text  # noqa: E402
from refinelib.envs.babyai import (  # noqa: E402
    SMALL_TASKS,
    TASKS,
    BabyAIEnv,
    env_id,
    instances,
    leaves,
)
from refinelib.envs.base import BackendMissing  # noqa: E402
from refinelib.envs.rollout import play  # noqa: E402

SMALL = instances("small")
ENVS: dict[str, BabyAIEnv] = {}


def env_for(task: str) -> BabyAIEnv:
    """One environment per task for the whole module (making one costs a gymnasium.make)."""
    if task not in ENVS:
        ENVS[task] = BabyAIEnv(task)
    return ENVS[task]


# ----- instance lists ----------------------------------------------------------------------
def test_instance_lists():
    assert len(TASKS) == 28 and len(set(TASKS)) == 28
    assert [(i.task, i.seed) for i in SMALL] == [(t, 1234) for t in SMALL_TASKS]
    board = instances("agentboard")
    assert len(board) == 112 and len({i.id for i in board}) == 112
    assert {i.seed for i in board} == {1234, 1235, 1236, 1237}
    assert [i.seed for i in instances("small", tasks=["Pickup"], first_seed=7)] == [7]
    with pytest.raises(ValueError, match="small"):
        instances("huge")
    with pytest.raises(ValueError, match="GoToRedBall"):
        instances("small", tasks=["NoSuchLevel"])
    with pytest.raises(ValueError):
        BabyAIEnv("NoSuchLevel")


def test_every_task_is_a_registered_level():
    import gymnasium

    for task in TASKS:
        assert gymnasium.spec(env_id(task)).id == env_id(task)


# ----- the contract over the small suite ------------------------------------------------------
@pytest.mark.parametrize("inst", SMALL, ids=lambda i: i.id)
def test_oracle_solves_small_suite(inst):
    env = env_for(inst.task)
    assert_oracle_solves(env, inst.seed, max_steps=80)


BAD_ACTIONS = ["dance wildly", "go to purple ball 9", "pick up the key", "toggle and go through"]


@pytest.mark.parametrize("bad", BAD_ACTIONS)
def test_invalid_action_keeps_state(bad):
    assert_invalid_action_keeps_state(env_for("GoToSeqS5R2"), 1234, bad)


def test_blocked_move_is_rejected_with_the_reason():
    env = env_for("GoToRedBallGrey")
    blank_room(env, agent=(3, 1))  # facing north, the wall right ahead
    before = env.snapshot()
    step = env.step("move forward")
    assert not step.valid and step.observation == "You cannot move forward: there is a wall in front of you."
    assert env.snapshot() == before


@pytest.mark.parametrize("task", ["GoToSeqS5R2", "BlockedUnlockPickup"])
def test_deterministic(task):
    assert_deterministic(env_for(task), 1234)


def test_partial_progress():
    # "go to X and go to Y": half the oracle's plan solves the first leaf
    assert 0.0 < partial_progress(env_for("GoToSeqS5R2"), 1234) < 1.0


# ----- the describer ---------------------------------------------------------------------------
def blank_room(env: BabyAIEnv, agent=(3, 6), direction=3) -> object:
    """Empty the 8x8 room of GoToRedBallGrey and place the agent; the whole room counts as seen."""
    env.reset(1234)
    u = env._u
    for x in range(1, u.width - 1):
        for y in range(1, u.height - 1):
            u.grid.set(x, y, None)
    u.agent_pos, u.agent_dir, u.carrying = agent, direction, None
    u.instrs.verify = lambda action: "continue"  # the mission's objects are gone
    env._seen[:] = True
    env._view = None  # the cache is keyed on minigrid's step count, which did not move
    return u


def test_describer_numbers_by_distance_and_says_where():
    env = env_for("GoToRedBallGrey")
    u = blank_room(env)  # at (3, 6) facing up (north)
    u.grid.set(3, 4, Ball("red"))  # 2 ahead
    u.grid.set(5, 3, Ball("red"))  # 3 ahead, 2 right
    u.grid.set(1, 6, Key("blue"))  # 2 left
    cells = text.visible_cells(u)
    things = text.visible_things(u, cells)
    assert [(t.label, t.forward, t.right) for t in things] == [
        ("red ball 1", 2, 0), ("blue key 1", 0, -2), ("red ball 2", 3, 2)]
    obs = text.describe(u, things, cells)
    assert obs == (
        "In front of you in this room, you can see several objects: "
        "There is a red ball 1 right in front of you 2 steps away. "
        "There is a blue key 1 2 steps to your left. "
        "There is a red ball 2 3 steps in front of you and 2 steps to your right. "
        "The room has walls around you. You are not carrying anything.")
    u.carrying = Key("green")
    u.grid.set(3, 4, None)
    cells = text.visible_cells(u)
    obs = text.describe(u, text.visible_things(u, cells), cells)
    assert "You are facing a wall 6 steps away." in obs
    assert obs.endswith("You are carrying a green key.")


def test_describer_without_objects():
    env = env_for("GoToRedBallGrey")
    u = blank_room(env, agent=(3, 2))
    cells = text.visible_cells(u)
    assert text.describe(u, text.visible_things(u, cells), cells) == (
        "You cannot see any objects within sight. The room has walls around you. "
        "You are facing a wall 2 steps away. You are not carrying anything.")


# ----- expansion into primitive actions ----------------------------------------------------------
def test_go_to_and_pickup_expand_to_primitives():
    env = env_for("GoToRedBallGrey")
    u = blank_room(env)
    u.grid.set(3, 4, Ball("red"))
    u.grid.set(5, 3, Ball("red"))
    actions, _ = env._look()[3:]
    assert actions["go to red ball 1"] == [text.FORWARD]
    assert actions["pickup red ball 2"][-1] == text.PICKUP
    assert {"turn left", "turn right", "move forward", "toggle", "drop"} & set(actions) == {
        "turn left", "turn right", "move forward"}
    step = env.step("pickup red ball 2")
    assert step.valid and u.carrying is not None and u.carrying.color == "red"
    assert step.observation.endswith("You are carrying a red ball.")
    assert "pickup red ball 1" not in env.valid_actions()  # hands are full
    step = env.step("pickup red ball 1")
    assert not step.valid and "already carrying a red ball" in step.observation
    assert not env.step("go to blue key 2").valid
    assert env.step("go to blue key 2").observation == "There is no blue key 2 in sight."
    assert env.step("drop").valid and u.carrying is None


def test_toggle_and_go_through_a_locked_door():
    env = env_for("GoToRedBallGrey")
    u = blank_room(env, agent=(2, 3), direction=0)  # facing east
    for y in range(1, u.height - 1):
        u.grid.set(4, y, Wall())
    u.grid.set(4, 3, Door("yellow", is_locked=True))
    env._view = None
    assert "toggle and go through yellow locked door 1" not in env.valid_actions()
    step = env.step("toggle and go through yellow locked door 1")
    assert not step.valid and "not carrying the yellow key" in step.observation
    step = env.step("go through yellow locked door 1")
    assert not step.valid and "it is locked" in step.observation
    u.carrying = Key("yellow")
    env._view = None
    actions = env._look()[3]
    assert actions["toggle and go through yellow locked door 1"] == [text.FORWARD, text.TOGGLE, text.FORWARD]
    assert env.step("toggle and go through yellow locked door 1").valid
    assert tuple(u.agent_pos) == (4, 3) and u.grid.get(4, 3).is_open
    # back out, then through the (now open) door again
    env.step("turn left"), env.step("turn left"), env.step("move forward")
    env.step("turn left"), env.step("turn left")
    assert "go through yellow open door 1" in env.valid_actions()
    env.step("go through yellow open door 1")
    assert tuple(u.agent_pos) == (4, 3)


# ----- progress --------------------------------------------------------------------------------
def test_progress_counts_solved_instruction_leaves():
    env = env_for("GoToSeqS5R2")
    env.reset(1234)
    assert type(env._u.instrs).__name__ == "AndInstr" and len(leaves(env._u.instrs)) == 2
    record = play(env, 1234, max_steps=80)
    progress = [step.progress for _, step in record.turns]
    assert progress[0] == 0.0 and progress[-1] == 1.0 and record.success
    halfway = [i for i, p in enumerate(progress) if p == 0.5]
    assert halfway and not record.turns[halfway[0]][1].done  # the first leaf, then the second


# ----- the oracle ------------------------------------------------------------------------------
def test_oracle_answer_is_stable_and_free():
    env = env_for("BlockedUnlockPickup")
    env.reset(1234)
    first, before = env.oracle_action(), env.snapshot()
    assert env.oracle_action() == first and env.snapshot() == before
    env.step("dance wildly")
    assert env.oracle_action() == first


@pytest.mark.parametrize("inst", SMALL, ids=lambda i: i.id)
def test_oracle_recovers_after_deviations(inst):
    # go-to, turns and moves only: they cannot fail a strict level, so the oracle must still win
    env, rng = env_for(inst.task), random.Random(inst.id)
    env.reset(inst.seed)
    deviations = 0
    for _ in range(120):
        if env.done:
            break
        safe = [a for a in env.valid_actions() if a.startswith(("turn", "move", "go to"))]
        if deviations < 3 and rng.random() < 0.3:
            action, deviations = rng.choice(safe), deviations + 1
        else:
            action = env.oracle_action()
        assert action is not None, f"{inst.id}: the oracle gave up"
        assert env.step(action).valid
    assert env.success


def test_oracle_recovers_after_the_agent_closes_a_door():
    # the bot trusts its map: things seen through a door the agent then closed used to stump it
    env = env_for("GoToSeqS5R2")
    env.reset(1234)
    closed = False
    for _ in range(80):
        if env.done:
            break
        action = env.oracle_action()
        env.step(action)
        if action == "toggle" and not closed and not env.done:
            assert env.step("toggle").valid  # close it again
            closed = True
    assert closed and env.success


def test_oracle_keeps_one_bot_while_followed(monkeypatch):
    made = []
    fresh_bot = BabyAIEnv._fresh_bot
    monkeypatch.setattr(BabyAIEnv, "_fresh_bot", lambda self, *a: made.append(a) or fresh_bot(self, *a))
    record = play(BabyAIEnv("UnlockPickupDist"), 1234, max_steps=80)
    assert record.success and made == [(False, False)]  # built once, then advanced step by step


# ----- backend ---------------------------------------------------------------------------------
def test_missing_backend_gives_one_clear_error(monkeypatch):
    import refinelib.envs.base as base

    def no_import(name, *args, **kwargs):
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(base.importlib, "import_module", no_import)
    with pytest.raises(BackendMissing, match="minigrid"):
        BabyAIEnv("GoToRedBall").reset(1234)
