"""Error taxonomy: every step of an episode gets exactly one category, so failure modes are numbers.

It reads only :class:`~refinelib.episodes.AgentTurn` fields (``action``, ``valid``, ``observation``,
``progress``, ``format_error``) and the episode's ``success``, so a log from another harness can be
classified once it is mapped to :class:`~refinelib.episodes.Episode`.

Categories, in precedence order (a step takes the first that applies):

1. ``format_error``: no parsable action (the environment never saw one).
2. ``loop``: part of a loop, :func:`refinelib.metrics.loop_steps` (the same action 3+ times in a row or an
   A-B-A-B cycle, each repeat failing or changing nothing, with no progress gained).
3. ``repeated_failure``: the environment rejected a well-formed action it had already rejected earlier in
   this episode (the same mistake again, not yet a loop).
4. ``invalid_action``: the environment rejected a well-formed action (a first-time mistake).
5. ``no_progress``: accepted, but the progress rate never rose again from this step to the end of the
   episode (the step was wasted; a successful episode's last step counts as a rise).
6. ``ok``: accepted, and progress rose at this step or later.

Per episode (:func:`taxonomy_table`): the count of each category, ``repeats_mistake`` (some rejected
action was tried again and rejected again: "stuck in the same mistake") and ``failure_mode``, the
episode's most frequent non-``ok`` category (ties by precedence; ``success`` for solved episodes,
``no_error`` for failed ones with none). :func:`taxonomy_summary` turns them into rates per group.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pandas as pd

from .episodes import Episode
from .metrics import KEY_COLUMNS, loop_steps, normalized_action

CATEGORIES = ("format_error", "loop", "repeated_failure", "invalid_action", "no_progress", "ok")
FAILURE_MODES = ("success", *CATEGORIES[:-1], "no_error")


def classify_steps(episode: Episode) -> list[str]:
    """One category from ``CATEGORIES`` per step of ``episode`` (see the module docstring).

    >>> from refinelib.episodes import AgentTurn
    >>> def step(action, valid, progress, observation="Nothing happens."):
    ...     return AgentTurn("", "", action, observation, valid, progress, format_error=action is None)
    >>> turns = [step(None, False, 0.0),                 # no Action: line
    ...          step("take a", False, 0.0),             # rejected
    ...          step("open b", True, 0.5, "Opened."),   # progress rises
    ...          step("take a", False, 0.5),             # rejected again
    ...          step("look", True, 0.5, "A room."),     # nothing rises after this
    ...          step("take a", False, 0.5),             # rejected, again and again:
    ...          step("take a", False, 0.5),
    ...          step("take a", False, 0.5)]
    >>> ep = Episode("base", "toy", "toy/0", 0, "toy", "t", "held_out", "1", "goal", "obs", turns=turns)
    >>> classify_steps(ep)  # doctest: +NORMALIZE_WHITESPACE
    ['format_error', 'invalid_action', 'ok', 'repeated_failure', 'no_progress', 'loop', 'loop', 'loop']
    """
    turns = episode.turns
    actions = [normalized_action(t) for t in turns]
    looped = set(loop_steps(turns))
    # rises_from[t]: progress rose at step t or later (a solved episode's last step counts as a rise)
    rises_from, later = [False] * len(turns), False
    for t in reversed(range(len(turns))):
        before = turns[t - 1].progress if t else 0.0
        later = later or turns[t].progress > before or (episode.success and t == len(turns) - 1)
        rises_from[t] = later
    labels, rejected = [], set()
    for t, (turn, action) in enumerate(zip(turns, actions, strict=True)):
        if action is None:
            label = "format_error"
        elif t in looped:
            label = "loop"
        elif not turn.valid:
            label = "repeated_failure" if action in rejected else "invalid_action"
        else:
            label = "ok" if rises_from[t] else "no_progress"
        if action is not None and not turn.valid:
            rejected.add(action)
        labels.append(label)
    return labels


def _repeats_mistake(episode: Episode) -> bool:
    rejected = set()
    for turn in episode.turns:
        action = normalized_action(turn)
        if action is not None and not turn.valid:
            if action in rejected:
                return True
            rejected.add(action)
    return False


def _failure_mode(success: bool, counts: dict[str, int]) -> str:
    if success:
        return "success"
    worst = max(CATEGORIES[:-1], key=lambda c: (counts[c], -CATEGORIES.index(c)))
    return worst if counts[worst] else "no_error"


def taxonomy_table(episodes: Iterable[Episode]) -> pd.DataFrame:
    """One row per episode: key columns, ``success``, ``steps``, ``n_<category>`` for every category,
    ``repeats_mistake`` and ``failure_mode`` (see the module docstring)."""
    rows = []
    for episode in episodes:
        labels = classify_steps(episode)
        counts = {c: labels.count(c) for c in CATEGORIES}
        rows.append({
            **{k: getattr(episode, k) for k in KEY_COLUMNS},
            "success": bool(episode.success),
            "steps": len(labels),
            **{f"n_{c}": counts[c] for c in CATEGORIES},
            "repeats_mistake": _repeats_mistake(episode),
            "failure_mode": _failure_mode(episode.success, counts),
        })
    columns = [*KEY_COLUMNS, "success", "steps", *(f"n_{c}" for c in CATEGORIES), "repeats_mistake",
               "failure_mode"]
    return pd.DataFrame(rows, columns=columns)


def taxonomy_summary(table: pd.DataFrame, by: Sequence[str] = ("policy", "suite")) -> pd.DataFrame:
    """Counts and rates per group of a :func:`taxonomy_table`.

    Args:
        table: a :func:`taxonomy_table`.
        by: grouping columns.

    Returns:
        One row per group: ``by``, ``n_episodes``, ``n_steps``; per category the step count ``n_<c>`` and
        its share of all the group's steps ``<c>_rate`` (the six shares sum to 1); the share of episodes
        that repeat a mistake ``repeats_mistake_rate``; and per failure mode the share of episodes
        ``mode_<m>_rate`` (these sum to 1 too).

    >>> table = pd.DataFrame({"policy": "p", "steps": [3, 1], "n_format_error": [0, 1], "n_loop": [3, 0],
    ...                       "n_repeated_failure": 0, "n_invalid_action": 0, "n_no_progress": 0,
    ...                       "n_ok": 0, "repeats_mistake": [True, False],
    ...                       "failure_mode": ["loop", "format_error"]})
    >>> s = taxonomy_summary(table, by=["policy"])
    >>> s[["n_steps", "loop_rate", "format_error_rate", "repeats_mistake_rate", "mode_loop_rate"]]
       n_steps  loop_rate  format_error_rate  repeats_mistake_rate  mode_loop_rate
    0        4       0.75               0.25                   0.5             0.5
    """
    by = list(by)
    counts = [f"n_{c}" for c in CATEGORIES]
    grouped = table.groupby(by, sort=True)
    out = grouped[["steps", *counts]].sum().rename(columns={"steps": "n_steps"})
    out.insert(0, "n_episodes", grouped.size())
    for c in CATEGORIES:
        out[f"{c}_rate"] = out[f"n_{c}"] / out["n_steps"]
    out["repeats_mistake_rate"] = grouped["repeats_mistake"].mean()
    modes = pd.crosstab([table[b] for b in by], table["failure_mode"], normalize="index")
    for m in FAILURE_MODES:
        out[f"mode_{m}_rate"] = modes[m] if m in modes.columns else 0.0
    return out.reset_index()
