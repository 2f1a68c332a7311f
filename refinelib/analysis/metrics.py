"""Episode metrics and aggregates: success, progress, grounding, format errors, loops (method.md §11-12).

Per episode (:func:`episode_metrics`, :func:`episode_table`): ``success`` and ``progress`` as the episode
recorded them; ``grounding_accuracy``, the share of steps whose action the environment accepted (a format
error counts as not accepted); ``format_error_rate``, the share of steps with no parsable action; ``loop``,
whether the agent got caught in a loop (:func:`loop_steps`); ``steps``. The two step rates are NaN for an
episode with no step and are then left out of means.

Aggregates: :func:`summarize` gives the rate of each metric per group (per policy and suite, family,
held-in / held-out split, ...) with percentile bootstrap confidence intervals for the success and progress
rates; :func:`summarize_seeds` gives mean and spread over seeds; :func:`robustness_summary` gives the
paper's Table 3 layout, per perturbation rule plus the mean over all settings and their population std.

Units are those of the input: the episode table holds fractions in [0, 1] (multiply by 100 for the
paper's percentages). method.md's "stuck rate" is our ``loop_rate``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from refinelib.eval.episodes import AgentTurn, Episode
from refinelib.schema import normalize_action

# Columns that identify an episode and say where it belongs (family, split); first in every table.
KEY_COLUMNS = ("policy", "suite", "family", "task", "split", "instance", "seed", "perturbation", "sample")
# Per-episode metric -> the name of its mean over episodes (style.md: `success_rate`, `progress_rate`).
RATES = {
    "success": "success_rate",
    "progress": "progress_rate",
    "grounding_accuracy": "grounding_accuracy",
    "format_error_rate": "format_error_rate",
    "loop": "loop_rate",
    "steps": "steps",
}
BOOTSTRAPPED = ("success", "progress")  # the paper's two numbers get confidence intervals
MIN_LOOP_RUN = 3  # the same action this many times in a row, each repeat without effect, is a loop


# ----- per step and per episode --------------------------------------------------------------------
def is_format_error(turn: AgentTurn) -> bool:
    """True when the step had no parsable action (the flag, or a missing action in an imported log)."""
    return turn.format_error or turn.action is None


def normalized_action(turn: AgentTurn) -> str | None:
    """The step's action as the environment compares it (whitespace and a final period dropped); None
    for a format error."""
    return None if is_format_error(turn) else normalize_action(turn.action)


def _echoes(turns: Sequence[AgentTurn], actions: list, t: int, period: int) -> bool:
    """Step ``t`` repeats step ``t - period`` without effect: same action, no progress gained, and
    the environment rejected it or answered exactly as it did the last time."""
    if t < period or actions[t] is None or actions[t] != actions[t - period]:
        return False
    now, before = turns[t], turns[t - period]
    gained = now.progress > turns[t - 1].progress
    return not gained and (not now.valid or now.observation == before.observation)


def loop_steps(turns: Sequence[AgentTurn]) -> list[int]:
    """Indices of the steps that are part of a loop, in order.

    A loop is repetition that changes nothing: the same action ``MIN_LOOP_RUN`` (3) or more times in a
    row, or an A-B-A-B cycle (A != B) of two or more periods, where every repeat gains no progress and
    either fails or gets the same observation as the step it repeats. So the same failed action three
    times is a loop, and so is ``look`` three times; ``go forward`` three times down a corridor (a new
    view each time) is not. Format errors break a loop (they are counted on their own).

    Args:
        turns: the episode's steps.

    Returns:
        Sorted step indices (empty when there is no loop).

    >>> def step(action, valid=False, observation="Nothing happens."):
    ...     return AgentTurn("", "", action, observation, valid, 0.0)
    >>> loop_steps([step("take a"), step("take a")])                  # two repeats: not yet
    []
    >>> loop_steps([step("go"), step("take a"), step("take a"), step("take a")])
    [1, 2, 3]
    >>> loop_steps([step("take a"), step("open b"), step("take a")])  # A-B-A: not a cycle
    []
    >>> loop_steps([step("take a"), step("open b"), step("take a"), step("open b")])
    [0, 1, 2, 3]
    """
    actions = [normalized_action(t) for t in turns]
    looped: set[int] = set()
    run = 1  # length of the current run of echoes of the previous step
    for t in range(1, len(turns)):
        run = run + 1 if _echoes(turns, actions, t, 1) else 1
        if run >= MIN_LOOP_RUN:
            looped.update(range(t - run + 1, t + 1))
    for t in range(3, len(turns)):
        if (actions[t - 3] != actions[t - 2] and _echoes(turns, actions, t - 1, 2)
                and _echoes(turns, actions, t, 2)):
            looped.update(range(t - 3, t + 1))
    return sorted(looped)


def episode_metrics(episode: Episode) -> dict:
    """The per-episode metrics (see the module docstring).

    >>> turns = [AgentTurn("", "", "open box", "Nothing happens.", False, 0.0),
    ...          AgentTurn("", "", None, "Format error: no Action: line.", False, 0.0, format_error=True),
    ...          AgentTurn("", "", "open lid", "The lid opens.", True, 0.5),
    ...          AgentTurn("", "", "take key", "You take the key.", True, 1.0, done=True, success=True)]
    >>> ep = Episode("base", "toy", "toy/0", 0, "toy", "t", "held_out", "1", "goal", "obs",
    ...              turns=turns, success=True, progress=1.0)
    >>> episode_metrics(ep)  # doctest: +NORMALIZE_WHITESPACE
    {'success': True, 'progress': 1.0, 'grounding_accuracy': 0.5, 'format_error_rate': 0.25,
     'loop': False, 'steps': 4}
    """
    n = len(episode.turns)
    accepted = sum(t.valid and not is_format_error(t) for t in episode.turns)
    format_errors = sum(is_format_error(t) for t in episode.turns)
    return {
        "success": bool(episode.success),
        "progress": float(episode.progress),
        "grounding_accuracy": accepted / n if n else float("nan"),
        "format_error_rate": format_errors / n if n else float("nan"),
        "loop": bool(loop_steps(episode.turns)),
        "steps": n,
    }


def episode_table(episodes: Iterable[Episode]) -> pd.DataFrame:
    """One tidy row per episode: its key and split columns (``KEY_COLUMNS``), then its metrics."""
    rows = [{**{k: getattr(e, k) for k in KEY_COLUMNS}, **episode_metrics(e)} for e in episodes]
    return pd.DataFrame(rows, columns=[*KEY_COLUMNS, *RATES])


# ----- aggregates ----------------------------------------------------------------------------------
def bootstrap_ci(values, n_boot: int = 1000, seed: int = 0, level: float = 0.95, strata=None):
    """Percentile bootstrap confidence interval of a mean, resampling rows (episodes).

    Args:
        values: shape (n,) or (n, k); with k columns the same resamples serve every column (paired).
        n_boot: number of resamples.
        seed: seeds numpy's generator; the same inputs and seed give the same interval.
        level: coverage of the interval.
        strata: optional labels of shape (n,): rows are resampled within each stratum and the statistic
            is the mean of the stratum means (a macro average, e.g. over families).

    Returns:
        (lo, hi), floats for 1-D ``values``, arrays of shape (k,) otherwise.

    >>> bootstrap_ci([0, 0, 1, 1, 1, 0, 1, 1], n_boot=2000, seed=0)
    (0.25, 0.875)
    """
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    strata = np.zeros(len(values), dtype=int) if strata is None else np.asarray(strata)
    rng = np.random.default_rng(seed)
    boot = []
    for label in pd.unique(strata):
        part = values[strata == label]
        boot.append(part[rng.integers(0, len(part), size=(n_boot, len(part)))].mean(axis=1))
    means = np.mean(boot, axis=0)  # (n_boot,) or (n_boot, k)
    lo, hi = np.percentile(means, [50 * (1 - level), 50 * (1 + level)], axis=0)
    return (float(lo), float(hi)) if values.ndim == 1 else (lo, hi)


def summarize(df: pd.DataFrame, by: Sequence[str] = ("policy", "suite"), n_boot: int = 1000, seed: int = 0,
              level: float = 0.95, macro: str | None = None) -> pd.DataFrame:
    """Rates per group of an :func:`episode_table`, with bootstrap CIs for success and progress rates.

    Args:
        df: an :func:`episode_table` (or any frame with its metric columns and the ``by`` columns).
        by: grouping columns, e.g. ``("policy", "family")`` or ``("policy", "split")``.
        n_boot: bootstrap resamples (0: no intervals, the ``_lo`` / ``_hi`` columns are NaN).
        seed: bootstrap seed; each group is resampled with a generator seeded with it, so a group's
            interval does not depend on the other groups.
        level: coverage of the intervals.
        macro: a column to macro-average over, e.g. ``"suite"`` for a held-out average that weighs each
            suite equally (as the paper's five-task means do); the bootstrap then resamples within it.
            None: every episode weighs the same.

    Returns:
        One row per group: ``by``, ``n_episodes``, each rate in ``RATES`` (NaN step rates are skipped),
        and ``success_rate_lo/_hi``, ``progress_rate_lo/_hi``.

    >>> df = pd.DataFrame({"policy": "p", "suite": ["a", "a", "b", "b", "b", "b"],
    ...                    "success": [1, 1, 0, 0, 0, 1], "progress": [1, 1, .5, 0, 0, 1]})
    >>> summarize(df, by=["policy"], n_boot=0)[["n_episodes", "success_rate", "progress_rate"]]
       n_episodes  success_rate  progress_rate
    0           6           0.5       0.583333
    >>> summarize(df, by=["policy"], n_boot=0, macro="suite")[["success_rate", "progress_rate"]]
       success_rate  progress_rate
    0         0.625         0.6875
    """
    by = list(by)
    metrics = [m for m in RATES if m in df.columns]
    rows = []
    for key, group in df.groupby(by, sort=True, dropna=False):
        row = dict(zip(by, key, strict=True))
        row["n_episodes"] = len(group)
        values = group[metrics].astype(float)
        if macro is None:
            means = values.mean()
        else:
            means = values.groupby(group[macro].to_numpy()).mean().mean()
        row.update({RATES[m]: means[m] for m in metrics})
        ci_cols = [m for m in BOOTSTRAPPED if m in metrics]
        lo = hi = np.full(len(ci_cols), np.nan)
        if n_boot and ci_cols:
            strata = None if macro is None else group[macro].to_numpy()
            lo, hi = bootstrap_ci(values[ci_cols].to_numpy(), n_boot, seed, level, strata)
        for m, low, high in zip(ci_cols, lo, hi, strict=True):
            row[f"{RATES[m]}_lo"], row[f"{RATES[m]}_hi"] = float(low), float(high)
        rows.append(row)
    return pd.DataFrame(rows)


def summarize_seeds(df: pd.DataFrame, by: Sequence[str] = ("policy", "suite"), seed_col: str = "seed",
                    ddof: int = 1) -> pd.DataFrame:
    """Mean and spread over seeds: each rate is computed per seed, then averaged across seeds.

    Args:
        df: an :func:`episode_table`.
        by: grouping columns.
        seed_col: the column that tells runs apart (``seed``, or ``sample`` for sampled repeats).
        ddof: delta degrees of freedom of the spread (1: sample std over seeds; NaN with one seed).

    Returns:
        One row per group: ``by``, ``n_seeds``, and ``<rate>_mean`` / ``<rate>_std`` for each rate.

    >>> df = pd.DataFrame({"policy": "p", "seed": [0, 0, 1, 1, 2, 2], "success": [1, 1, 1, 0, 0, 0]})
    >>> summarize_seeds(df, by=["policy"])
      policy  n_seeds  success_rate_mean  success_rate_std
    0      p        3                0.5               0.5
    """
    by = list(by)
    metrics = [m for m in RATES if m in df.columns]
    per_seed = df.groupby([*by, seed_col], sort=True)[metrics].mean().rename(columns=RATES)
    grouped = per_seed.groupby(level=by, sort=True)
    out = pd.concat([grouped.size().rename("n_seeds"), grouped.mean().add_suffix("_mean"),
                     grouped.std(ddof=ddof).add_suffix("_std")], axis=1)
    order = ["n_seeds"] + [f"{RATES[m]}_{s}" for m in metrics for s in ("mean", "std")]
    return out[order].reset_index()


def robustness_summary(df: pd.DataFrame, by: Sequence[str] = ("policy",),
                       metrics: Sequence[str] = ("success", "progress"), setting_col: str = "perturbation",
                       original: str = "none") -> pd.DataFrame:
    """The robustness table (method.md §12, the paper's Table 3): one column per setting, then their mean,
    population std (ddof=0) and ``delta`` = mean - original.

    The mean and std run over the original plus every perturbation rule, each setting weighing the same;
    a group missing a setting gets NaN rather than a mean over fewer settings.

    Args:
        df: an :func:`episode_table`, or a table with one row per (group, setting) holding rates already.
        by: grouping columns (rows of the table, with the metric).
        metrics: per-episode metric columns to report.
        setting_col: the column naming the perturbation rule.
        original: the setting value of the unperturbed prompt; its column comes first.

    Returns:
        Index (``by``..., ``metric``); columns: ``original``, the other settings sorted, ``mean``, ``std``,
        ``delta``.

    The paper's AgentRefine row (success, %):

    >>> paper = pd.DataFrame({"policy": "AgentRefine", "perturbation": ["none", "P1", "P2", "P3", "P4", "P5"],
    ...                       "success": [44.8, 50.0, 51.5, 54.5, 45.5, 44.8]})
    >>> robustness_summary(paper, metrics=["success"]).round(2)  # doctest: +NORMALIZE_WHITESPACE
    perturbation         none    P1    P2    P3    P4    P5   mean   std  delta
    policy      metric
    AgentRefine success  44.8  50.0  51.5  54.5  45.5  44.8  48.52  3.73   3.72
    """
    by, metrics = list(by), list(metrics)
    if original not in set(df[setting_col]):
        raise ValueError(f"no {setting_col}={original!r} rows: the original setting is needed")
    means = df.groupby([*by, setting_col], sort=True)[metrics].mean().astype(float)
    means.columns.name = "metric"
    wide = means.stack().unstack(setting_col)
    settings = [original] + sorted(s for s in wide.columns if s != original)
    wide = wide[settings]
    wide["mean"] = wide[settings].mean(axis=1, skipna=False)
    wide["std"] = wide[settings].std(axis=1, ddof=0, skipna=False)
    wide["delta"] = wide["mean"] - wide[original]
    return wide
