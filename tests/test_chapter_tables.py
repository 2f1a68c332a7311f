"""The chapters' tables, computed in the library (refinelib.analysis.tables / taxonomy / reference / sources,
refinelib.envs.rollout): the same numbers the chapters computed in their cells."""

from __future__ import annotations

import pandas as pd
import pytest

from refinelib.analysis import reference, sources, tables, taxonomy
from refinelib.analysis.taxonomy import CATEGORIES
from refinelib.envs import rollout


def episodes_table() -> pd.DataFrame:
    rows = [("a", "household_held_in", "held_in", 1, 1.0), ("a", "household_held_in", "held_in", 0, 0.5),
            ("a", "pddl", "held_out", 0, 0.0), ("a", "babyai", "held_out", 1, 1.0),
            ("b", "household_held_in", "held_in", 0, 0.0), ("b", "pddl", "held_out", 1, 1.0)]
    return pd.DataFrame([{"policy": p, "suite": s, "split": sp, "success": bool(x), "progress": pr,
                          "perturbation": "none", "instance": f"{s}/{i}", "seed": 0, "sample": 0}
                         for i, (p, s, sp, x, pr) in enumerate(rows)])


def test_cell_rates_and_gaps_macro_average_the_suites():
    rates = tables.cell_rates(tables.with_cells(episodes_table()), n_boot=0)
    assert list(rates.columns[:3]) == ["policy", "cells", "n_episodes"]
    row = rates.set_index(["policy", "cells"]).loc[("a", "held-out suites")]
    assert row.success_rate == pytest.approx(50.0) and row.n_episodes == 2  # pddl 0, babyai 100
    gaps = tables.cell_gaps(rates, order=["b", "a"])
    assert list(gaps.index) == ["b", "a"]
    assert gaps.loc["a", "success_rate_gap"] == 0.0 and gaps.loc["b", "success_rate_gap"] == -100.0


def test_model_cells_follow_the_main_table():
    df = episodes_table()
    table = tables.main_table(df, memorising=["a"], n_boot=0)
    held = tables.with_model_cells(df, table)
    assert set(held[held.policy == "a"].cells) == {"held-in", "held-out"}
    assert set(held[held.policy == "b"].cells) == {"held-out"}
    shown = tables.with_intervals(table)
    assert list(shown.columns) == ["policy", "suite", "held_in", "n_episodes", "success", "progress"]
    assert shown.success.str.fullmatch(r"\d+ \[nan, nan\]").all()  # no bootstrap here


def test_robustness_tables_and_the_rule_table():
    df = pd.DataFrame({"policy": ["a", "a", "b", "b"], "suite": "household_held_in",
                       "setting": ["original", "R1"] * 2, "success": [True, False, True, True],
                       "progress": [1.0, 0.5, 1.0, 1.0]})
    by_suite = tables.robustness_tables(df, ["household_held_in"], order=["b", "a"])
    table = by_suite["household_held_in"]
    assert list(table.index) == [("b", "success"), ("b", "progress"), ("a", "success"), ("a", "progress")]
    assert table.loc[("a", "success"), "delta"] == pytest.approx(-50.0)
    rules = tables.rule_table({"household_held_in": ["R1", "R2"]})
    assert list(rules.rule) == ["R1", "R2"] and rules.rewrite.str.len().gt(0).all()
    with pytest.raises(ValueError, match="unknown suite"):
        tables.rule_table({"nowhere": ["R1"]})


def test_validation_change_first_and_last_validation_loss():
    history = pd.DataFrame({"model": ["m"] * 3, "split": ["validation", "train", "validation"],
                            "step": [0, 1, 2], "loss": [2.0, 1.8, 1.5]})
    falls = tables.validation_change(history)
    assert falls.loc["m"].tolist() == [2.0, 1.5, -0.5]


def test_ablation_and_scaling_tables():
    df = pd.DataFrame({"policy": ["refine", "refine@2", "base"], "suite": "pddl",
                       "success": [True, False, False], "progress": [1.0, 0.5, 0.0],
                       "grounding_accuracy": 1.0, "format_error_rate": 0.0})
    losses = {name: {"loss": 1.0, "refinement_turn_loss": 2.0, "tokens": 3}
              for name in ("refine", "refine@2", "base")}
    table = tables.ablation_table(df, losses, order=["base", "refine", "refine@2"], n_boot=0)
    assert list(table.index) == ["base", "refine", "refine@2"]
    assert list(table["paper row"]) == ["(untuned)", "AgentRefine", "AgentRefine, data scaling"]
    assert table.loc["refine", "success_rate"] == 100.0
    scaling = tables.scaling_table(table, {2: "refine@2", 6: "refine"})
    assert list(scaling.columns) == ["trajectories", "success_rate", "progress_rate", "loss",
                                     "refinement_turn_loss"]
    assert scaling.trajectories.tolist() == [2, 6]


