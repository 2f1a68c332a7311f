"""The book's result tables: the main table (success and progress per model and suite, with bootstrap
intervals), its held-out mean and wide layout, and the Best-of-N table (method.md §13).

>>> short_rule("perturb-v1:R3")
'R3'
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from refinelib.analysis.metrics import summarize
from refinelib.eval import evaluate
from refinelib.eval.experiment import model_identity  # noqa: F401 (re-exported: notebooks call it here)
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
