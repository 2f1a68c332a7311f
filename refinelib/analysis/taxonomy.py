"""Error taxonomy: every step of an episode gets exactly one category, so failure modes are numbers.

It reads only :class:`~refinelib.eval.episodes.AgentTurn` fields (``action``, ``valid``, ``observation``,
``progress``, ``format_error``) and the episode's ``success``, so a log from another harness can be
classified once it is mapped to :class:`~refinelib.eval.episodes.Episode`.

Categories, in precedence order (a step takes the first that applies):

1. ``format_error``: no parsable action (the environment never saw one).
2. ``loop``: part of a loop, :func:`refinelib.analysis.metrics.loop_steps` (the same action 3+ times in
   a row or an A-B-A-B cycle, each repeat failing or changing nothing, with no progress gained).
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

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import pandas as pd

from refinelib.analysis.metrics import KEY_COLUMNS, loop_steps, normalized_action
from refinelib.envs.perturb import get_rule
from refinelib.eval import evaluate
from refinelib.eval.episodes import Episode
from refinelib.schema import EPISODE_KEY, action_text

CATEGORIES = ("format_error", "loop", "repeated_failure", "invalid_action", "no_progress", "ok")
FAILURE_MODES = ("success", *CATEGORIES[:-1], "no_error")


def classify_steps(episode: Episode) -> list[str]:
    """One category from ``CATEGORIES`` per step of ``episode`` (see the module docstring).

    >>> from refinelib.eval.episodes import AgentTurn
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


def share_table(summary: pd.DataFrame, by: Sequence[str] = ("policy", "suite")) -> pd.DataFrame:
    """A :func:`taxonomy_summary` as the book shows it: per group of ``by``, the share of steps in each
    category (%, one decimal), the steps counted and the share of episodes that repeat a mistake."""
    indexed = summary.set_index(list(by))
    shares = indexed[[f"{c}_rate" for c in CATEGORIES]]
    return (100 * shares).round(1).join(indexed[["n_steps", "repeats_mistake_rate"]])


# ----- the paper's Figure-2 failure modes ------------------------------------------------------------
MEMORISED_FORMAT = "memorised format"


REPEATED_FAILED_ACTION = "repeated failed action"


MIN_REPEATS = 3  # "the same failed action >= 3 times" (method.md §11 diagnostics)


_ID = r"[a-z][a-z ]*? \d+"  # a household object id: "apple 1", "desk lamp 2"


# The household command format (the engine's and AgentBoard's ALFWorld wording), object ids included.
HOUSEHOLD_FORMAT = tuple(re.compile(p) for p in (
    rf"go to {_ID}", rf"take {_ID} from {_ID}", rf"move {_ID} to {_ID}", rf"put {_ID} (in|on|in/on) {_ID}",
    rf"(heat|cool|clean) {_ID} (with|using) {_ID}", rf"(open|close|use|toggle|examine) {_ID}"))


# Household templates that are also native commands of another family ("go to red ball 1" in BabyAI).
NATIVE = {"babyai": (HOUSEHOLD_FORMAT[0],)}


def uses_household_format(action: str | None, family: str) -> bool:
    """True when ``action`` is a household command with object ids and not also a ``family`` command."""
    if action is None:
        return False
    text = action_text(action)
    native = NATIVE.get(family, ())
    return any(p.fullmatch(text) for p in HOUSEHOLD_FORMAT if p not in native)


def memorised_format_steps(episode: Episode) -> list[int]:
    """Rejected steps in a memorised format: household commands on another family, or, under a
    household perturbation, commands in the old format the rule rewrote (Fig. 2b)."""
    if episode.family == "household":
        if episode.perturbation == evaluate.ORIGINAL:
            return []
        rule = get_rule("household", episode.perturbation)
        return [t for t, turn in enumerate(episode.turns) if turn.action is not None and not turn.valid
                and rule.inverse(turn.action.strip()) is None]
    return [t for t, turn in enumerate(episode.turns)
            if not turn.valid and uses_household_format(turn.action, episode.family)]


def repeated_failed_actions(episode: Episode, min_repeats: int = MIN_REPEATS) -> dict[str, list[int]]:
    """``{action: steps}`` per well-formed action the environment rejected ``min_repeats`` or more times."""
    steps: dict[str, list[int]] = {}
    for t, turn in enumerate(episode.turns):
        action = normalized_action(turn)
        if action is not None and not turn.valid:
            steps.setdefault(action, []).append(t)
    return {a: s for a, s in steps.items() if len(s) >= min_repeats}


def failure_modes(episodes: Iterable[Episode], min_repeats: int = MIN_REPEATS) -> pd.DataFrame:
    """One row per (episode, failure mode) found: key columns, ``mode``, ``action`` (the most frequent
    offending action), ``n_steps`` (steps showing the mode), ``steps`` (their indices), ``episode_steps``."""
    rows = []
    for e in episodes:
        key = {k: getattr(e, k) for k in KEY_COLUMNS}
        memorised = memorised_format_steps(e)
        if memorised:
            action = Counter(e.turns[t].action for t in memorised).most_common(1)[0][0]
            rows.append({**key, "mode": MEMORISED_FORMAT, "action": action, "n_steps": len(memorised),
                         "steps": memorised, "episode_steps": len(e.turns)})
        repeated = repeated_failed_actions(e, min_repeats)
        if repeated:
            action, steps = max(repeated.items(), key=lambda kv: len(kv[1]))
            rows.append({**key, "mode": REPEATED_FAILED_ACTION, "action": action,
                         "n_steps": sum(len(s) for s in repeated.values()),
                         "steps": sorted(t for s in repeated.values() for t in s),
                         "episode_steps": len(e.turns)})
    columns = [*KEY_COLUMNS, "mode", "action", "n_steps", "steps", "episode_steps"]
    return pd.DataFrame(rows, columns=columns)


def failure_mode_rates(episodes: Sequence[Episode], found: pd.DataFrame,
                       by: Sequence[str] = ("policy", "split")) -> pd.DataFrame:
    """Share of episodes per group showing each failure mode (0 where none was found)."""
    base = pd.DataFrame([{k: getattr(e, k) for k in KEY_COLUMNS} for e in episodes],
                        columns=list(KEY_COLUMNS))
    out = base.groupby(list(by), sort=True).size().rename("n_episodes").to_frame()
    ids = list(EPISODE_KEY)
    for mode in (MEMORISED_FORMAT, REPEATED_FAILED_ACTION):
        hit = found[found["mode"] == mode][ids].drop_duplicates()
        flagged = base.merge(hit.assign(_hit=True), on=ids, how="left")["_hit"].fillna(False).astype(bool)
        out[f"{mode} rate"] = flagged.groupby([base[b] for b in by]).mean()
    return out.reset_index()
