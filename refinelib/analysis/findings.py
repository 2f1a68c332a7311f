"""The chapters' computed sentences: what a table of this run says, in words, from its numbers.

The book's prose is fixed text and may not type a result (``tests/test_book_prose.py``); a sentence that
states one is computed here from the run's tables and printed by the chapter. Each function returns the
sentences as one string, one per line (an empty string when there is nothing to say).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from refinelib.analysis.claims import CONTRADICTED, INCONCLUSIVE, NOT_RUN, REPRODUCED, pairs_text
from refinelib.analysis.power import POWER
from refinelib.analysis.tables import held_out_mean
from refinelib.analysis.taxonomy import MEMORISED_FORMAT, REPEATED_FAILED_ACTION
from refinelib.envs.registry import SUITES

NOISE = "With a few episodes per cell, differences inside the confidence intervals above are not evidence."


# ----- chapter 01 -------------------------------------------------------------------------------------------
def gap_sentences(gaps: pd.DataFrame) -> str:
    """Which model has the largest held-in minus held-out gap, per rate, from a
    :func:`refinelib.analysis.tables.cell_gaps` table (models named in alphabetical order)."""
    lines = []
    for metric in ("success_rate_gap", "progress_rate_gap"):
        values = gaps[metric].sort_index().dropna()
        if values.empty:
            lines.append(f"{metric}: no model has both held-in and held-out episodes here.")
        elif values.nunique() == 1:
            lines.append(f"{metric}: the same for every model ({values.iloc[0]:+.1f} points).")
        else:
            top = values.idxmax()
            lines.append(f"{metric}: larger for {top} ({values.max():+.1f} points) than for "
                         + ", ".join(f"{m} ({v:+.1f})" for m, v in values.items() if m != top) + ".")
    lines.append("The paper's pattern is a large positive gap for the memorising model; with a few episodes "
                 "per suite, check the intervals above before reading a difference as one.")
    return "\n".join(lines)


def failure_mode_counts(found: pd.DataFrame, models: Sequence[str]) -> str:
    """Per failure mode, in how many episodes each model shows it (from
    :func:`refinelib.analysis.taxonomy.failure_modes`)."""
    counts = found.groupby(["mode", "policy"]).size()
    return "\n".join(f"{mode}: " + ", ".join(f"{m} in {int(counts.get((mode, m), 0))} episode(s)"
                                             for m in models)
                     for mode in (MEMORISED_FORMAT, REPEATED_FAILED_ACTION))


# ----- chapter 03 -------------------------------------------------------------------------------------------
def validation_sentences(falls: pd.DataFrame, smoke: bool = False) -> str:
    """Per model, whether its validation loss fell in this run (a finding, not a condition of the build),
    from :func:`refinelib.analysis.tables.validation_change`."""
    note = " (smoke: one step shows nothing about learning)" if smoke else ""
    return "\n".join(f"{name}: validation loss {row['first']:.3f} -> {row['last']:.3f} "
                     f"({'fell' if row['change'] < 0 else 'did not fall'})" + note
                     for name, row in falls.iterrows())


# ----- chapter 04 -------------------------------------------------------------------------------------------
def held_out_sentences(table: pd.DataFrame, memorising: Sequence[str]) -> str:
    """Which model has the highest held-out mean of each rate, and each memorising model's held-in minus
    held-out success, from a :func:`refinelib.analysis.tables.main_table`."""
    means = held_out_mean(table).set_index("policy")
    lines = []
    for metric in ("progress_rate", "success_rate"):
        best, top = means[metric].idxmax(), means[metric].max()
        tied = means.index[means[metric] == top].tolist()
        label = metric.replace("_", " ")
        if len(tied) > 1:
            lines.append(f"Held-out mean {label}: tied between {', '.join(tied)} ({top:.1f}%).")
        else:
            lines.append(f"Held-out mean {label}: highest for {best} ({top:.1f}%); the others: "
                         + ", ".join(f"{m} {v:.1f}%" for m, v in means[metric].items() if m != best))
    for name in memorising:
        rows = table[table.policy == name]
        if rows.held_in.any() and (~rows.held_in).any():
            gap = rows[rows.held_in].success_rate.mean() - rows[~rows.held_in].success_rate.mean()
            lines.append(f"{name}: held-in success minus held-out mean success = {gap:+.1f} points.")
    lines.append(NOISE)
    return "\n".join(lines)


# ----- chapter 05 -------------------------------------------------------------------------------------------
def robustness_sentences(by_suite: Mapping[str, pd.DataFrame]) -> str:
    """Per suite and metric, which model's rate varies least and most over the perturbation settings, and
    each model's mean minus original, from :func:`refinelib.analysis.tables.robustness_tables`."""
    lines = []
    for suite_name, table in by_suite.items():
        for metric in ("success", "progress"):
            rows = table.xs(metric, level="metric")
            if rows["std"].isna().all():
                continue
            steadiest, shakiest = rows["std"].idxmin(), rows["std"].idxmax()
            if rows["std"].nunique() == 1:
                lines.append(f"{suite_name}, {metric}: every model has the same std over settings "
                             f"({rows['std'].iloc[0]:.1f}).")
            else:
                lines.append(f"{suite_name}, {metric}: the std over settings is smallest for {steadiest} "
                             f"({rows.loc[steadiest, 'std']:.1f}) and largest for {shakiest} "
                             f"({rows.loc[shakiest, 'std']:.1f}); mean - original: "
                             + ", ".join(f"{m} {d:+.1f}" for m, d in rows["delta"].items()) + ".")
    return "\n".join(lines)


