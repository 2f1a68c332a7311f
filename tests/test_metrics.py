"""Metrics: exact per-episode values, loop edge cases, bootstrap CIs, seeds, and the robustness table."""

import math

import numpy as np
import pandas as pd
import pytest

from refinelib.analysis.metrics import (
    KEY_COLUMNS,
    RATES,
    bootstrap_ci,
    episode_metrics,
    episode_table,
    loop_steps,
    robustness_summary,
    summarize,
    summarize_seeds,
)
from refinelib.eval.episodes import AgentTurn, Episode


def turn(action, valid=False, progress=0.0, observation="Nothing happens."):
    return AgentTurn(raw=f"Action: {action}", thought="", action=action, observation=observation, valid=valid,
                     progress=progress, format_error=action is None)


def episode(turns=(), success=False, progress=None, policy="p", suite="s", seed=0, perturbation="none",
            family="f", split="held_out"):
    progress = max((t.progress for t in turns), default=0.0) if progress is None else progress
    return Episode(policy, suite, f"{suite}/{seed}", seed, family, "task", split, "1", "goal", "obs",
                   perturbation=perturbation, turns=list(turns), success=success, progress=progress)


# ----- per episode ---------------------------------------------------------------------------------
def test_episode_metrics_exact_values():
    ep = episode([turn(None), turn("take a"), turn("go to b", True, 0.25, "You arrive at b."),
                  turn("take a", False, 0.25), turn("open c", True, 0.5, "You open c.")], progress=0.5)
    assert episode_metrics(ep) == {"success": False, "progress": 0.5, "grounding_accuracy": 0.4,
                                   "format_error_rate": 0.2, "loop": False, "steps": 5}


def test_an_episode_without_steps_has_nan_step_rates():
    m = episode_metrics(episode())
    assert m["steps"] == 0 and not m["loop"] and not m["success"]
    assert math.isnan(m["grounding_accuracy"]) and math.isnan(m["format_error_rate"])


def test_an_imported_turn_with_no_action_is_a_format_error_even_without_the_flag():
    imported = AgentTurn("gibberish", "", None, "Invalid format.", False, 0.0)  # format_error left False
    assert episode_metrics(episode([imported]))["format_error_rate"] == 1.0


def test_a_valid_flag_on_a_format_error_does_not_count_as_grounded():
    odd = AgentTurn("", "", None, "?", True, 0.0, format_error=True)
    assert episode_metrics(episode([odd]))["grounding_accuracy"] == 0.0


# ----- loops ---------------------------------------------------------------------------------------
A, B = "take tomato 1 from countertop 1", "go to countertop 1"


@pytest.mark.parametrize("turns, expected", [
    ([turn(A), turn(A)], []),                                              # 2 repeats: not a loop
    ([turn(A), turn(A), turn(A)], [0, 1, 2]),                              # the same failed action x3
    ([turn(B, True), turn(A), turn(A), turn(A), turn(B, True, 0, "x")], [1, 2, 3]),
    ([turn(A), turn(A + "."), turn(" " + A)], [0, 1, 2]),                  # compared as the env does
    ([turn(A), turn(None), turn(A), turn(A)], []),                         # a format error breaks the run
    ([turn(None), turn(None), turn(None)], []),                            # format errors are not loops
    ([turn("look", True, 0, "A room.")] * 3, [0, 1, 2]),                   # accepted, but nothing changes
    ([turn("go forward", True, 0, f"view {i}") for i in range(3)], []),    # new view each time: walking
    ([turn("go forward", True, p, "same") for p in (0.1, 0.2, 0.3)], []),  # progress rises: not a loop
    ([turn(A), turn(B), turn(A)], []),                                     # A-B-A is not a cycle
    ([turn(A), turn(B), turn(A), turn(B)], [0, 1, 2, 3]),                  # A-B-A-B is
    ([turn(A), turn(B), turn(A), turn(B), turn(A)], [0, 1, 2, 3, 4]),      # and it extends
    ([turn(A, True, 0, "a"), turn(B, True, 0, "b")] * 2, [0, 1, 2, 3]),    # accepted, same answers
    ([turn(A, True, 0, f"a{i}") if i % 2 == 0 else turn(B, True, 0, f"b{i}") for i in range(4)], []),
    ([turn(x, True, p, x) for x, p in zip([A, B, A, B], [0.1, 0.2, 0.3, 0.4], strict=True)], []),
    ([turn("x"), turn(A), turn(B), turn(A), turn(B), turn("y")], [1, 2, 3, 4]),
])
def test_loop_steps(turns, expected):
    assert loop_steps(turns) == expected
    assert episode_metrics(episode(turns))["loop"] == bool(expected)


