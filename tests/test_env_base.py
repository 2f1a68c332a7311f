"""The shared interface semantics, on a toy environment that exists only in this test."""

import pytest
from env_contract import (
    assert_deterministic,
    assert_invalid_action_keeps_state,
    assert_oracle_solves,
    partial_progress,
)

from refinelib.envs.base import Outcome, TextEnv
from refinelib.envs.rollout import play
from refinelib.schema import normalize_action


class Counter(TextEnv):
    """Count up to ``seed % 3 + 2`` with 'inc'; 'dec' undoes; progress = count / target."""

    family, version = "toy", "1"

    def _reset(self, seed):
        self.count, self.target = 0, seed % 3 + 2
        return f"reach {self.target}", "count is 0"

    def _valid_actions(self):
        return ["inc", "dec"] if self.count else ["inc"]

    def _step(self, action):
        if action not in self._valid_actions():
            return Outcome(f"You can't {action!r} here.", valid=False)
        self.count += 1 if action == "inc" else -1
        return Outcome(f"count is {self.count}", True, won=self.count == self.target,
                       progress=self.count / self.target)

    def oracle_action(self):
        return "inc"

    def snapshot(self):
        return self.count


def test_contract_holds_for_a_correct_env():
    env = Counter("count")
    for seed in range(3):
        assert_oracle_solves(env, seed)
        assert_deterministic(env, seed)
    assert_invalid_action_keeps_state(env, 0, "jump")
    assert 0 < partial_progress(env, 2) < 1


def test_progress_is_max_tracked_and_won_sets_one():
    env = Counter("count")
    env.reset(1)  # target 3
    assert env.step("inc").progress == pytest.approx(1 / 3)
    assert env.step("dec").progress == pytest.approx(1 / 3)  # going back does not lower it
    for _ in range(3):
        last = env.step("inc")
    assert last.done and last.success and last.progress == 1.0


def test_check_valid_actions_lists_sorted_actions_and_costs_a_step():
    env = Counter("count")
    env.reset(0)
    env.step("inc")
    step = env.step("  Check valid actions. ")
    assert step.valid and step.observation == "Valid actions: dec, inc."
    assert env.steps == 2 and env.count == 1


def test_step_before_reset_and_after_done_fail_clearly():
    env = Counter("count")
    with pytest.raises(RuntimeError, match="before reset"):
        env.step("inc")
    play(env, 0)
    with pytest.raises(RuntimeError, match="episode is over"):
        env.step("inc")


def test_normalize_action():
    assert normalize_action("  go   to  desk 1. ") == "go to desk 1"
    assert normalize_action("look") == "look"


def test_the_contract_catches_a_state_changing_invalid_action():
    class Leaky(Counter):
        def _step(self, action):
            if action not in self._valid_actions():
                self.count += 1  # a bug: the rejected action still changed the state
                return Outcome("no", valid=False)
            return super()._step(action)

    with pytest.raises(AssertionError, match="changed the state"):
        assert_invalid_action_keeps_state(Leaky("count"), 0, "jump")
