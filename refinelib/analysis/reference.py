"""The paper's reference numbers as data (method.md §15): Tables 1-4, Best-of-N and the scaling figure.

Every table is labelled as the paper's in ``DataFrame.attrs["source"]``, so no figure of ours can be
mistaken for one of the paper's and the book prints the source next to each.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pandas as pd

from refinelib.eval.experiment import model_identity  # noqa: F401 (re-exported: notebooks call it here)

PAPER_SOURCE_MAIN = ("the paper's Table 1 (Fu et al., ICLR 2025; method.md §15.1): Success / Progress %, "
                     "* held-in")


PAPER_SOURCE_ROBUSTNESS = ("the paper's Table 3 (Fu et al., ICLR 2025; method.md §15.3): ALFWorld Success / "
                           "Progress % under the paper's perturbations P1-P5 (not our R1-R5)")


_PAPER_TASKS = ("ALFWorld", "BabyAI", "SciWorld", "PDDL", "Jericho")


_PAPER_MAIN = """
GPT-4o | 66.4 79.9 | 48.2 64.1 | 40.0 76.9 | 61.7 69.8 | 10.0 34.0
GPT-4o-mini | 37.3 65.0 | 36.6 51.9 | 23.3 49.8 | 25.0 49.1 | 10.0 28.5
LLaMA-3-8B-Instruct | 22.4 46.1 | 45.5 56.5 | 7.8 41.1 | 10.0 38.4 | 0.0 24.3
AgentGen (L3-8B) | 29.1 47.6 | 20.5 35.0 | - - | 11.7 23.0 | - -
AgentGym (L3-8B) | 61.9* 76.9* | 47.3* 61.4* | 18.9* 47.5* | 1.7 16.6 | 0.0 12.9
Agent-FLAN (L3-8B) | 67.2* 79.7* | 25.0 35.3 | 1.1 10.9 | 8.3 25.5 | 0.0 10.1
AgentRefine (L3-8B) | 44.8 63.8 | 37.5 50.4 | 14.4 42.6 | 16.6 37.8 | 10.0 32.3
Mistral-7B-Instruct-v0.3 | 12.4 35.9 | 36.6 45.8 | 6.7 24.7 | 13.3 27.8 | 0.0 17.3
AgentGym (M-7B) | 76.9* 86.7* | 40.2* 56.3* | 15.6* 48.3* | 1.7 7.3 | 0.0 13.0
Agent-FLAN (M-7B) | 77.6* 87.6* | 15.2 21.0 | 0.0 6.7 | 0.0 3.2 | 0.0 0.7
AgentRefine (M-7B) | 51.4 68.8 | 25.9 42.4 | 4.4 22.4 | 11.7 32.8 | 5.0 28.8
LLaMA-3-70B-Instruct | 67.2 75.2 | 48.2 61.8 | 42.2 75.4 | 55.0 79.8 | 25.0 46.4
Agent-FLAN (L3-70B) | 80.5* 86.8* | 32.1 41.2 | 5.5 16.4 | 25.0 53.7 | 0.0 13.6
AgentRefine (L3-70B) | 67.2 72.1 | 44.6 59.7 | 17.7 46.4 | 38.3 58.6 | 15.0 37.2
"""


_PAPER_ROBUSTNESS = """
LLaMA3-8B-Instruct|22.4 46.1|23.1 45.6|24.6 45.0|17.9 45.1|17.9 45.1|22.4 46.1|21.4 45.5|2.68 0.47
AgentGym | 61.9 76.9 | 29.1 59.2 | 49.2 65.3 | 32.8 53.9 | 38.8 48.2 | 5.9 28.7 | 36.3 55.4 | 19.97 16.66
Agent-FLAN | 67.2 79.7 | 21.6 58.8 | 51.4 71.3 | 27.6 53.5 | 52.2 67.9 | 1.5 19.7 | 36.9 58.5 | 21.98 22.53
AgentRefine | 44.8 63.8 | 50.0 66.5 | 51.5 66.7 | 54.5 70.0 | 45.5 60.6 | 44.8 63.8 | 48.5 65.2 | 3.73 3.56
"""


def _cells(block: str) -> Iterable[tuple[str, list[tuple[str, str]]]]:
    for line in block.strip().splitlines():
        name, *cells = (c.strip() for c in line.split("|"))
        yield name, [tuple(c.split()) for c in cells]


def _number(text: str) -> float:
    return float("nan") if text == "-" else float(text.rstrip("*"))


def paper_main_table() -> pd.DataFrame:
    """The paper's Table 1, tidy: ``model``, ``task``, ``success_rate``, ``progress_rate`` (%), ``held_in``
    (NaN where the paper has no number); labelled in ``attrs["source"]``."""
    rows = [{"model": name, "task": task, "success_rate": _number(s), "progress_rate": _number(p),
             "held_in": s.endswith("*")}
            for name, cells in _cells(_PAPER_MAIN) for task, (s, p) in zip(_PAPER_TASKS, cells, strict=True)]
    out = pd.DataFrame(rows)
    out.attrs["source"] = PAPER_SOURCE_MAIN
    return out


def paper_wide(models: Sequence[str] | None = None) -> pd.DataFrame:
    """:func:`paper_main_table` as printed: ``S / P`` cells, ``*`` held-in, then the mean over the tasks
    the paper has a number for (``mean``) and how many tasks that is (``tasks in mean``: 3 for AgentGen,
    which has no SciWorld or Jericho number); ``models`` picks and orders rows (default: all). Labelled in
    ``attrs["source"]``."""
    table = paper_main_table()
    cells = table.assign(cell=[("-" if pd.isna(s) else f"{s:.1f} / {p:.1f}{'*' if h else ''}") for s, p, h in
                               zip(table.success_rate, table.progress_rate, table.held_in, strict=True)])
    out = cells.pivot(index="model", columns="task", values="cell")[list(_PAPER_TASKS)]
    means = table.groupby("model")[["success_rate", "progress_rate"]].mean()  # NaN cells skipped
    counted = table.groupby("model")["success_rate"].count()  # the tasks each mean averages
    out["mean"] = [f"{means.success_rate[m]:.1f} / {means.progress_rate[m]:.1f}" for m in out.index]
    out["tasks in mean"] = [int(counted[m]) for m in out.index]
    out = out.loc[list(models) if models is not None else list(dict.fromkeys(table.model))]
    out.columns.name = None
    out.attrs["source"] = PAPER_SOURCE_MAIN
    return out


def paper_robustness_table(recomputed_std: bool = False) -> pd.DataFrame:
    """The paper's Table 3: one row per (model, metric), columns ``original``, ``P1``..``P5``, ``mean``
    and ``std (paper)`` as printed (method.md §15.3: the printed std fits no single formula); with
    ``recomputed_std``, also the population std of the six settings recomputed from the paper's own
    numbers (``population std (recomputed)``)."""
    settings = ("original", "P1", "P2", "P3", "P4", "P5", "mean", "std (paper)")
    rows = []
    for name, cells in _cells(_PAPER_ROBUSTNESS):
        for i, metric in enumerate(("success", "progress")):
            rows.append({"model": name, "metric": metric,
                         **{s: float(c[i]) for s, c in zip(settings, cells, strict=True)}})
    out = pd.DataFrame(rows).set_index(["model", "metric"])
    out.attrs["source"] = PAPER_SOURCE_ROBUSTNESS
    if recomputed_std:
        out["population std (recomputed)"] = out[list(settings[:6])].std(axis=1, ddof=0).round(2)
    return out


PAPER_TASKS = ("ALFWorld", "BabyAI", "SciWorld", "PDDL", "Jericho")


PAPER_SOURCE_ABLATION = ("the paper's Table 2 (Fu et al., ICLR 2025; method.md §15.2): LLaMA-3-8B, "
                         "Success / Progress %")


PAPER_SOURCE_BEST_OF_N = ("the paper's Best-of-N table (Fu et al., ICLR 2025; method.md §15.4): "
                          "LLaMA-3-8B-based models, Success / Progress %")


PAPER_SOURCE_SCALING = ("the paper's figure 'Average Success and Progress by Size' (Fu et al., ICLR 2025; "
                        "method.md §15.5), %; the averaged task subset is not stated")


_PAPER_ABLATION = """
AgentRefine | 48.5 61.5 | 37.1 51.7 | 7.7 33.1 | 21.7 37.4 | 5.0 26.2
w/o refinement loss | 40.3 58.8 | 34.8 45.6 | 4.4 22.7 | 20.0 37.4 | 0.0 16.1
w/o refinement data | 49.3 65.2 | 30.4 43.1 | 5.5 21.3 | 11.7 32.5 | 0.0 13.8
w erroneous loss | 29.9 43.9 | 23.2 31.6 | 3.3 19.0 | 8.3 28.3 | 5.0 18.4
"""


_PAPER_BEST_OF_N = """
AgentGym greedy | 61.9 76.9 | 47.3 61.4 | 18.9 47.5 | 1.7 16.6 | 0.0 12.9
AgentGym BoN | 99.3 99.3 | 73.2 87.2 | 58.9 85.6 | 16.6 42.1 | 5.0 22.2
Agent-FLAN greedy | 67.2 79.7 | 25.0 35.3 | 1.1 10.9 | 8.3 25.5 | 0.0 10.1
Agent-FLAN BoN | 85.5 98.1 | 43.8 56.7 | 10.0 33.5 | 11.7 39.8 | 5.0 22.2
AgentRefine greedy | 44.8 63.8 | 37.5 50.4 | 14.4 42.6 | 16.6 37.8 | 10.0 32.3
AgentRefine BoN | 93.3 96.6 | 67.0 81.5 | 40.0 71.0 | 30.0 57.3 | 25.0 52.5
"""


# The Δ rows as printed; one cell disagrees with BoN - greedy (Agent-FLAN ALFWorld success: 85.5 - 67.2 =
# 18.3, printed 28.3), so both are kept.
_PAPER_BEST_OF_N_DELTA = """
AgentGym | 37.4 22.4 | 25.9 25.8 | 40.0 38.1 | 14.9 25.5 | 5.0 9.3
Agent-FLAN | 28.3 18.4 | 18.8 21.4 | 8.9 22.6 | 3.4 14.3 | 5.0 12.1
AgentRefine | 48.5 32.8 | 29.5 31.1 | 25.6 28.4 | 13.4 19.5 | 15.0 20.2
"""


_PAPER_SCALING = {"4k": (26.4, 43.5), "8k": (30.6, 47.5), "16k": (33.9, 51.9), "32k": (30.5, 50.3),
                  "64k": (38.2, 57.4)}


def _tidy(block: str, source: str, name: str = "model") -> pd.DataFrame:
    rows = []
    for line in block.strip().splitlines():
        label, *cells = (c.strip() for c in line.split("|"))
        for task, cell in zip(PAPER_TASKS, cells, strict=True):
            success, progress = (float(x) for x in cell.split())
            rows.append({name: label, "task": task, "success_rate": success, "progress_rate": progress})
    out = pd.DataFrame(rows)
    out.attrs["source"] = source
    return out


def paper_ablation_table() -> pd.DataFrame:
    """The paper's Table 2, tidy: ``variant`` (the paper's row label), ``task``, ``success_rate``,
    ``progress_rate`` (%); labelled in ``attrs["source"]``."""
    return _tidy(_PAPER_ABLATION, PAPER_SOURCE_ABLATION, "variant")


def paper_best_of_n_table() -> pd.DataFrame:
    """The paper's Best-of-N table, tidy: ``model``, ``decoding`` ("greedy" / "BoN"), ``task``, the two
    rates (%); on the BoN rows ``delta_success`` / ``delta_progress`` as the paper prints them and
    ``delta_*_computed`` (BoN - greedy), which differ in one cell (a misprint in the paper)."""
    table = _tidy(_PAPER_BEST_OF_N, PAPER_SOURCE_BEST_OF_N)
    table[["model", "decoding"]] = table.model.str.rsplit(" ", n=1, expand=True)
    printed = _tidy(_PAPER_BEST_OF_N_DELTA, PAPER_SOURCE_BEST_OF_N).rename(
        columns={"success_rate": "delta_success", "progress_rate": "delta_progress"}).assign(decoding="BoN")
    table = table.merge(printed, on=["model", "decoding", "task"], how="left")
    greedy = table[table.decoding == "greedy"].set_index(["model", "task"])
    index = pd.MultiIndex.from_frame(table[["model", "task"]])
    for metric in ("success", "progress"):
        computed = table[f"{metric}_rate"] - greedy[f"{metric}_rate"].reindex(index).values
        table[f"delta_{metric}_computed"] = computed.round(1).where(table.decoding == "BoN")
    table.attrs["source"] = PAPER_SOURCE_BEST_OF_N
    return table


def paper_best_of_n_cells(table: pd.DataFrame | None = None) -> pd.DataFrame:
    """The paper's Best-of-N table as printed: one ``S / P`` row per model and decoding, then the
    paper's printed Δ rows (``table``: :func:`paper_best_of_n_table`, made when None)."""
    table = paper_best_of_n_table() if table is None else table
    rows = cells(table.assign(row=table.model + " " + table.decoding), "row")
    deltas = table[table.decoding == "BoN"].assign(row=lambda d: "Δ " + d.model + " (printed)")
    return pd.concat([rows, cells(deltas, "row", success="delta_success", progress="delta_progress")])