# ----- tables and aggregates -----------------------------------------------------------------------
def test_episode_table_has_one_row_per_episode_with_keys_then_metrics():
    eps = [episode([turn(A)] * 3, policy="base", suite="pddl", seed=1),
           episode([turn(B, True, 1.0, "ok")], success=True, policy="tuned", suite="pddl", seed=2)]
    df = episode_table(eps)
    assert list(df.columns) == [*KEY_COLUMNS, *RATES]
    assert df["policy"].tolist() == ["base", "tuned"] and df["instance"].tolist() == ["pddl/1", "pddl/2"]
    assert df["loop"].tolist() == [True, False] and df["success"].tolist() == [False, True]
    assert df["steps"].tolist() == [3, 1] and df["grounding_accuracy"].tolist() == [0.0, 1.0]
    assert list(episode_table([]).columns) == [*KEY_COLUMNS, *RATES]


def synthetic_table(n, rate=0.4, seed=0, policy="p", suite="s"):
    """``n`` episodes with exactly round(rate * n) successes; progress = success/2 + noise."""
    rng = np.random.default_rng(seed)
    success = np.zeros(n, dtype=bool)
    success[: round(rate * n)] = True
    return pd.DataFrame({"policy": policy, "suite": suite, "seed": 0, "success": success,
                         "progress": np.clip(success * 0.5 + rng.uniform(0, 0.5, n), 0, 1),
                         "grounding_accuracy": 1.0, "format_error_rate": 0.0, "loop": False, "steps": 5})


def test_summarize_exact_rates_per_group():
    eps = [episode([turn(B, True, 1.0, "ok")], success=True, suite="a"),
           episode([turn(A)] * 3, suite="a"),
           episode([turn(None), turn(B, True, 0.5, "ok")], suite="b")]
    s = summarize(episode_table(eps), n_boot=200)
    assert s["suite"].tolist() == ["a", "b"] and s["n_episodes"].tolist() == [2, 1]
    a, b = s.iloc[0], s.iloc[1]
    assert (a.success_rate, a.progress_rate, a.loop_rate, a.steps) == (0.5, 0.5, 0.5, 2.0)
    assert (a.grounding_accuracy, a.format_error_rate) == (0.5, 0.0)
    assert (b.success_rate, b.progress_rate, b.format_error_rate) == (0.0, 0.5, 0.5)
    assert (b.success_rate_lo, b.success_rate_hi) == (0.0, 0.0)  # one episode: a point interval


def test_nan_step_rates_are_skipped_in_means():
    eps = [episode(), episode([turn(B, True, 0.5, "ok")])]
    assert summarize(episode_table(eps), n_boot=0)["grounding_accuracy"].item() == 1.0


def test_bootstrap_ci_contains_the_mean_is_seeded_and_narrows_with_more_episodes():
    small, large = synthetic_table(20), synthetic_table(400)
    s_small = summarize(small, n_boot=1000, seed=0).iloc[0]
    s_large = summarize(large, n_boot=1000, seed=0).iloc[0]
    for s in (s_small, s_large):
        for rate in ("success_rate", "progress_rate"):
            assert s[f"{rate}_lo"] < s[rate] < s[f"{rate}_hi"]
    width_small = s_small.success_rate_hi - s_small.success_rate_lo
    width_large = s_large.success_rate_hi - s_large.success_rate_lo
    assert width_large < width_small / 2  # ~ 1 / sqrt(n): 20x the episodes, ~4.5x narrower
    again = summarize(small, n_boot=1000, seed=0)
    pd.testing.assert_frame_equal(again, summarize(small, n_boot=1000, seed=0))
    other = summarize(small, n_boot=1000, seed=1).iloc[0]
    assert other.progress_rate_lo != s_small.progress_rate_lo


def test_a_groups_interval_does_not_depend_on_the_other_groups():
    one = synthetic_table(30, policy="a")
    both = pd.concat([synthetic_table(50, 0.9, seed=3, policy="0-first"), one])
    alone = summarize(one, n_boot=500).iloc[0]
    with_other = summarize(both, n_boot=500).set_index("policy").loc["a"]
    assert alone.success_rate_lo == with_other.success_rate_lo
    assert alone.progress_rate_hi == with_other.progress_rate_hi


def test_bootstrap_is_paired_across_columns_and_checks_its_input():
    values = synthetic_table(25)[["success", "progress"]].to_numpy(dtype=float)
    lo, hi = bootstrap_ci(values, n_boot=300, seed=4)
    for k in range(2):
        assert (lo[k], hi[k]) == pytest.approx(bootstrap_ci(values[:, k], n_boot=300, seed=4), abs=1e-12)
    with pytest.raises(ValueError):
        bootstrap_ci([])


def test_no_bootstrap_gives_nan_intervals():
    s = summarize(synthetic_table(10), n_boot=0).iloc[0]
    assert math.isnan(s.success_rate_lo) and math.isnan(s.progress_rate_hi)


