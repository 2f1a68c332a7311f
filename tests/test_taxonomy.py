"""Error taxonomy: one category per step (exhaustive, exclusive, by precedence), per-episode labels, rates."""

import random

import pytest

from refinelib.analysis.metrics import KEY_COLUMNS, episode_metrics, loop_steps
from refinelib.analysis.taxonomy import (
    CATEGORIES,
    FAILURE_MODES,
    classify_steps,
    taxonomy_summary,
    taxonomy_table,
)
from refinelib.eval.episodes import AgentTurn, Episode


def turn(action, valid=False, progress=0.0, observation="Nothing happens."):
    return AgentTurn(raw=f"Action: {action}", thought="", action=action, observation=observation, valid=valid,
                     progress=progress, format_error=action is None)


def episode(turns=(), success=False, policy="p", suite="s", seed=0):
    progress = max((t.progress for t in turns), default=0.0)
    return Episode(policy, suite, f"{suite}/{seed}", seed, "f", "task", "held_out", "1", "goal", "obs",
                   turns=list(turns), success=success, progress=progress)


# Every category once or more, with the reason for each label.
CRAFTED = [
    (turn(None), "format_error"),                                # 0 no Action: line
    (turn("take a"), "invalid_action"),                          # 1 rejected, first time
    (turn("go to b", True, 0.25, "At b."), "ok"),                # 2 progress rises
    (turn("take a", False, 0.25), "repeated_failure"),           # 3 rejected before (step 1)
    (turn("look", True, 0.25, "A room."), "ok"),                 # 4 progress rises later (step 5)
    (turn("open c", True, 0.5, "c is open."), "ok"),             # 5 the last rise
    (turn("inventory", True, 0.5, "Empty."), "no_progress"),     # 6 nothing rises after this
    (turn("put a in c", False, 0.5), "loop"),                    # 7-9 the same failed action x3
    (turn("put a in c", False, 0.5), "loop"),
    (turn("put a in c", False, 0.5), "loop"),
    (turn("go to d", True, 0.5, "At d."), "loop"),               # 10-13 A-B-A-B, same answers
    (turn("go to e", True, 0.5, "At e."), "loop"),
    (turn("go to d", True, 0.5, "At d."), "loop"),
    (turn("go to e", True, 0.5, "At e."), "loop"),
    (turn("take a", False, 0.5), "repeated_failure"),            # 14 rejected at steps 1 and 3
]


def test_crafted_episode_gets_exactly_one_expected_label_per_step_and_uses_every_category():
    ep = episode([t for t, _ in CRAFTED])
    labels = classify_steps(ep)
    assert labels == [label for _, label in CRAFTED]
    assert set(labels) == set(CATEGORIES)
    row = taxonomy_table([ep]).iloc[0]
    assert sum(row[f"n_{c}"] for c in CATEGORIES) == row.steps == len(CRAFTED)
    assert (row.n_loop, row.n_ok, row.n_repeated_failure) == (7, 3, 2)
    assert row.repeats_mistake and row.failure_mode == "loop"


def random_episode(rng):
    progress, turns = 0.0, []
    for _ in range(rng.randint(0, 12)):
        action = rng.choice([None, "a", "b", "c", "a."])
        valid = action is not None and rng.random() < 0.5
        if valid and rng.random() < 0.3:
            progress = min(1.0, progress + 0.25)
        turns.append(turn(action, valid, progress, rng.choice(["x", "y"])))
    return episode(turns, success=bool(turns) and progress == 1.0)


def test_taxonomy_is_exhaustive_and_exclusive_on_random_episodes():
    rng = random.Random(0)
    for _ in range(500):
        ep = random_episode(rng)
        labels = classify_steps(ep)
        assert len(labels) == len(ep.turns) and set(labels) <= set(CATEGORIES)
        looped = set(loop_steps(ep.turns))
        for t, (step, label) in enumerate(zip(ep.turns, labels, strict=True)):
            # the first rule that applies, in precedence order, and only that one
            if step.action is None:
                assert label == "format_error"
            elif t in looped:
                assert label == "loop"
            elif not step.valid:
                assert label in ("repeated_failure", "invalid_action")
            else:
                assert label in ("no_progress", "ok")
        assert episode_metrics(ep)["loop"] == ("loop" in labels)


