"""Figures for the book: each function takes a tidy DataFrame and an ``ax`` (made when None) and returns
the Axes; a figure with several panels returns the Figure. The chapters call one of these, then
:func:`save`.

matplotlib and seaborn are imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from refinelib.analysis.claims import CONTRADICTED, INCONCLUSIVE, NOT_RUN, REPRODUCED
from refinelib.paths import artifacts_dir

AGENTBOARD_STEPS = 30  # AgentBoard's step limit, drawn on the oracle's episode lengths


def set_theme() -> None:
    """One theme for every figure in the book."""
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")


def _axes(ax, figsize: tuple[float, float]):
    """``ax``, or the Axes of a new figure of ``figsize``."""
    import matplotlib.pyplot as plt

    return ax if ax is not None else plt.subplots(figsize=figsize)[1]


def save(fig, name: str, directory: str | Path | None = None) -> Path:
    """Save ``fig`` (a Figure, or an Axes: its Figure) as SVG and PNG under ``directory`` (default:
    ``figures/`` of the artifacts folder, which honours ``REFINELIB_ARTIFACTS``, so a smoke run never
    overwrites the real figure); return the PNG path."""
    from matplotlib.axes import Axes

    fig = fig.figure if isinstance(fig, Axes) else fig
    directory = artifacts_dir("figures") if directory is None else Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fig.savefig(directory / f"{name}.svg", bbox_inches="tight")
    fig.savefig(directory / f"{name}.png", bbox_inches="tight", dpi=120)
    return directory / f"{name}.png"


def save_all(figures: Mapping[str, object], directory: str | Path | None = None) -> list[Path]:
    """:func:`save` every ``{name: figure}``; return the PNG paths."""
    return [save(fig, name, directory) for name, fig in figures.items()]


# ----- chapter 00: the environments ----------------------------------------------------------------------
def episode_lengths(df, ax=None, x: str = "steps", y: str = "suite", hue: str = "split"):
    """Oracle episode lengths per suite (one point per episode, a box per suite)."""
    import seaborn as sns

    ax = _axes(ax, (8, 0.6 * df[y].nunique() + 1.5))
    sns.boxplot(data=df, x=x, y=y, hue=hue, ax=ax, whis=(0, 100), fill=False, legend=False)
    sns.stripplot(data=df, x=x, y=y, hue=hue, ax=ax, size=4, alpha=0.7, jitter=0.2)
    ax.set_xlabel("oracle episode length (steps)")
    ax.set_ylabel("")
    return ax


def oracle_lengths(df, ax=None, limit: int = AGENTBOARD_STEPS):
    """:func:`episode_lengths` of an oracle survey with the agents' step ``limit`` drawn as a dashed line."""
    ax = episode_lengths(df, ax)
    ax.axvline(limit, color="grey", linestyle="--", linewidth=1)
    ax.text(limit, -0.6, f" {limit}-step limit", color="grey", va="bottom")
    return ax


# ----- chapter 01: the error taxonomy --------------------------------------------------------------------
def error_taxonomy(summary: pd.DataFrame, ax=None, by: Sequence[str] = ("policy", "cells")):
    """The share of steps in each taxonomy category (%), one stacked bar per group of ``by``, from a
    :func:`refinelib.analysis.taxonomy.taxonomy_summary`."""
    from refinelib.analysis.taxonomy import CATEGORIES

    shares = summary.set_index(list(by))[[f"{c}_rate" for c in CATEGORIES]]
    ax = _axes(ax, (9, 0.55 * len(shares) + 1.5))
    (100 * shares).rename(columns=lambda c: c.removesuffix("_rate")).plot.barh(stacked=True, ax=ax, width=0.7)
    ax.set_xlabel("share of steps (%)")
    ax.set_ylabel("")
    ax.invert_yaxis()
    ax.legend(loc="upper left", bbox_to_anchor=(1, 1), fontsize="small")
    ax.set_title("What every step was, per model and split")
    return ax


