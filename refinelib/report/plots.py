"""Figures for the book: each function takes a tidy DataFrame and an ``ax`` and returns the Axes."""

from __future__ import annotations

from pathlib import Path

from refinelib.paths import artifacts_dir


def set_theme() -> None:
    """One theme for every figure in the book."""
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")


def episode_lengths(df, ax, x: str = "steps", y: str = "suite", hue: str = "split"):
    """Oracle episode lengths per suite (one point per episode, a box per suite)."""
    import seaborn as sns

    sns.boxplot(data=df, x=x, y=y, hue=hue, ax=ax, whis=(0, 100), fill=False, legend=False)
    sns.stripplot(data=df, x=x, y=y, hue=hue, ax=ax, size=4, alpha=0.7, jitter=0.2)
    ax.set_xlabel("oracle episode length (steps)")
    ax.set_ylabel("")
    return ax


def save(fig, name: str, directory: str | Path | None = None) -> Path:
    """Save ``fig`` as SVG and PNG under ``directory`` (default: ``figures/`` of the artifacts folder,
    which honours ``REFINELIB_ARTIFACTS``, so a smoke run never overwrites the real figure); return the
    PNG path."""
    directory = artifacts_dir("figures") if directory is None else Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fig.savefig(directory / f"{name}.svg", bbox_inches="tight")
    fig.savefig(directory / f"{name}.png", bbox_inches="tight", dpi=120)
    return directory / f"{name}.png"
