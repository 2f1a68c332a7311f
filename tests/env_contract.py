"""Checks every environment family must pass; each family's test module calls them."""

from __future__ import annotations

from refinelib.envs.base import CHECK_VALID_ACTIONS, TextEnv
from refinelib.envs.rollout import play


def assert_oracle_solves(env: TextEnv, seed: int, max_steps: int = 200) -> None:
    record = play(env, seed, max_steps=max_steps)
    assert record.success, f"{env!r}: oracle did not win\n{record.render(200)}"
    assert record.progress == 1.0
    assert record.invalid_steps == 0, f"{env!r}: oracle took an invalid action\n{record.render(200)}"


def assert_invalid_action_keeps_state(env: TextEnv, seed: int, bad_action: str) -> None:
    start = env.reset(seed)
    assert list(start.valid_actions) == sorted(start.valid_actions)
    assert bad_action not in start.valid_actions
    before = env.snapshot()
    step = env.step(bad_action)
    assert not step.valid, f"{env!r}: {bad_action!r} was accepted"
    assert step.observation.strip(), "an invalid action must get the environment's feedback"
    assert not step.done and step.progress == 0.0
    assert env.snapshot() == before, f"{env!r}: the invalid action {bad_action!r} changed the state"
    listing = env.step(CHECK_VALID_ACTIONS)
    assert listing.valid and all(a in listing.observation for a in start.valid_actions)
    assert env.snapshot() == before


def assert_deterministic(env: TextEnv, seed: int, max_steps: int = 200) -> None:
    first = play(env, seed, max_steps=max_steps)
    second = play(env, seed, max_steps=max_steps)
    assert first.start == second.start
    assert first.turns == second.turns


def partial_progress(env: TextEnv, seed: int) -> float:
    """Progress of a scripted bad policy: the oracle for half its plan, then a bad action, then stop."""
    plan = play(env, seed, max_steps=500)
    n = max(1, len(plan.turns) // 2)
    actions = [a for a, _ in plan.turns[:n]] + ["dance wildly"]
    it = iter(actions)
    return play(env, seed, policy=lambda _e: next(it, None), max_steps=len(actions)).progress
