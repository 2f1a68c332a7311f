"""The book's figures: each draws what it should from a tiny table (bars, lines, labels; not pixels), and
figures go under the artifacts folder that REFINELIB_ARTIFACTS names."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from refinelib.analysis.taxonomy import CATEGORIES  # noqa: E402
from refinelib.report import plots  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def bars(ax) -> list[Rectangle]:
    """The bars of a bar chart (the patches with a size; the background is not among them)."""
    return [p for p in ax.patches if isinstance(p, Rectangle) and (p.get_width() or p.get_height())]


def test_save_honours_refinelib_artifacts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the default "artifacts/" would be
    monkeypatch.setenv("REFINELIB_ARTIFACTS", str(tmp_path / "smoke"))
    fig, _ = plt.subplots()
    png = plots.save(fig, "lengths")
    assert png == tmp_path / "smoke" / "figures" / "lengths.png"
    assert png.is_file() and png.with_suffix(".svg").is_file()
    assert not (tmp_path / "artifacts").exists()  # a smoke run never overwrites the real figure


def test_save_into_an_explicit_folder_and_an_axes_saves_its_figure(tmp_path):
    fig, ax = plt.subplots()
    assert plots.save(fig, "x", tmp_path / "out") == tmp_path / "out" / "x.png"
    assert plots.save(ax, "y", tmp_path / "out").is_file()
    assert [p.name for p in plots.save_all({"a": fig, "b": ax}, tmp_path / "all")] == ["a.png", "b.png"]


def test_oracle_lengths_draws_a_box_per_suite_and_the_step_limit():
    df = pd.DataFrame({"suite": ["a", "a", "b"], "split": ["held_in", "held_in", "held_out"],
                       "steps": [3, 5, 40]})
    ax = plots.oracle_lengths(df)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]
    assert ax.get_xlabel() == "oracle episode length (steps)"
    limit = [line for line in ax.lines if list(line.get_xdata()) == [30, 30]]
    assert limit and any("30-step limit" in t.get_text() for t in ax.texts)
    assert ax.figure.get_size_inches()[1] == pytest.approx(0.6 * 2 + 1.5)


def test_error_taxonomy_stacks_one_bar_per_category_and_group():
    shares = {f"{c}_rate": 1 / len(CATEGORIES) for c in CATEGORIES}
    summary = pd.DataFrame([{"policy": p, "cells": "held-in suites", **shares} for p in "ab"])
    ax = plots.error_taxonomy(summary)
    assert len(bars(ax)) == 2 * len(CATEGORIES)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(CATEGORIES)
    assert ax.get_xlabel() == "share of steps (%)" and ax.yaxis_inverted()
    assert max(b.get_x() + b.get_width() for b in bars(ax)) == pytest.approx(100)


def test_synthesis_overview_counts_kinds_errors_per_trajectory_and_themes():
    meta = {"1": {"error_kinds": ["logic_error", "place_error"], "theme": "kitchen"},
            "2": {"error_kinds": ["logic_error"], "theme": "garden"},
            "3": {"error_kinds": [], "theme": "garden"}}
    fig = plots.synthesis_overview(meta)
    kinds, per, themes = fig.axes
    assert sorted(b.get_height() for b in bars(kinds)) == [1, 2]
    assert [t.get_text() for t in per.get_xticklabels()] == ["0", "1", "2"]
    assert sorted(b.get_width() for b in bars(themes)) == [1, 2]
    titles = ["error turns by kind", "error turns per trajectory", "themes"]
    assert [ax.get_title() for ax in fig.axes] == titles


def test_loss_curves_draw_one_line_per_model_and_split():
    history = pd.DataFrame({"model": ["m"] * 4 + ["n"] * 4,
                            "split": ["train", "train", "validation", "validation"] * 2,
                            "step": [1, 2, 0, 2] * 2, "loss": [3.0, 2.0, 3.5, 2.5, 3.1, 2.1, 3.6, 2.6]})
    ax = plots.loss_curves(history)
    assert len([line for line in ax.lines if len(line.get_xdata()) == 2]) == 4
    assert ax.get_ylabel() == "loss (mean over supervised tokens)"


def main_table() -> pd.DataFrame:
    rows = [("base", "household_held_in", False), ("base", "babyai", False),
            ("expert_only", "household_held_in", True), ("expert_only", "babyai", False)]
    return pd.DataFrame([{"policy": p, "suite": s, "held_in": h, **{f"{m}{b}": v for m, v in
                          (("success_rate", 50.0), ("progress_rate", 60.0)) for b in ("", "_lo", "_hi")}}
                         for p, s, h in rows])


def test_main_table_draws_a_bar_per_model_and_suite_hatching_held_in_cells():
    fig = plots.main_table(main_table(), ["household_held_in", "babyai"], ["base", "expert_only"])
    success, progress = fig.axes
    assert len(bars(success)) == 4 and len(bars(progress)) == 4
    assert sum(bool(b.get_hatch()) for b in bars(success)) == 1
    assert [t.get_text() for t in success.get_yticklabels()] == ["household_held_in", "babyai"]
    assert [t.get_text() for t in success.get_legend().get_texts()] == ["base", "expert_only"]
    assert (success.get_xlabel(), progress.get_xlabel()) == ("success rate (%)", "progress rate (%)")


def test_robustness_draws_a_line_per_model_over_the_settings():
    df = pd.DataFrame({"suite": "household_held_in", "policy": ["a", "a", "b", "b"],
                       "setting": ["original", "R1"] * 2, "success": [1.0, 0.0, 1.0, 1.0],
                       "progress": [1.0, 0.5, 1.0, 1.0]})
    fig = plots.robustness(df, {"household_held_in": ["R1"]}, ["b", "a"])
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert len(ax.lines) == 2 and [t.get_text() for t in ax.get_xticklabels()] == ["original", "R1"]
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["b", "a"]
    assert fig.axes[0].get_title() == "household_held_in: success rate (%)"


def test_thought_map_colours_points_by_model_in_order():
    sample = pd.DataFrame({"x": [0.0, 1.0, 2.0], "y": [0.0, 1.0, 0.5], "policy": ["b", "a", "b"],
                           "family": ["pddl", "pddl", "babyai"]})
    ax = plots.thought_map(sample, order=["a", "b", "c"])
    assert sum(len(c.get_offsets()) for c in ax.collections) == 3
    assert ax.get_title() == "Thoughts by model (3 thoughts)"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels.index("a") < labels.index("b") and "c" not in labels


def test_best_of_n_draws_greedy_and_best_bars_per_row():
    bon = pd.DataFrame({"policy": ["m", "n"], "suite": ["pddl", "pddl"], "greedy_success": [0.0, 50.0],
                        "bon_success": [50.0, 50.0], "greedy_progress": [10.0, 20.0],
                        "bon_progress": [30.0, 20.0]})
    fig = plots.best_of_n(bon, n_samples=4, temperature=0.7)
    assert all(len(bars(ax)) == 4 for ax in fig.axes)
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == ["greedy", "best of 4 (T=0.7)"]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["m | pddl", "n | pddl"]


def test_environment_heatmap_annotates_every_cell_of_both_maps():
    square = pd.DataFrame([[1.0, 0.2], [0.2, 1.0]], index=["s", "t"], columns=["s", "t"])
    themes = pd.DataFrame([[0.1, 0.3, 0.2]], index=["kitchen"], columns=["a", "b", "c"])
    fig = plots.environment_heatmap(square, themes)
    assert len(fig.axes[0].texts) == 4 and len(fig.axes[1].texts) == 3
    assert fig.axes[1].get_title() == "synthesis themes vs evaluation suites"


def test_ablations_draws_losses_our_curve_and_the_papers():
    table = pd.DataFrame({"loss": [1.0, 0.8], "refinement_turn_loss": [1.5, 1.2]}, index=["base", "refine"])
    scaling = pd.DataFrame({"trajectories": [2, 6], "loss": [0.9, 0.8], "refinement_turn_loss": [1.3, 1.2]})
    paper = pd.DataFrame({"size": ["4k", "8k"], "trajectories": [4000, 8000], "avg_success": [26.4, 30.6],
                          "avg_progress": [43.5, 47.5]})
    losses, ours, theirs = plots.ablations(table, scaling, paper, steps=6).axes
    assert len(bars(losses)) == 4 and [t.get_text() for t in losses.get_yticklabels()] == ["base", "refine"]
    assert len(ours.lines) == 2 and ours.get_title() == "our scaling (6 steps per model)"
    assert len(theirs.lines) == 2 and [t.get_text() for t in theirs.get_xticklabels()] == ["4k", "8k"]


def test_claim_figures_are_one_figure_per_claim(monkeypatch):
    drawn = []
    monkeypatch.setattr(plots, "plot_claim", lambda verdicts, c: drawn.append(c) or plt.figure())
    figures = plots.claim_figures(pd.DataFrame({"claim": ["b", "a", "b"]}))
    assert list(figures) == ["claim_a", "claim_b"] and drawn == ["a", "b"]