# ----- chapter 06 -------------------------------------------------------------------------------------------
def dispersion_sentence(by_model: pd.DataFrame) -> str:
    """Which model's thoughts are the most and the least dispersed, and which has the highest distinct-2,
    from :func:`refinelib.analysis.diversity.thought_diversity` indexed by policy (Markdown; empty with
    fewer than two models with thoughts)."""
    ranked = by_model.dropna(subset=["mean_pairwise_distance"]).sort_values("mean_pairwise_distance")
    if len(ranked) < 2:
        return ""
    return (f"Most dispersed thoughts: **{ranked.index[-1]}** (mean pairwise distance "
            f"{ranked.mean_pairwise_distance.iloc[-1]:.3f}); least: **{ranked.index[0]}** "
            f"({ranked.mean_pairwise_distance.iloc[0]:.3f}). Highest distinct-2: "
            f"**{by_model.distinct_2.idxmax()}** ({by_model.distinct_2.max():.3f}).")


def best_of_n_sentences(overall: pd.DataFrame) -> str:
    """Per model, what Best-of-N gains over greedy, and which model gains most progress, from
    :func:`refinelib.analysis.tables.best_of_n_table` by policy (indexed by policy)."""
    lines = [f"{name}: Best-of-{int(row.n_samples)} gains {row.delta_success:+.1f} success points and "
             f"{row.delta_progress:+.1f} progress points over greedy ({int(row.n_instances)} instance(s))."
             for name, row in overall.iterrows()]
    if len(overall) > 1:
        top = overall.delta_progress.idxmax()
        tied = (overall.delta_progress == overall.delta_progress.max()).sum() > 1
        lines.append("The progress gains are tied." if tied else f"The largest progress gain: {top}.")
    return "\n".join(lines)


def heatmap_sentences(square: pd.DataFrame, themes: pd.DataFrame, suites: Sequence[str],
                      expert: str = "expert-only data") -> str:
    """The range of similarities between the synthesis themes (and the expert-only data) and the
    evaluation suites, between two suites of one family, and within the synthesized environments, from
    :func:`refinelib.analysis.sources.environment_heatmaps`."""
    synthetic = themes.drop(index=expert)
    within = [square.loc[a, b] for a in suites for b in suites
              if a != b and SUITES[a].family == SUITES[b].family]
    lines = [f"synthesis themes vs evaluation suites: {synthetic.values.min():.2f} to "
             f"{synthetic.values.max():.2f} (mean {synthetic.values.mean():.2f}); expert-only data vs "
             f"evaluation suites: {themes.loc[expert].min():.2f} to {themes.loc[expert].max():.2f}"]
    if within:
        lines.append(f"two suites of one family: {min(within):.2f} to {max(within):.2f}")
    lines.append(f"the synthesized environments' own diagonal: {square.iloc[0, 0]:.2f}")
    return "\n".join(lines)


def leakage_sentence(touched: Mapping[str, Sequence[str]]) -> str:
    """How many training sources touch no evaluation suite, and which suites the others touch (from
    :func:`refinelib.analysis.sources.touched_suites`)."""
    clean = [s for s, cols in touched.items() if not cols]
    return (f"{len(clean)} of {len(touched)} training sources touch no evaluation suite"
            + ("; touching some: " + "; ".join(f"{s} -> {', '.join(c)}" for s, c in touched.items() if c)
               if len(clean) < len(touched) else "."))


# ----- chapter 07 -------------------------------------------------------------------------------------------
def variant_sentences(table: pd.DataFrame, variants: Sequence[str]) -> str:
    """Which ablation variant has the lowest held-out losses and the highest progress, with every
    variant's value, from the ablation table (one row per model)."""
    ablated = table.loc[[v for v in variants if v in table.index]]
    lines = []
    for metric, better in (("refinement_turn_loss", "lowest"), ("loss", "lowest"),
                           ("progress_rate", "highest")):
        column = ablated[metric].dropna()
        if column.empty:
            continue
        best = column.idxmin() if better == "lowest" else column.idxmax()
        verdict = ("tied across variants" if (column == column[best]).sum() > 1
                   else f"{better} for {best} ({column[best]:.3f})")
        lines.append(f"{metric}: {verdict}; " + ", ".join(f"{k} {v:.3f}" for k, v in column.items()))
    return "\n".join(lines)