# ----- chapter 02: the synthesized data ------------------------------------------------------------------
def synthesis_overview(meta: Mapping[str, Mapping] | pd.DataFrame):
    """Three panels over the synthesized trajectories' metadata (``{id: {"error_kinds": [...], "theme":
    ...}}`` or one row per trajectory): error turns by kind, error turns per trajectory, themes. Returns
    the Figure."""
    import matplotlib.pyplot as plt

    df = meta if isinstance(meta, pd.DataFrame) else pd.DataFrame.from_dict(dict(meta), orient="index")
    kinds = df["error_kinds"].explode().dropna().rename("kind")
    per_trajectory = df["error_kinds"].str.len().rename("errors")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    kinds.value_counts().plot.bar(ax=axes[0], rot=0, title="error turns by kind")
    per_trajectory.value_counts().sort_index().plot.bar(ax=axes[1], rot=0, title="error turns per trajectory")
    df["theme"].rename(None).value_counts().plot.barh(ax=axes[2], title="themes")
    fig.tight_layout()
    return fig


# ----- chapter 03: tuning ----------------------------------------------------------------------------------
def loss_curves(history: pd.DataFrame, ax=None):
    """Training and validation loss per optimizer step, one colour per ``model``, one line style per
    ``split`` (rows of ``loss_history.csv`` with a ``model`` column)."""
    import seaborn as sns

    ax = _axes(ax, (8, 4))
    sns.lineplot(data=history, x="step", y="loss", hue="model", style="split", markers=True, ax=ax)
    ax.set_ylabel("loss (mean over supervised tokens)")
    return ax