def test_share_table_in_percent():
    summary = pd.DataFrame([{"policy": "p", "suite": "s", "n_steps": 4, "repeats_mistake_rate": 0.5,
                             **{f"{c}_rate": 0.25 if c in CATEGORIES[:4] else 0.0 for c in CATEGORIES}}])
    shares = taxonomy.share_table(summary)
    assert shares.loc[("p", "s"), "format_error_rate"] == 25.0
    assert list(shares.columns[-2:]) == ["n_steps", "repeats_mistake_rate"]


def test_the_papers_tables_as_the_chapters_show_them():
    paper = reference.paper_robustness_table(recomputed_std=True)
    settings = ["original", "P1", "P2", "P3", "P4", "P5"]
    assert (paper["population std (recomputed)"] == paper[settings].std(axis=1, ddof=0).round(2)).all()
    assert "population std (recomputed)" not in reference.paper_robustness_table()
    assert paper.attrs["source"] == reference.PAPER_SOURCE_ROBUSTNESS
    cells = reference.paper_best_of_n_cells()
    assert any(i.startswith("Δ ") for i in cells.index) and any(i.endswith(" greedy") for i in cells.index)
    misprints = reference.misprint_sentences().splitlines()
    assert len(misprints) == 1 and misprints[0].startswith("Printed Δ that is not BoN − greedy")


class Sample:
    def __init__(self, sid, theme, family=None):
        self.id, self.theme, self.script = sid, theme, {"Environment": f"a {theme} room", "Goal": "tidy"}
        self._meta = {"theme": theme, **({"family": family} if family else {})}

    def meta(self):
        return self._meta


def test_sources_variety_and_leakage():
    meta = {"1": {"templates": ["go to {x}", "take {y}"], "error_kinds": ["logic_error"], "theme": "t"},
            "2": {"templates": ["go to {x}"], "error_kinds": [], "theme": "u"}}
    variety = sources.synthesis_variety([{}, {}], meta)["value"]
    assert variety.tolist() == [2, 2, 2, 2, 0.5]
    samples = [Sample("1", "kitchen"), Sample("2", ""), Sample("3", "kitchen")]
    assert list(sources.theme_texts(samples)) == ["kitchen", "llm"]
    themes = pd.DataFrame(0.1, index=["kitchen", "llm", sources.EXPERT],
                          columns=["household_held_in", "pddl"])
    expert_meta = {"e": {"theme": "household/pick_and_place_simple"}}
    leaks = sources.leakage(samples, expert_meta, ["household_held_in", "pddl"], themes)
    assert sources.touched_suites(leaks) == {"kitchen": [], "llm": [], sources.EXPERT: ["household_held_in"]}


def test_the_oracle_survey_tables():
    from refinelib.envs import suite

    assert list(rollout.suite_table([suite("pddl")]).columns) == [
        "suite", "family", "split", "version", "small", "agentboard", "tasks", "description"]
    episodes = pd.DataFrame({"suite": ["s", "s"], "split": "held_out", "instance": ["1", "2"],
                             "steps": [3, 5], "success": [True, True], "progress": [1.0, 1.0],
                             "seconds": [0.1, 0.3]})
    summary = rollout.oracle_summary(episodes)
    assert summary.iloc[0].to_dict() == {"suite": "s", "split": "held_out", "episodes": 2,
                                         "success_rate": 1.0, "progress_rate": 1.0, "mean_steps": 4.0,
                                         "max_steps": 5, "seconds_per_episode": 0.2}


def test_policy_table_has_one_row_per_mask_policy():
    from refinelib.synth.smoke import grounded_records
    from refinelib.tune import maskview, models
    from refinelib.tune.masking import POLICIES

    table = maskview.policy_table(grounded_records(1)[0], models.load_tokenizer(), max_length=2048)
    assert table.policy.tolist() == list(POLICIES)
    supervised = table.set_index("policy")["supervised tokens"]
    assert supervised["erroneous_loss"] > supervised["refine"] > supervised["no_refinement_loss"]


def test_thought_map_samples_per_model_and_its_spread():
    from refinelib.analysis import diversity

    thoughts = pd.DataFrame({"policy": ["a"] * 3 + ["b"] * 2, "family": "pddl",
                             "thought": ["go to the door", "open the box", "take the key", "look", "wait"]})
    sample = diversity.thought_map(thoughts, max_thoughts=2, seed=0)
    assert sample.groupby("policy").size().tolist() == [2, 2] and {"x", "y"} <= set(sample.columns)
    assert sample.equals(diversity.thought_map(thoughts, max_thoughts=2, seed=0))  # seeded
    spread = diversity.map_spread(sample)
    assert list(spread.columns) == ["t-SNE spread", "points", "distinct thoughts"]
    assert spread["points"].tolist() == [2, 2]