def scaling_sentence(scaling: pd.DataFrame) -> str:
    """Whether the held-out refinement-turn loss falls from the smallest to the largest training set of the
    data-scaling curve (empty with one size)."""
    trend = scaling.set_index("trajectories")["refinement_turn_loss"]
    if len(trend) < 2:
        return ""
    direction = "falls" if trend.iloc[-1] < trend.iloc[0] else "does not fall"
    between = ", ".join(f"{n}: {v:.3f}" for n, v in trend.iloc[1:-1].items())
    return (f"From {trend.index[0]} to {trend.index[-1]} trajectories the held-out refinement-turn loss "
            f"{direction} ({trend.iloc[0]:.3f} -> {trend.iloc[-1]:.3f})"
            + (f"; in between: {between}." if between else "."))


# ----- chapter 08: the claims, in words -------------------------------------------------------------------
def sentence(row: Mapping) -> str:
    """One row of :func:`evaluate_claims` in words, every number taken from the row."""
    head = f"({row['claim']}) {row['name']}, {row['metric']}: {row['verdict']}"
    if row["verdict"] == NOT_RUN:
        return f"{head} ({row['reason']})."
    paper = "" if pd.isna(row["paper_difference"]) else (
        f" The paper's corresponding difference: {row['paper_difference']:+.1f} points "
        f"({row['paper_label']}){_against_paper(row)}.")
    return (f"{head}: {row['first']} - {row['second']} = {row['difference']:+.1f} points (95% CI "
            f"{row['ci_lo']:+.1f} to {row['ci_hi']:+.1f}, {pairs_text(row['n_pairs'])}); "
            f"{row['reason']}.{paper}")


def _against_paper(row: Mapping) -> str:
    """Where the paper's difference lies relative to the interval (in the claimed direction): an effect as
    large as the paper's can be ruled out by a run that decides nothing about a smaller one."""
    direction = row.get("direction", 1)
    lo, hi = sorted((direction * row["ci_lo"], direction * row["ci_hi"]))
    paper = direction * row["paper_difference"]
    if paper > hi:
        return "; it lies above this interval: an effect as large as the paper's is ruled out here"
    if paper < lo:
        return "; it lies below this interval: the effect here is larger than the paper's"
    return "; it lies inside this interval"


def explain(verdicts: pd.DataFrame) -> str:
    """Markdown: each claim's verdict (its primary metric), then what this shows, what it does not, and
    the scale that would decide each open claim (from the run's own spread)."""
    primary = verdicts[verdicts.primary.astype(bool)]
    by = {v: list(primary[primary.verdict == v].itertuples()) for v in
          (REPRODUCED, CONTRADICTED, INCONCLUSIVE, NOT_RUN)}

    def names(rows, why=False):
        return "; ".join(f"({r.claim}) {r.name}" + (f", {r.reason}" if why else "") for r in rows)

    shown = [f"{label} here: {names(by[v])}." for v, label in
             ((REPRODUCED, "Reproduced"), (CONTRADICTED, "Contradicted")) if by[v]]
    not_shown = [f"{label}: {names(by[v], why)}." for v, label, why in
                 ((INCONCLUSIVE, "Still open", True), (NOT_RUN, "Not run", False)) if by[v]]
    ran = verdicts[verdicts.verdict != NOT_RUN]  # the models of a claim not run were not played
    models = ", ".join(sorted(set(ran["first"]) | set(ran["second"])))
    if models:
        not_shown.append(f"Every verdict is about these models ({models}) on our stand-in environments, "
                         "not about the paper's 8B models on AgentBoard.")
    scale = [f"({r.claim}): about {r.pairs_to_detect} pairs (this run: {r.n_pairs}) would detect a "
             f"difference of {max(abs(r.difference), r.margin):.1f} points with {POWER:.0%} power; about "
             f"{r.pairs_for_equivalence} would show one inside ±{r.margin:.0f} points."
             for r in by[INCONCLUSIVE]]
    lines = [f"- {sentence(r)}" for _, r in primary.iterrows()]
    lines += ["", f"**What this shows.** {' '.join(shown) or 'No claim was decided.'}", "",
              f"**What it does not show.** {' '.join(not_shown)}"]
    return "\n".join(lines + (["", f"**What scale would decide it.** {' '.join(scale)}"] if scale else []))