def test_a_solved_episodes_last_step_counts_as_progress_and_a_flat_failed_one_wasted_every_step():
    steps = [turn("go", True, 0.0, "x"), turn("take", True, 0.0, "y")]  # an imported log without progress
    assert classify_steps(episode(steps, success=True)) == ["ok", "ok"]
    assert classify_steps(episode(steps, success=False)) == ["no_progress", "no_progress"]


def test_repeated_failure_is_any_earlier_rejection_of_the_same_action_not_only_the_last():
    ep = episode([turn("a"), turn("b"), turn("a"), turn("c", True, 0.5, "ok"), turn("b.")])
    assert classify_steps(ep) == ["invalid_action", "invalid_action", "repeated_failure", "ok",
                                  "repeated_failure"]
    assert classify_steps(episode([turn("a"), turn("a", True, 0.5, "ok")]))[1] == "ok"  # it worked later
    table = taxonomy_table([ep, episode([turn("a"), turn("b")])])
    assert table["repeats_mistake"].tolist() == [True, False]


def test_loop_takes_precedence_over_repeated_failure_and_format_errors_break_loops():
    assert classify_steps(episode([turn("a")] * 3)) == ["loop"] * 3
    assert classify_steps(episode([turn("a"), turn("a")])) == ["invalid_action", "repeated_failure"]
    assert classify_steps(episode([turn("a"), turn(None), turn("a")])) == [
        "invalid_action", "format_error", "repeated_failure"]


@pytest.mark.parametrize("turns, success, mode", [
    ([turn("go", True, 1.0, "won")], True, "success"),
    ([], False, "no_error"),                                            # gave up at once
    ([turn("go", True, 0.5, "x")], False, "no_error"),                  # still progressing when cut
    ([turn(None), turn("a")], False, "format_error"),                   # a tie: precedence decides
    ([turn(None), turn("a"), turn("b")], False, "invalid_action"),      # the most frequent wins
    ([turn("a")] * 3 + [turn(None)] * 2, False, "loop"),
])
def test_failure_mode(turns, success, mode):
    assert taxonomy_table([episode(turns, success)]).iloc[0].failure_mode == mode


def test_taxonomy_table_columns_and_an_empty_log():
    columns = [*KEY_COLUMNS, "success", "steps", *(f"n_{c}" for c in CATEGORIES), "repeats_mistake",
               "failure_mode"]
    assert list(taxonomy_table([]).columns) == columns
    assert list(taxonomy_table([episode([turn("a")])]).columns) == columns


def test_summary_counts_and_rates_per_policy_and_suite():
    eps = [episode([t for t, _ in CRAFTED], policy="base"),
           episode([turn("a")] * 4 + [turn(None)], policy="base", seed=1),
           episode([turn("go", True, 1.0, "won")], success=True, policy="tuned")]
    s = taxonomy_summary(taxonomy_table(eps)).set_index("policy")
    base, tuned = s.loc["base"], s.loc["tuned"]
    assert (base.n_episodes, base.n_steps, base.n_loop, base.n_format_error) == (2, 20, 11, 2)
    assert base.loop_rate == pytest.approx(11 / 20) and base.repeats_mistake_rate == 1.0
    assert (base.mode_loop_rate, base.mode_success_rate) == (1.0, 0.0)
    assert (tuned.ok_rate, tuned.mode_success_rate, tuned.repeats_mistake_rate) == (1.0, 1.0, 0.0)
    for row in (base, tuned):
        assert sum(row[f"{c}_rate"] for c in CATEGORIES) == pytest.approx(1.0)
        assert sum(row[f"mode_{m}_rate"] for m in FAILURE_MODES) == pytest.approx(1.0)