def misprint_sentences(table: pd.DataFrame | None = None) -> str:
    """One line per Δ the paper's Best-of-N table prints that is not its BoN minus greedy (``table``:
    :func:`paper_best_of_n_table`, made when None)."""
    table = paper_best_of_n_table() if table is None else table
    bon = table[table.decoding == "BoN"]
    wrong = bon[(bon.delta_success != bon.delta_success_computed)
                | (bon.delta_progress != bon.delta_progress_computed)]
    return "\n".join(f"Printed Δ that is not BoN − greedy: {r.model}, {r.task}: printed {r.delta_success} / "
                     f"{r.delta_progress}, computed {r.delta_success_computed} / {r.delta_progress_computed}."
                     for r in wrong.itertuples())


def paper_scaling_table() -> pd.DataFrame:
    """The paper's data-scaling figure: ``size`` (label), ``trajectories``, ``avg_success``,
    ``avg_progress`` (%)."""
    out = pd.DataFrame([{"size": k, "trajectories": int(k[:-1]) * 1000, "avg_success": s, "avg_progress": p}
                        for k, (s, p) in _PAPER_SCALING.items()])
    out.attrs["source"] = PAPER_SOURCE_SCALING
    return out


def cells(table: pd.DataFrame, row: str, column: str = "task", success: str = "success_rate",
          progress: str = "progress_rate") -> pd.DataFrame:
    """A tidy table as the paper prints it: one ``S / P`` cell per (row, column), ``attrs`` kept."""
    text = [f"{s:.1f} / {p:.1f}" for s, p in zip(table[success], table[progress], strict=True)]
    out = table.assign(cell=text).pivot(index=row, columns=column, values="cell")
    out = out.loc[list(dict.fromkeys(table[row])), list(dict.fromkeys(table[column]))]
    out.columns.name = None
    out.attrs = dict(table.attrs)
    return out