# ----- chapters 04 and 05: success and progress ------------------------------------------------------------
def main_table(table: pd.DataFrame, suites: Sequence[str] | None = None, models: Sequence[str] | None = None):
    """Success and progress rate per suite (two panels) from a :func:`refinelib.analysis.tables.main_table`:
    one bar per model with its 95% interval, held-in cells hatched. ``suites`` and ``models`` give the
    order (default: the table's). Returns the Figure."""
    import matplotlib.pyplot as plt

    suites = list(suites if suites is not None else dict.fromkeys(table.suite))
    models = list(models if models is not None else dict.fromkeys(table.policy))
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.5 * len(suites) * len(models) / 2 + 2.5), sharey=True)
    shown = [s for s in suites if s in set(table.suite)]
    palette = dict(zip(models, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    height = 0.8 / len(models)
    for ax, metric in zip(axes, ("success_rate", "progress_rate"), strict=True):
        for k, name in enumerate(models):
            rows = table[table.policy == name].set_index("suite").reindex(shown)
            y = [i + (k - (len(models) - 1) / 2) * height for i in range(len(shown))]
            err = [rows[metric] - rows[f"{metric}_lo"], rows[f"{metric}_hi"] - rows[metric]]
            bars = ax.barh(y, rows[metric], height=height, xerr=err, color=palette[name], label=name,
                           error_kw={"elinewidth": 1, "capsize": 2})
            for bar, held_in in zip(bars, rows.held_in.fillna(False), strict=True):
                if held_in:
                    bar.set_hatch("//")
        ax.set_yticks(range(len(shown)), shown)
        ax.invert_yaxis()
        ax.set_xlim(0, 105)
        ax.set_xlabel(f"{metric.replace('_', ' ')} (%)")
    axes[0].legend(loc="lower right", fontsize="small")
    fig.suptitle("Success and progress per suite (hatched: held-in)")
    return fig


def robustness(df: pd.DataFrame, rules: Mapping[str, Sequence[str]], models: Sequence[str]):
    """Success and progress rate (%) per perturbation setting, one row of two panels per suite of
    ``rules`` (``{suite: [rule, ...]}``), one line per model, from an episode table with a ``setting``
    column (``original``, ``R1``, ...). Returns the Figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rules), 2, figsize=(12, 3.2 * len(rules)), squeeze=False)
    for row, (suite_name, names) in enumerate(rules.items()):
        part = df[df.suite == suite_name]
        order = ["original", *names]
        for ax, metric in zip(axes[row], ("success", "progress"), strict=True):
            means = (part.groupby(["setting", "policy"])[metric].mean().astype(float) * 100).unstack("policy")
            means = means.reindex(index=order, columns=[m for m in models if m in means.columns])
            means.plot(ax=ax, marker="o")
            ax.set_ylim(-5, 105)
            ax.set_title(f"{suite_name}: {metric} rate (%)")
            ax.set_xlabel("")
            ax.set_xticks(range(len(order)), order)
            ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


# ----- chapter 06: diversity -------------------------------------------------------------------------------
def thought_map(sample: pd.DataFrame, ax=None, order: Sequence[str] | None = None):
    """The t-SNE map of thoughts (columns ``x``, ``y``, ``policy``, ``family``), coloured by model in
    ``order`` (default: the sample's), one marker per family."""
    import seaborn as sns

    ax = _axes(ax, (7, 6))
    present = set(sample.policy)
    hue_order = [m for m in (order if order is not None else dict.fromkeys(sample.policy)) if m in present]
    sns.scatterplot(data=sample, x="x", y="y", hue="policy", style="family", s=28, alpha=0.75, ax=ax,
                    hue_order=hue_order)
    ax.set(xlabel="t-SNE 1", ylabel="t-SNE 2", title=f"Thoughts by model ({len(sample)} thoughts)")
    ax.legend(fontsize="small", bbox_to_anchor=(1.02, 1), loc="upper left")
    return ax


def best_of_n(bon: pd.DataFrame, n_samples: int, temperature: float):
    """Greedy vs Best-of-N success and progress (%) per model and suite (two panels), from a
    :func:`refinelib.analysis.tables.best_of_n_table`. Returns the Figure."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.2 + 0.3 * len(bon)), sharey=True)
    labels = bon.policy + " | " + bon.suite
    for ax, metric in zip(axes, ("success", "progress"), strict=True):
        y = np.arange(len(bon))
        ax.barh(y - 0.2, bon[f"greedy_{metric}"], height=0.4, label="greedy")
        ax.barh(y + 0.2, bon[f"bon_{metric}"], height=0.4, label=f"best of {n_samples} (T={temperature})")
        ax.set_yticks(y, labels)
        ax.set_xlim(0, 105)
        ax.set_xlabel(f"{metric} rate (%)")
    axes[0].invert_yaxis()
    axes[1].legend(fontsize="small", loc="lower right")
    fig.suptitle("Best-of-N vs greedy")
    fig.tight_layout()
    return fig


def environment_heatmap(square: pd.DataFrame, themes: pd.DataFrame):
    """Two heatmaps of mean cosine similarity: sources and evaluation suites (``square``), and synthesis
    themes vs evaluation suites (``themes``). Returns the Figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, axes = plt.subplots(1, 2, figsize=(15, 6), gridspec_kw={"width_ratios": [1, 0.8]})
    sns.heatmap(square, annot=True, fmt=".2f", vmin=0, vmax=1, cmap="viridis", ax=axes[0], cbar=False)
    axes[0].set_title("sources and evaluation suites")
    sns.heatmap(themes, annot=True, fmt=".2f", vmin=0, vmax=1, cmap="viridis", ax=axes[1])
    axes[1].set_title("synthesis themes vs evaluation suites")
    for ax in axes:
        ax.set(xlabel="", ylabel="")
        ax.tick_params(axis="x", rotation=45)
        plt.setp(ax.get_xticklabels(), ha="right")
    fig.tight_layout()
    return fig


# ----- chapter 07: ablations and data scaling ---------------------------------------------------------------
def ablations(table: pd.DataFrame, scaling: pd.DataFrame, paper_scaling: pd.DataFrame, steps: int):
    """Three panels: our models' held-out losses (``table``: one row per model), our data-scaling curve
    (``scaling``: one row per size) and the paper's (``paper_scaling``, its reference numbers). Returns the
    Figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    order = list(table.index)
    axes[0].barh(order, table["refinement_turn_loss"], color="C1", label="refinement turns")
    axes[0].barh(order, table["loss"], color="C0", alpha=0.6, label="all correct turns")
    axes[0].invert_yaxis()
    axes[0].set(xlabel="held-out loss (nats per token)", title="our models: held-out losses")
    axes[0].legend(fontsize="small")
    axes[1].plot(scaling.trajectories, scaling.refinement_turn_loss, "o-", label="refinement turns")
    axes[1].plot(scaling.trajectories, scaling.loss, "s-", label="all correct turns")
    axes[1].set(xscale="log", xlabel="training trajectories", ylabel="held-out loss",
                title=f"our scaling ({steps} steps per model)")
    axes[1].set_xticks(scaling.trajectories, [str(n) for n in scaling.trajectories])
    axes[1].legend(fontsize="small")
    axes[2].plot(paper_scaling.trajectories, paper_scaling.avg_success, "o-", label="avg success")
    axes[2].plot(paper_scaling.trajectories, paper_scaling.avg_progress, "s-", label="avg progress")
    axes[2].set(xscale="log", xlabel="training trajectories", ylabel="%",
                title="the paper's scaling (reference)")
    axes[2].set_xticks(paper_scaling.trajectories, paper_scaling["size"])
    axes[2].legend(fontsize="small")
    fig.tight_layout()
    return fig


# ----- chapter 08: the claims ------------------------------------------------------------------------------
def claim_figures(verdicts: pd.DataFrame) -> dict:
    """``{"claim_<id>": Figure}``: :func:`plot_claim` of every claim in ``verdicts``, in claim order."""
    return {f"claim_{c}": plot_claim(verdicts, c) for c in sorted(set(verdicts.claim))}


# ----- the claims' verdicts -------------------------------------------------------------------------------
COLORS = {REPRODUCED: "tab:green", CONTRADICTED: "tab:red", INCONCLUSIVE: "tab:gray"}


def plot_verdicts(verdicts: pd.DataFrame, ax=None):
    """Paired differences with their 95% intervals in the claimed direction (right of 0: as claimed),
    coloured by verdict, the ±margin band shaded, the paper's differences marked and labelled; secondary
    metrics starred. Returns the Axes."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(9, 1.0 + 0.5 * len(verdicts)))[1]
    v = verdicts.reset_index(drop=True)
    y, sign = np.arange(len(v))[::-1], v["direction"].to_numpy()
    for yi, r, s in zip(y, v.itertuples(), sign, strict=True):
        ax.fill_betweenx([yi - 0.4, yi + 0.4], -r.margin, r.margin, color="0.92", lw=0)
        if r.verdict != NOT_RUN:
            x, (lo, hi) = s * r.difference, sorted((s * r.ci_lo, s * r.ci_hi))
            ax.errorbar(x, yi, xerr=[[max(x - lo, 0)], [max(hi - x, 0)]], fmt="o", color=COLORS[r.verdict],
                        capsize=3, label=r.verdict)
    paper = v["paper_difference"].notna().to_numpy()
    if paper.any():  # no legend entry for a marker that is not drawn
        ax.scatter(sign[paper] * v["paper_difference"].to_numpy()[paper], y[paper], marker="D",
                   facecolor="none", edgecolor="black", zorder=3, label="the paper's difference")
    ax.axvline(0, color="black", lw=0.8)
    what = {"mean": "", "did": ", drop (DiD)", "rule_std": ", std over settings"}
    ax.set_yticks(y, [f"({r.claim}) {r.metric}{what[r.statistic]}{'' if r.primary else ' *'}"
                      + (" (not run)" if r.verdict == NOT_RUN else "") for r in v.itertuples()])
    ax.set_xlabel("paired difference in the claimed direction (points; grey: ±margin)")
    handles = dict(zip(*ax.get_legend_handles_labels()[::-1], strict=True))
    # outside the axes, on the right: inside, it can hide a paper marker or an interval
    ax.legend(handles.values(), handles.keys(), loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    return ax


def plot_claim(verdicts: pd.DataFrame, claim: str):
    """The summary figure of one claim: :func:`plot_verdicts` of its rows, titled with its hypothesis and
    its verdict. Returns the Figure."""
    rows = verdicts[verdicts.claim == claim]
    if rows.empty:
        raise ValueError(f"no verdict for claim {claim!r}; claims: {sorted(set(verdicts.claim))}")
    ax = plot_verdicts(rows)
    head = rows[rows.primary.astype(bool)].iloc[0]
    title = f"{head.hypothesis}: {head.verdict}"
    if head.verdict != NOT_RUN and f" on {head.suites}, " not in head.hypothesis:
        title += f" (pairs from {head.suites})"  # played on some of the claim's suites only
    ax.set_title("\n".join(textwrap.wrap(title, 90)), fontsize="medium")
    ax.figure.tight_layout()
    return ax.figure
