"""The training sources against the evaluation environments (chapters 02 and 06): how varied the
synthesized data is, the environment heatmaps between sources and suites, and the leakage matrix.

A *source* is a synthesis theme (the scripts of one theme), all synthesized scripts together, or the
expert-only data; the evaluation suites are described by the goal and first observation of a few reset
environments (:func:`refinelib.analysis.diversity.episode_description`)::

    square, themes = sources.environment_heatmaps(oracle_episodes, suites, run.accepted, expert_records)
    leaks = sources.leakage(run.accepted, expert_meta, suites, themes)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from refinelib.analysis.diversity import (
    LEAK_THRESHOLD,
    environment_similarity,
    episode_description,
    leakage_matrix,
    script_description,
)
from refinelib.eval.episodes import Episode

ALL_THEMES = "agentrefine (all themes)"
EXPERT = "expert-only data"


def synthesis_variety(records: Sequence[Mapping], meta: Mapping[str, Mapping]) -> pd.DataFrame:
    """How varied a synthesis run's trajectories are (one ``value`` column): trajectories, themes, distinct
    action templates and verbs, and error turns per trajectory (mean), from ``SynthesisRun.records()``."""
    templates = {t for m in meta.values() for t in m["templates"]}
    per_trajectory = pd.Series([len(m["error_kinds"]) for m in meta.values()], dtype=float)
    return pd.DataFrame({"value": {
        "trajectories": len(records), "themes": len({m["theme"] for m in meta.values()}),
        "distinct action templates": len(templates),
        "distinct verbs": len({t.split()[0] for t in templates}),
        "error turns per trajectory (mean)": per_trajectory.mean()}})


def _theme(sample) -> str:
    """A synthesized sample's theme; an LLM's script has none."""
    return sample.theme or "llm"


def theme_texts(samples: Sequence) -> dict[str, list[str]]:
    """The scripts' descriptions per theme, themes in order of first appearance (``Sample`` objects)."""
    by_theme: dict[str, list[str]] = {}
    for s in samples:
        by_theme.setdefault(_theme(s), []).append(script_description(s.script))
    return by_theme


def expert_texts(records: Sequence[Mapping]) -> list[str]:
    """Each expert-only record's first user turn (its environment, goal and first observation)."""
    return [next(t["value"] for t in r["conversations"] if t["from"] == "human") for r in records]


def environment_heatmaps(episodes: Sequence[Episode], suites: Sequence[str], samples: Sequence,
                         expert_records: Sequence[Mapping]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The two heatmaps of mean cosine similarity
    (:func:`refinelib.analysis.diversity.environment_similarity`): all synthesized scripts, the expert-only
    data and the ``suites`` (described by ``episodes``) against each other, and each synthesis theme and
    the expert-only data against the suites."""
    targets = {s: [episode_description(e) for e in episodes if e.suite == s] for s in suites}
    by_theme, expert = theme_texts(samples), expert_texts(expert_records)
    pooled = {ALL_THEMES: [t for texts in by_theme.values() for t in texts], EXPERT: expert}
    square = environment_similarity({**pooled, **targets}, {**pooled, **targets})
    themes = environment_similarity({**by_theme, EXPERT: expert}, targets)
    return square, themes


def leakage(samples: Sequence, expert_meta: Mapping[str, Mapping], suites: Sequence[str],
            themes: pd.DataFrame, threshold: float = LEAK_THRESHOLD) -> pd.DataFrame:
    """:func:`refinelib.analysis.diversity.leakage_matrix` of each synthesis theme and the expert-only data
    against ``suites``, by their samples' metadata and by the ``themes`` heatmap."""
    order = list(theme_texts(samples))
    theme_meta = {theme: {s.id: s.meta() for s in samples if _theme(s) == theme} for theme in order}
    return leakage_matrix({**theme_meta, EXPERT: expert_meta}, suites, themes, threshold=threshold)


def touched_suites(leaks: pd.DataFrame) -> dict[str, list[str]]:
    """Per training source of a leakage matrix, the evaluation suites it touches (empty: none)."""
    return {source: [c for c in leaks.columns if leaks.loc[source, c]] for source in leaks.index}
