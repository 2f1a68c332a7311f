"""What the results and reproducibility chapters (08, 09) gather from this build: the chapters' manifests
and tables, read from the files they wrote, never typed in or recomputed from scratch.

A run folder counts only when its manifest was written by the chapter run that ``book/executed/`` records
(:func:`refinelib.manifest.this_build`); otherwise :class:`BuildOutputs` shows a note saying why (not run,
an earlier run's leftover, another mode) and returns None::

    outputs = BuildOutputs("book/executed", smoke=False)
    table = outputs.table("main_table", "default", "chapter 04")     # None, and a note, when not this build's
    outputs.found                                                      # {run folder: found}
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from refinelib.eval.episodes import Episode, EpisodeLog
from refinelib.manifest import read_manifest, this_build
from refinelib.paths import TABLES, chapter_logs, episode_log, run_dir, table_path
from refinelib.schema import EPISODE_KEY


def _note(text: str) -> None:
    """A note in the chapter (Markdown, in italics)."""
    from IPython.display import Markdown, display

    display(Markdown(f"*{text}*"))


class BuildOutputs:
    """This build's chapter runs under the artifacts folder, with a note for each one missing."""

    def __init__(self, executed_dir: str | Path, smoke: bool) -> None:
        self.executed_dir, self.smoke = executed_dir, smoke
        self.found: dict[str, bool] = {}  # run folder (relative to the artifacts folder) -> this build's

    def run(self, stage: str, run_id: str, chapter: str) -> dict | None:
        """This build's manifest of run ``artifacts/<stage>/<run_id>``, or None and a note saying why not
        (the chapter did not run in this build, or the folder holds what an earlier run left)."""
        folder = f"{stage}/{run_id}"
        manifest = read_manifest(run_dir(stage, run_id))
        why = "not run" if manifest is None else this_build(manifest, self.executed_dir, self.smoke)
        self.found[folder] = why is None
        if why:
            _note(f"Not in this build: `{folder}` ({why}; run {chapter}).")
            return None
        return manifest

    def table(self, name: str, run_id: str, chapter: str, **kwargs) -> pd.DataFrame | None:
        """The table ``name`` (:data:`refinelib.paths.TABLES`) of this build's run ``run_id``, or None (with
        a note); ``kwargs`` go to :func:`pandas.read_csv`."""
        stage, file = TABLES[name]
        if self.run(stage, run_id, chapter) is None:
            return None
        path = table_path(name, run_id)
        if not path.exists():
            _note(f"`{stage}/{run_id}/{file}` is missing: {chapter} ran without writing it.")
            return None
        return pd.read_csv(path, **kwargs)

    def robustness(self, run_id: str, chapter: str) -> dict[str, pd.DataFrame]:
        """``{suite: robustness table}`` of the suites this build's robustness run perturbed (no other
        file: a suite an earlier run perturbed is left out)."""
        manifest = self.run("robustness", run_id, chapter) or {}
        return {suite: pd.read_csv(table_path("robustness", run_id, suite=suite), index_col=0)
                for suite in manifest.get("rules", {})}

    def record(self, status: Mapping[str, str | None]) -> None:
        """Count ``{run folder: why not this build's, or None}`` (e.g. the claims' episode sources), with a
        note for each one missing."""
        self.found |= {folder: why is None for folder, why in status.items()}
        for folder, why in status.items():
            if why:
                _note(f"Not in this build: `{folder}` ({why}).")


def loss_table(tuning: Mapping | None) -> pd.DataFrame | None:
    """First and last training and validation loss of each model the tuning run of manifest ``tuning``
    trained (from its ``loss_history.csv``; no other model folder), or None without one."""
    rows = []
    for name, info in (tuning or {}).get("models", {}).items():
        history = pd.read_csv(Path(info["output_dir"]) / "loss_history.csv")
        row = {"model": name}
        for split in sorted(history["split"].unique()):
            losses = history[history["split"] == split]["loss"]
            row[f"{split} loss (first)"], row[f"{split} loss (last)"] = losses.iloc[0], losses.iloc[-1]
        rows.append(row)
    return pd.DataFrame(rows) if rows else None


def claim_verdicts(sources: Mapping[str, Iterable], models: Mapping[str, list] | None = None,
                   n_boot: int = 2000) -> pd.DataFrame:
    """:func:`refinelib.analysis.claims.evaluate_claims` on the episodes of each source (``{source:
    episodes}``, :func:`build_episodes`), the claims' models changed by
    ``models`` (``{claim id: [first, second]}``)."""
    from refinelib.analysis import claims

    tables = {source: claims.claim_table(episodes) for source, episodes in sources.items()}
    return claims.evaluate_claims(tables, claims.with_models(models or {}), n_boot=n_boot)


# ----- chapter 09: reproducibility --------------------------------------------------------------------------
SETTING_KEYS = ("notebook", "run_id", "seed", "seeds", "teacher", "model", "base_model", "mask_policy",
                "method", "smoke", "reused", "seconds")


def run_records(executed_dir: str | Path, notebooks: str | Path = "notebooks") -> list[dict]:
    """The run records (``<chapter>.run.json``) in ``executed_dir`` of the chapters in ``notebooks`` (a
    record of a removed chapter is not this book's)."""
    chapters = {p.name for p in Path(notebooks).glob("*.ipynb")}
    records = (json.loads(p.read_text()) for p in sorted(Path(executed_dir).glob("*.run.json")))
    return [r for r in records if r["notebook"] in chapters]


