"""Where refinelib keeps generated data: a cache for environment instances, artifacts for runs."""

from __future__ import annotations

import os
from pathlib import Path

# moved to refinelib.runs (with the lock and run identities); kept here so existing imports work
from refinelib.runs import write_atomic as write_atomic


def cache_dir(*parts: str) -> Path:
    """Directory for regenerable data (generated games, problems, converted models).

    Set ``REFINELIB_CACHE`` to move it; the default is ``~/.cache/refinelib``.
    """
    root = Path(os.environ.get("REFINELIB_CACHE", Path.home() / ".cache" / "refinelib"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def artifacts_dir(*parts: str) -> Path:
    """Directory for run outputs (``REFINELIB_ARTIFACTS``, default ``./artifacts``)."""
    root = Path(os.environ.get("REFINELIB_ARTIFACTS", "artifacts"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


# ----- the runs' artifacts, named once: every chapter that writes or reads one calls these ----------------
# (Paths only: nothing is created. A writer makes the folder it writes into.)
def artifacts_root() -> Path:
    """The run-outputs folder (``REFINELIB_ARTIFACTS``, default ``./artifacts``), not created."""
    return Path(os.environ.get("REFINELIB_ARTIFACTS", "artifacts"))


def run_dir(stage: str, run_id: str) -> Path:
    """One chapter run's folder, ``artifacts/<stage>/<run_id>`` (stage: ``synthesis``, ``tuning``, ...)."""
    return artifacts_root() / stage / run_id


def samples_dir(data_run_id: str) -> Path:
    """A synthesis run's resumable samples (chapter 02): ``artifacts/synthesis/<run_id>/samples``."""
    return run_dir("synthesis", data_run_id) / "samples"


def dataset_dir(data_run_id: str, name: str) -> Path:
    """A dataset chapter 02 writes (``refinement``, ``refinement_stripped``, ``expert``):
    ``artifacts/synthesis/<run_id>/datasets/<name>`` (``train.jsonl``, ``validation.jsonl``, ``hf/``)."""
    return run_dir("synthesis", data_run_id) / "datasets" / name


def model_dir(tuning_run_id: str, name: str) -> Path:
    """A model chapter 03 trains (``expert_only``, ``refine``, ...): ``artifacts/tuning/<run_id>/<name>``."""
    return run_dir("tuning", tuning_run_id) / name


def episode_log(eval_run_id: str, name: str) -> Path:
    """The episode log chapters 01, 04 and 05 share for model ``name``:
    ``artifacts/evaluation/<eval_run_id>/episodes/<name>.jsonl``."""
    return run_dir("evaluation", eval_run_id) / "episodes" / f"{name}.jsonl"


def episode_table(stage: str, run_id: str) -> Path:
    """A chapter run's table of its episodes, one row each (chapters 01, 04, 05 and 07, which the claims
    read): ``artifacts/<stage>/<run_id>/episodes.csv``."""
    return run_dir(stage, run_id) / "episodes.csv"


def chapter_logs(stage: str, run_id: str) -> Path:
    """A chapter run's own episode logs, one per model (chapter 06's Best-of-N, chapter 07's models; not the
    shared ones of :func:`episode_log`): ``artifacts/<stage>/<run_id>/episodes/``."""
    return run_dir(stage, run_id) / "episodes"


#: The tables a chapter writes and another one reads (the results chapter): name -> (stage, file name).
TABLES = {
    "taxonomy_summary": ("overfitting", "taxonomy_summary.csv"),
    "main_table": ("generalization", "main_table.csv"),
    "robustness": ("robustness", "robustness_{suite}.csv"),
    "best_of_n": ("diversity", "best_of_n.csv"),
    "ablation_table": ("ablations", "ablation_table.csv"),
    "scaling": ("ablations", "scaling.csv"),
}


def table_path(name: str, run_id: str, **fields: str) -> Path:
    """Where the table ``name`` (a key of :data:`TABLES`) of run ``run_id`` is, e.g.
    ``table_path("robustness", "default", suite="household_held_in")``."""
    if name not in TABLES:
        raise ValueError(f"unknown table {name!r}; known: {sorted(TABLES)}")
    stage, file = TABLES[name]
    return run_dir(stage, run_id) / file.format(**fields)
