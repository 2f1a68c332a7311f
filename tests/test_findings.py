"""The chapters' computed sentences (refinelib.analysis.findings): what a table says, from its numbers."""

from __future__ import annotations

import pandas as pd

from refinelib.analysis import findings


def test_gap_sentences_name_the_largest_gap_and_the_others_in_name_order():
    gaps = pd.DataFrame({"success_rate_gap": [30.0, -5.0], "progress_rate_gap": [10.0, 10.0]},
                        index=["expert_only", "base"])  # the chapter's order; the sentence sorts by name
    lines = findings.gap_sentences(gaps).splitlines()
    assert lines[0] == "success_rate_gap: larger for expert_only (+30.0 points) than for base (-5.0)."
    assert lines[1] == "progress_rate_gap: the same for every model (+10.0 points)."
    assert lines[2].startswith("The paper's pattern is a large positive gap")
    nan = float("nan")
    empty = pd.DataFrame({"success_rate_gap": [nan], "progress_rate_gap": [nan]}, index=["b"])
    assert "no model has both held-in and held-out episodes" in findings.gap_sentences(empty)


def test_failure_mode_counts_name_every_model_even_without_a_hit():
    found = pd.DataFrame({"mode": ["memorised format"] * 2, "policy": ["a", "a"]})
    assert findings.failure_mode_counts(found, ["a", "b"]).splitlines() == [
        "memorised format: a in 2 episode(s), b in 0 episode(s)",
        "repeated failed action: a in 0 episode(s), b in 0 episode(s)"]


def test_validation_sentences_say_whether_the_loss_fell():
    falls = pd.DataFrame({"first": [2.0, 1.0], "last": [1.5, 1.2], "change": [-0.5, 0.2]}, index=["a", "b"])
    assert findings.validation_sentences(falls).splitlines() == [
        "a: validation loss 2.000 -> 1.500 (fell)", "b: validation loss 1.000 -> 1.200 (did not fall)"]
    assert findings.validation_sentences(falls, smoke=True).endswith("shows nothing about learning)")


def test_held_out_sentences_rank_the_held_out_means_and_give_the_memorising_gap():
    table = pd.DataFrame({"policy": ["base", "expert_only", "expert_only"], "suite": ["pddl", "pddl", "hh"],
                          "held_in": [False, False, True], "success_rate": [10.0, 0.0, 80.0],
                          "progress_rate": [20.0, 20.0, 90.0]})
    lines = findings.held_out_sentences(table, ["expert_only"]).splitlines()
    assert lines[0] == "Held-out mean progress rate: tied between base, expert_only (20.0%)."
    assert lines[1] == ("Held-out mean success rate: highest for base (10.0%); "
                        "the others: expert_only 0.0%")
    assert lines[2] == "expert_only: held-in success minus held-out mean success = +80.0 points."
    assert lines[3] == findings.NOISE


def test_robustness_sentences_name_the_steadiest_and_shakiest_model():
    index = pd.MultiIndex.from_tuples([(m, k) for m in ("a", "b") for k in ("success", "progress")],
                                      names=["policy", "metric"])
    table = pd.DataFrame({"std": [1.0, 2.0, 3.0, 2.0], "delta": [-1.0, 0.0, -4.0, 0.0]}, index=index)
    lines = findings.robustness_sentences({"hh": table}).splitlines()
    assert lines[0] == ("hh, success: the std over settings is smallest for a (1.0) and largest for b (3.0); "
                        "mean - original: a -1.0, b -4.0.")
    assert lines[1] == "hh, progress: every model has the same std over settings (2.0)."


def test_the_diversity_sentences():
    by_model = pd.DataFrame({"mean_pairwise_distance": [0.2, 0.5, float("nan")],
                             "distinct_2": [0.3, 0.1, 0.9]}, index=["a", "b", "c"])
    assert findings.dispersion_sentence(by_model) == (
        "Most dispersed thoughts: **b** (mean pairwise distance 0.500); least: **a** (0.200). "
        "Highest distinct-2: **c** (0.900).")
    assert findings.dispersion_sentence(by_model.iloc[:1]) == ""
    overall = pd.DataFrame({"n_samples": [4, 4], "n_instances": [2, 2], "delta_success": [50.0, 0.0],
                            "delta_progress": [10.0, 10.0]}, index=["a", "b"])
    lines = findings.best_of_n_sentences(overall).splitlines()
    assert lines[0] == ("a: Best-of-4 gains +50.0 success points and +10.0 progress points over greedy "
                        "(2 instance(s)).")
    assert lines[-1] == "The progress gains are tied."
    touched = {"kitchen": [], "expert-only data": ["household_held_in"]}
    assert findings.leakage_sentence(touched) == ("1 of 2 training sources touch no evaluation suite; "
                                                  "touching some: expert-only data -> household_held_in")


def test_heatmap_sentences_give_the_ranges():
    suites = ["household_held_in", "household_held_out", "pddl"]
    names = ["agentrefine (all themes)", "expert-only data", *suites]
    square = pd.DataFrame(0.1, index=names, columns=names)
    square.loc["household_held_in", "household_held_out"] = 0.5
    square.iloc[0, 0] = 0.3
    themes = pd.DataFrame([[0.1, 0.2, 0.3], [0.6, 0.4, 0.2]], index=["kitchen", "expert-only data"],
                          columns=suites)
    assert findings.heatmap_sentences(square, themes, suites).splitlines() == [
        "synthesis themes vs evaluation suites: 0.10 to 0.30 (mean 0.20); expert-only data vs evaluation "
        "suites: 0.20 to 0.60", "two suites of one family: 0.10 to 0.50",
        "the synthesized environments' own diagonal: 0.30"]


def test_the_ablation_sentences():
    table = pd.DataFrame({"refinement_turn_loss": [1.0, 2.0, 0.5], "loss": [1.0, 1.0, 0.4],
                          "progress_rate": [10.0, 20.0, 0.0]}, index=["refine", "erroneous_loss", "base"])
    assert findings.variant_sentences(table, ["refine", "erroneous_loss", "strip_errors"]).splitlines() == [
        "refinement_turn_loss: lowest for refine (1.000); refine 1.000, erroneous_loss 2.000",
        "loss: tied across variants; refine 1.000, erroneous_loss 1.000",
        "progress_rate: highest for erroneous_loss (20.000); refine 10.000, erroneous_loss 20.000"]
    scaling = pd.DataFrame({"trajectories": [2, 4, 6], "refinement_turn_loss": [1.5, 1.4, 1.2]})
    assert findings.scaling_sentence(scaling) == (
        "From 2 to 6 trajectories the held-out refinement-turn loss falls (1.500 -> 1.200); "
        "in between: 4: 1.400.")
    assert findings.scaling_sentence(scaling.iloc[:1]) == ""