def time_table(records: Iterable[Mapping]) -> pd.DataFrame:
    """Per executed chapter: minutes (of the attempt that finished), minutes of earlier attempts that were
    interrupted and resumed (at least: :func:`refinelib.report.runbook.execute`), git revision, when it
    finished and its parameters; a total last."""
    def earlier(r: Mapping) -> float:
        return round(sum(a["seconds"] for a in r.get("earlier_attempts", [])) / 60, 2)

    resumed = "earlier attempts (minutes)"

    runs = pd.DataFrame([{"notebook": r["notebook"], "minutes": round(r["seconds"] / 60, 2),
                          resumed: earlier(r),
                          "git revision": r.get("git_revision", "")[:12], "finished": r.get("finished", ""),
                          "parameters": json.dumps(r.get("parameters", {}))} for r in records])
    if len(runs):
        runs.loc[len(runs)] = {"notebook": "total", "minutes": round(runs["minutes"].sum(), 2),
                               resumed: round(runs[resumed].sum(), 2),
                               "git revision": "", "finished": "", "parameters": ""}
    return runs


def _settings(manifest: Mapping) -> dict:
    """A manifest's seeds and settings (:data:`SETTING_KEYS`, from its ``config`` when not its own)."""
    config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    row = {k: manifest.get(k, config.get(k)) for k in SETTING_KEYS}
    return {k: (json.dumps(v) if isinstance(v, list | dict) else v) for k, v in row.items() if v is not None}


def settings_table(manifests: Mapping[str, Mapping]) -> pd.DataFrame:
    """One row per run folder of this build: its git revision, seeds and settings."""
    return pd.DataFrame([{"run folder": name, "git revision": str(m.get("git_revision", ""))[:12],
                          **_settings(m)} for name, m in manifests.items()])


def versions_table(manifests: Mapping[str, Mapping], current: Mapping[str, str | None]) -> pd.DataFrame:
    """Package versions as the runs recorded them, one column per distinct set (named by its runs), and
    ``current`` (the environment running the chapter) last."""
    distinct: dict[str, list[str]] = {}
    for name, m in manifests.items():
        if isinstance(m.get("packages"), dict):
            distinct.setdefault(json.dumps(m["packages"], sort_keys=True), []).append(name)
    table = pd.DataFrame({", ".join(names)[:60]: json.loads(key) for key, names in distinct.items()})
    table["this chapter"] = pd.Series(current)
    return table.fillna("—")


# ----- this build's episodes -------------------------------------------------------------------------------
# The chapters whose episodes test the claims: artifacts folder -> (source, chapter). 01, 04 and 05 play
# into the shared logs of paths.episode_log; 07 into its own logs (paths.chapter_logs).
CHAPTERS = {"overfitting": ("evaluation", "01_overfitting_analysis"),
            "generalization": ("evaluation", "04_generalization"),
            "robustness": ("evaluation", "05_robustness"),
            "ablations": ("ablations", "07_ablations")}


KEY_NAMES = list(EPISODE_KEY)


def chapter_episodes(folder: str | Path, logs: Mapping[str, str | Path]) -> list[Episode]:
    """The episodes a chapter run played: the keys of its ``episodes.csv``, read back from the episode
    logs ``logs`` (``{model: log}``). A log holds what every run with its identity played (a later run with
    more instances adds to it), so the run's own key list, not the log, says which episodes it showed.

    Raises:
        ValueError: a key of ``episodes.csv`` that no log holds (naming how many and the first).
    """
    played = pd.read_csv(Path(folder) / "episodes.csv", dtype=str, keep_default_na=False)
    wanted = set(played[KEY_NAMES].itertuples(index=False, name=None))
    found = {tuple(map(str, e.key)): e for path in logs.values() if Path(path).is_file()
             for e in EpisodeLog(path).read()}
    if missing := sorted(wanted - set(found)):
        raise ValueError(f"{folder}: {len(missing)} episode(s) of episodes.csv are in no log of "
                         f"{sorted(logs)}, e.g. {missing[0]}")
    return [found[k] for k in sorted(wanted)]


def build_episodes(chapter_run_id: str, executed_dir: str | Path,
                   smoke: bool) -> tuple[dict[str, list[Episode]], dict[str, str | None]]:
    """This build's episodes per :attr:`Claim.source`, from the chapters in :data:`CHAPTERS` whose run
    ``artifacts/<folder>/<chapter_run_id>`` this build wrote (:func:`refinelib.manifest.this_build`).

    Returns:
        ``({source: episodes}, {run folder: None, or why it is not in this build})``; a source none of
        whose chapters ran in this build is absent (its claims are "not run"). Episodes that two chapters
        showed (01 and 04 share logs) are counted once.
    """
    sources: dict[str, dict[tuple, Episode]] = {}
    status: dict[str, str | None] = {}
    for stage, (source, chapter) in CHAPTERS.items():
        folder = run_dir(stage, chapter_run_id)
        manifest = read_manifest(folder)
        why = "not run" if manifest is None else this_build(manifest, executed_dir, smoke)
        status[f"{stage}/{chapter_run_id}"] = None if why is None else f"{why}; run {chapter}"
        if why is not None:
            continue
        if source == "evaluation":
            logs = {m: episode_log(manifest["eval_run_id"], m) for m in manifest["models"]}
        else:
            logs = {m: chapter_logs(stage, chapter_run_id) / f"{m}.jsonl" for m in manifest["models"]}
        episodes = sources.setdefault(source, {})
        episodes.update((e.key, e) for e in chapter_episodes(folder, logs))
    return {k: list(v.values()) for k, v in sources.items()}, status
