"""The book's result tables: the main table (success and progress per model and suite, with bootstrap
intervals), its held-out mean and wide layout; the held-in vs held-out cells (chapters 01 and 04); the
robustness tables (chapter 05); the Best-of-N table (method.md §13).

>>> short_rule("perturb-v1:R3")
'R3'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from refinelib.analysis.metrics import robustness_summary, summarize
from refinelib.envs.perturb import get_rule
from refinelib.eval import evaluate
from refinelib.eval.experiment import model_identity, suite_family  # noqa: F401 (model_identity: re-exported)
from refinelib.schema import EPISODE_KEY

MEMORISING = ("expert_only",)  # models trained on the held-in suites' environment (household)


# Our suites -> the paper's task they stand in for (environments.md).
PAPER_TASK = {"household_held_in": "ALFWorld", "household_held_out": "ALFWorld", "babyai": "BabyAI",
              "sciworld": "SciWorld", "pddl": "PDDL", "textadventure": "Jericho"}


def main_table(df: pd.DataFrame, memorising: Sequence[str] = MEMORISING, n_boot: int = 1000,
               seed: int = 0) -> pd.DataFrame:
    """Success and progress rate (%) per model and suite with 95% bootstrap CIs, tidy.

    Args:
        df: a :func:`refinelib.analysis.metrics.episode_table` (original prompts only are used).
        memorising: models trained on the environment of the suites tagged ``held_in``; those cells are
            held-in (the paper's Table 1 rule), every other cell is held-out.

    Returns:
        One row per (policy, suite): ``paper_task``, ``held_in``, ``n_episodes``, ``success_rate``,
        ``progress_rate`` and their ``_lo`` / ``_hi`` bounds, all in %.
    """
    df = df[df.perturbation == evaluate.ORIGINAL]
    out = summarize(df, by=("policy", "suite", "split"), n_boot=n_boot, seed=seed)
    out["paper_task"] = out["suite"].map(PAPER_TASK)
    out["held_in"] = out["policy"].isin(list(memorising)) & (out["split"] == "held_in")
    rates = [f"{m}{s}" for m in ("success_rate", "progress_rate") for s in ("", "_lo", "_hi")]
    out[rates] = out[rates] * 100
    return out[["policy", "suite", "paper_task", "held_in", "n_episodes", *rates]]


def held_out_mean(table: pd.DataFrame) -> pd.DataFrame:
    """Per model, the mean over its held-out cells of a :func:`main_table` (each suite weighs the same,
    like the paper's task means), with ``suites``: how many suites that mean averages (a memorising
    model has fewer held-out suites than the others)."""
    held_out = table[~table.held_in].groupby("policy", sort=False)
    out = held_out[["success_rate", "progress_rate"]].mean()
    out["suites"] = held_out["suite"].nunique()
    return out.reset_index()


def wide(table: pd.DataFrame, order: Sequence[str] | None = None) -> pd.DataFrame:
    """A :func:`main_table` as the paper prints it: one row per model, one ``S / P`` cell per suite,
    ``*`` on held-in cells, and the held-out mean last."""
    cells = table.assign(cell=[f"{s:.1f} / {p:.1f}{'*' if h else ''}" for s, p, h in
                               zip(table.success_rate, table.progress_rate, table.held_in, strict=True)])
    out = cells.pivot(index="policy", columns="suite", values="cell")
    suites = [s for s in PAPER_TASK if s in out.columns] + [s for s in out.columns if s not in PAPER_TASK]
    out = out[suites]
    means = held_out_mean(table).set_index("policy")
    out["held-out mean"] = [f"{means.success_rate.get(p, float('nan')):.1f} / "
                            f"{means.progress_rate.get(p, float('nan')):.1f}"
                            f" ({_suites(means.suites.get(p, 0))})" for p in out.index]
    out.columns.name = None
    order = [p for p in (order or []) if p in out.index] + [p for p in out.index if p not in (order or [])]
    return out.loc[order]


def _suites(n: int) -> str:
    return f"{n} suite" if n == 1 else f"{n} suites"


# ----- held-in vs held-out cells -----------------------------------------------------------------------
CELLS = ("held-in suites", "held-out suites")  # the suites' split (chapter 01)
MODEL_CELLS = ("held-in", "held-out")           # each model's own held-in cells (chapter 04)
_RATES = ("success_rate", "progress_rate")


def with_cells(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` (an episode or taxonomy table) with a ``cells`` column: the suite's split, held-in or
    held-out, whatever the model."""
    return df.assign(cells=df.split.map({"held_in": CELLS[0]}).fillna(CELLS[1]))


def with_model_cells(df: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """The original-prompt episodes of ``df`` with a ``cells`` column: held-in where the :func:`main_table`
    ``table`` marks the model's cell held-in, held-out otherwise."""
    held = df.merge(table[["policy", "suite", "held_in"]], on=["policy", "suite"])
    held["cells"] = held.held_in.map({True: MODEL_CELLS[0], False: MODEL_CELLS[1]})
    return held[held.perturbation == evaluate.ORIGINAL]


def cell_rates(df: pd.DataFrame, n_boot: int = 1000) -> pd.DataFrame:
    """Success and progress rate (%) per policy and ``cells`` with their 95% bootstrap bounds, each suite
    weighing the same (a macro average; the bootstrap resamples episodes within each suite)."""
    out = summarize(df, by=("policy", "cells"), n_boot=n_boot, macro="suite")
    rates = [c for c in out.columns if c.startswith(_RATES)]
    out[rates] = out[rates] * 100
    return out[["policy", "cells", "n_episodes", *rates]]


def cell_gaps(rates: pd.DataFrame, cells: Sequence[str] = CELLS,
              order: Sequence[str] | None = None) -> pd.DataFrame:
    """Per policy, held-in minus held-out of each rate of a :func:`cell_rates` table (``<rate>_gap``,
    rounded to 0.1 point; NaN where a policy lacks one of the ``cells``), rows in ``order`` first."""
    wide = rates.pivot(index="policy", columns="cells", values=list(_RATES))
    wide = wide.reindex(columns=pd.MultiIndex.from_product([list(_RATES), list(cells)]))
    gaps = pd.DataFrame({f"{m}_gap": wide[(m, cells[0])] - wide[(m, cells[1])] for m in _RATES}).round(1)
    first = [p for p in (order or []) if p in gaps.index]
    return gaps.reindex(first + [p for p in gaps.index if p not in first])


def with_intervals(table: pd.DataFrame) -> pd.DataFrame:
    """A :func:`main_table`'s cells as ``rate [lo, hi]`` strings (whole points): policy, suite, held_in,
    n_episodes, success, progress."""
    def cells(metric: str) -> list[str]:
        return [f"{v:.0f} [{lo:.0f}, {hi:.0f}]" for v, lo, hi in
                zip(table[metric], table[f"{metric}_lo"], table[f"{metric}_hi"], strict=True)]

    out = table.assign(success=cells("success_rate"), progress=cells("progress_rate"))
    return out[["policy", "suite", "held_in", "n_episodes", "success", "progress"]]


# ----- tuning ----------------------------------------------------------------------------------------------
def validation_change(history: pd.DataFrame) -> pd.DataFrame:
    """Per model of a loss history (rows of ``loss_history.csv`` with a ``model`` column), its first and
    last validation loss and the ``change`` (last - first)."""
    validation = history[history.split == "validation"].sort_values("step").groupby("model")["loss"]
    falls = pd.DataFrame({"first": validation.first(), "last": validation.last()})
    falls["change"] = falls["last"] - falls["first"]
    return falls


# ----- ablations ------------------------------------------------------------------------------------------
ABLATION_RATES = ("success_rate", "progress_rate", "grounding_accuracy", "format_error_rate")


def ablation_table(df: pd.DataFrame, losses: Mapping[str, Mapping], order: Sequence[str], n_boot: int = 200,
                   seed: int = 0) -> pd.DataFrame:
    """One row per model of chapter 07 (in ``order``): the paper's row it stands for, its episodes, rates
    (%) and held-out losses (``{model: refinelib.tune.ablation.heldout_losses(...)}``)."""
    from refinelib.tune.ablation import VARIANTS

    summary = summarize(df, by=("policy",), n_boot=n_boot, seed=seed).set_index("policy")
    rates = list(ABLATION_RATES)
    table = (summary[["n_episodes", *rates]].assign(**{r: summary[r] * 100 for r in rates})
             .join(pd.DataFrame(losses).T[["loss", "refinement_turn_loss"]].astype(float)))
    table.insert(0, "paper row", [VARIANTS[n].paper_row if n in VARIANTS
                                  else "(untuned)" if n == "base" else "AgentRefine, data scaling"
                                  for n in table.index])
    return table.loc[[n for n in order if n in table.index]]


def scaling_table(table: pd.DataFrame, scaling: Mapping[int, str]) -> pd.DataFrame:
    """The data-scaling curve: per size (``{trajectories: model}``), that model's rates and losses from an
    :func:`ablation_table`."""
    columns = ["success_rate", "progress_rate", "loss", "refinement_turn_loss"]
    return pd.DataFrame([{"trajectories": n, **table.loc[name, columns].to_dict()}
                         for n, name in scaling.items()])


# ----- robustness ------------------------------------------------------------------------------------------
def rule_table(rules: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """One row per (suite, rule) of ``{suite: [rule, ...]}``: what the rule rewrites in the suite's family."""
    return pd.DataFrame([{"suite": s, "rule": r, "rewrite": get_rule(suite_family(s), r).description}
                         for s, names in rules.items() for r in names])


def robustness_tables(df: pd.DataFrame, suites: Sequence[str],
                      order: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Per suite, success and progress rate (%) per model (rows ``(model, metric)`` in ``order``) and
    perturbation setting, with ``mean`` and population ``std`` over the original and every rule and
    ``delta`` = mean - original (:func:`refinelib.analysis.metrics.robustness_summary`), from an episode
    table with a ``setting`` column."""
    scaled = df.assign(success=100 * df.success.astype(float), progress=100 * df.progress)
    out = {}
    for suite_name in suites:
        part = scaled[scaled.suite == suite_name]
        table = robustness_summary(part, by=("policy",), setting_col="setting", original="original")
        out[suite_name] = table.reindex([(m, metric) for m in order for metric in ("success", "progress")])
    return out


def short_rule(perturbation: str) -> str:
    """``"perturb-v1:R1"`` -> ``"R1"``; ``"none"`` -> ``"original"``."""
    return "original" if perturbation == evaluate.ORIGINAL else perturbation.rpartition(":")[2]


# ----- Best-of-N --------------------------------------------------------------------------------------
_INSTANCE = [k for k in EPISODE_KEY if k != "sample"]  # the N samples of one game


def best_of_n(sampled: pd.DataFrame, by: Sequence[str] = ("policy", "suite")) -> pd.DataFrame:
    """The oracle best of N sampled episodes (method.md §13): per instance, success if any sample
    succeeded and the highest progress of any sample; then the mean over instances per group.

    Args:
        sampled: a :func:`refinelib.analysis.metrics.episode_table` of sampled episodes (``sample`` 0 ...
        N-1).
        by: grouping columns of the result.

    Returns:
        One row per group: ``n_instances``, ``n_samples`` (the smallest N of any instance),
        ``success_rate`` and ``progress_rate`` as fractions.
    """
    if sampled.empty:
        raise ValueError("best_of_n: no sampled episodes")
    per_instance = sampled.groupby(_INSTANCE, sort=False).agg(
        success=("success", "max"), progress=("progress", "max"), n=("sample", "nunique")).reset_index()
    out = per_instance.groupby(list(by), sort=False).agg(
        n_instances=("instance", "size"), n_samples=("n", "min"), success_rate=("success", "mean"),
        progress_rate=("progress", "mean"))
    return out.reset_index()


def best_of_n_table(greedy: pd.DataFrame, sampled: pd.DataFrame,
                    by: Sequence[str] = ("policy", "suite")) -> pd.DataFrame:
    """Greedy vs Best-of-N per group, in %: ``greedy_success``, ``bon_success``, ``delta_success`` and the
    same for progress (the layout of the paper's Best-of-N table).

    ``greedy`` and ``sampled`` are episode tables of the same instances (one greedy episode each); an
    instance played only one way raises ValueError.
    """
    keys = [k for k in _INSTANCE if k != "policy" or "policy" in by]
    only = set(map(tuple, greedy[keys].drop_duplicates().values)) ^ set(
        map(tuple, sampled[keys].drop_duplicates().values))
    if only:
        raise ValueError(f"best_of_n_table: instances played greedily or sampled, not both: "
                         f"{sorted(only)[:5]}")
    g = greedy.groupby(list(by), sort=False)[["success", "progress"]].mean()
    b = best_of_n(sampled, by).set_index(list(by))
    out = pd.DataFrame({"n_instances": b.n_instances, "n_samples": b.n_samples,
                        "greedy_success": g.success * 100, "bon_success": b.success_rate * 100,
                        "greedy_progress": g.progress * 100, "bon_progress": b.progress_rate * 100})
    out["delta_success"] = out.bon_success - out.greedy_success
    out["delta_progress"] = out.bon_progress - out.greedy_progress
    return out.reset_index()