def test_summarize_per_split_and_family_and_the_macro_average():
    eps = ([episode([turn(B, True, 1.0, "ok")], success=True, suite="hh_in", family="household",
                    split="held_in", seed=i) for i in range(3)]
           + [episode([turn(A)], suite="hh_out", family="household", seed=i) for i in range(3)]
           + [episode([turn(B, True, 1.0, "ok")], success=True, suite="pddl", family="pddl")])
    df = episode_table(eps)
    per_split = summarize(df, by=("policy", "split"), n_boot=100).set_index("split")
    assert per_split.loc["held_in", "success_rate"] == 1.0
    assert per_split.loc["held_out", "success_rate"] == 0.25  # 1 of 4 episodes
    macro = summarize(df, by=("policy", "split"), n_boot=100, macro="suite").set_index("split")
    assert macro.loc["held_out", "success_rate"] == 0.5  # (0/3 + 1/1) / 2: each suite weighs the same
    assert macro.loc["held_out", "success_rate_lo"] == macro.loc["held_out", "success_rate_hi"] == 0.5
    per_family = summarize(df, by=("policy", "family"), n_boot=0).set_index("family")
    assert per_family.loc["household", ["success_rate", "n_episodes"]].tolist() == [0.5, 6]


def test_summarize_seeds_mean_and_spread():
    df = pd.DataFrame({"policy": "p", "suite": "s", "seed": [0, 0, 1, 1, 2, 2],
                       "success": [1, 1, 1, 0, 0, 0], "progress": [1.0, 1.0, 0.5, 0.5, 0.0, 0.3]})
    s = summarize_seeds(df).iloc[0]
    assert s.n_seeds == 3 and s.success_rate_mean == pytest.approx(0.5)
    assert s.success_rate_std == pytest.approx(0.5)  # per seed 1, .5, 0: sample std
    assert s.progress_rate_mean == pytest.approx((1.0 + 0.5 + 0.15) / 3)
    assert summarize_seeds(df, ddof=0).iloc[0].success_rate_std == pytest.approx(np.std([1, 0.5, 0]))
    assert math.isnan(summarize_seeds(df[df.seed == 0]).iloc[0].success_rate_std)


# ----- robustness ----------------------------------------------------------------------------------
# method.md §15.3 (the paper's Table 3, S / P in %), and the mean and population std it recomputes.
TABLE3 = {
    "LLaMA3-8B-Instruct": ([22.4, 23.1, 24.6, 17.9, 17.9, 22.4], [46.1, 45.6, 45.0, 45.1, 45.1, 46.1]),
    "AgentGym": ([61.9, 29.1, 49.2, 32.8, 38.8, 5.9], [76.9, 59.2, 65.3, 53.9, 48.2, 28.7]),
    "Agent-FLAN": ([67.2, 21.6, 51.4, 27.6, 52.2, 1.5], [79.7, 58.8, 71.3, 53.5, 67.9, 19.7]),
    "AgentRefine": ([44.8, 50.0, 51.5, 54.5, 45.5, 44.8], [63.8, 66.5, 66.7, 70.0, 60.6, 63.8]),
}
AVG_AND_POPULATION_STD = {  # (success mean, progress mean, success std, progress std)
    "LLaMA3-8B-Instruct": (21.4, 45.5, 2.57, 0.47), "AgentGym": (36.3, 55.4, 17.40, 14.95),
    "Agent-FLAN": (36.9, 58.5, 22.12, 19.29), "AgentRefine": (48.5, 65.2, 3.73, 2.95),
}
SETTINGS = ["none", "P1", "P2", "P3", "P4", "P5"]


def table3():
    return pd.DataFrame([{"policy": policy, "perturbation": setting, "success": s[i], "progress": p[i]}
                         for policy, (s, p) in TABLE3.items() for i, setting in enumerate(SETTINGS)])


def test_robustness_reproduces_the_papers_average_and_our_population_std():
    r = robustness_summary(table3())
    assert list(r.columns) == [*SETTINGS, "mean", "std", "delta"]
    for policy, (s_mean, p_mean, s_std, p_std) in AVG_AND_POPULATION_STD.items():
        assert round(r.loc[(policy, "success"), "mean"], 1) == s_mean
        assert round(r.loc[(policy, "progress"), "mean"], 1) == p_mean
        assert round(r.loc[(policy, "success"), "std"], 2) == s_std
        assert round(r.loc[(policy, "progress"), "std"], 2) == p_std
    values = TABLE3["AgentRefine"][0]  # by hand: sqrt(mean((x - mean)^2))
    mean = sum(values) / 6
    by_hand = math.sqrt(sum((x - mean) ** 2 for x in values) / 6)
    assert r.loc[("AgentRefine", "success"), "std"] == pytest.approx(by_hand)
    assert round(r.loc[("AgentGym", "success"), "delta"], 1) == -25.6  # the project page's "drops 25.6"


def test_robustness_from_episodes_and_a_missing_setting_is_nan():
    eps = [episode([turn(B, True, 1.0, "ok")], success=True, perturbation=rule, seed=i)
           for rule in ("none", "R1") for i in range(2)]
    eps += [episode([turn(A)], perturbation="R1", seed=2), episode([turn(A)], policy="q")]
    r = robustness_summary(episode_table(eps))
    assert r.loc[("p", "success"), ["none", "R1", "mean", "std", "delta"]].tolist() == pytest.approx(
        [1.0, 2 / 3, 5 / 6, 1 / 6, -1 / 6])
    assert r.loc[("q", "success"), "none"] == 0.0 and math.isnan(r.loc[("q", "success"), "mean"])
    with pytest.raises(ValueError, match="original"):
        robustness_summary(episode_table(eps), original="clean")
