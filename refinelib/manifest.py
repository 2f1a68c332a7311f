"""Run manifests: written last, so "the manifest exists" means "the step completed".

A manifest written while a book chapter runs names that chapter (``notebook``: ``make book`` and the
notebook tests set ``REFINELIB_NOTEBOOK``), and :func:`this_build` tells whether it was written by the
chapter run that ``book/executed/<notebook>.run.json`` records, so the results chapters show this build's
outputs and never a leftover of an earlier build or of a smoke run.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

from refinelib.runs import write_json_atomic

NOTEBOOK_ENV = "REFINELIB_NOTEBOOK"  # the chapter being executed (set around papermill runs)
CLOCK_SLACK_S = 2  # manifest and run-record times have one-second resolution
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"

PACKAGES = ("refinelib", "torch", "transformers", "peft", "datasets", "minigrid", "scienceworld",
            "textworld", "alfworld", "pyperplan", "openai")


def package_versions(names=PACKAGES) -> dict[str, str | None]:
    """Installed versions of the packages a result depends on (None when absent)."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_revision(cwd: str | Path | None = None) -> str:
    """The current commit (with ``-dirty`` when the tree has changes), or ``unknown``."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_manifest(directory: str | Path, **fields) -> Path:
    """Write ``manifest.json`` in ``directory`` atomically, with versions, revision and time added, and
    ``notebook`` (the chapter being executed, from ``REFINELIB_NOTEBOOK``) when not given."""
    directory = Path(directory)
    running = os.environ.get(NOTEBOOK_ENV)
    if running and fields.setdefault("notebook", running) != running:
        raise ValueError(f"write_manifest: notebook={fields['notebook']!r}, but {running} is the notebook "
                         "being executed")
    directory.mkdir(parents=True, exist_ok=True)
    record = {**fields, "packages": package_versions(), "git_revision": git_revision(),
              "python": platform.python_version(), "written": time.strftime(TIME_FORMAT)}
    # a unique temporary name: two runs finishing in one folder never write into the same file
    return write_json_atomic(directory / "manifest.json", record, default=str)


# ----- this build's runs -------------------------------------------------------------------------------
def read_manifest(directory: str | Path) -> dict | None:
    """The manifest of the run in ``directory`` (None when the run did not complete)."""
    path = Path(directory) / "manifest.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def this_build(manifest: dict, executed_dir: str | Path, smoke: bool) -> str | None:
    """None when ``manifest`` was written by this build, else why not: its chapter has a run record in
    ``executed_dir`` (``<notebook>.run.json``), wrote the manifest while that run lasted, and ran in the
    same mode (``smoke``, when the manifest records it)."""
    notebook = manifest.get("notebook")
    if not notebook:
        return "its manifest names no chapter"
    record_path = Path(executed_dir) / f"{notebook}.run.json"
    if not record_path.is_file():
        return f"{notebook} has no run record in {executed_dir}"
    if "smoke" in manifest and bool(manifest["smoke"]) != bool(smoke):  # (a model's own manifest has none)
        return "a smoke run" if manifest["smoke"] else "not a smoke run"
    record = json.loads(record_path.read_text(encoding="utf-8"))
    finished = _time(record["finished"])
    written = _time(manifest["written"])
    start = finished - record["seconds"]
    if not start - CLOCK_SLACK_S <= written <= finished + CLOCK_SLACK_S:
        return f"left over from an earlier run (written {manifest['written']}, {notebook} ran until " \
               f"{record['finished']})"
    return None


def build_manifests(executed_dir: str | Path, smoke: bool, root: str | Path | None = None) -> dict[str, dict]:
    """``{run folder: manifest}`` (folders relative to the artifacts folder ``root``) of this build: the
    runs its chapters wrote (:func:`this_build`), and the earlier runs that one of those names in its
    manifest (a model trained by an earlier build with the same identity; marked ``reused: True``)."""
    from refinelib.paths import artifacts_dir

    root = Path(root) if root is not None else artifacts_dir()
    found = {p.parent.relative_to(root).as_posix(): json.loads(p.read_text(encoding="utf-8"))
             for p in sorted(root.rglob("manifest.json"))}
    mine = {name: m for name, m in found.items() if this_build(m, executed_dir, smoke) is None}
    named = " ".join(json.dumps(m) for m in mine.values())
    return {name: m if name in mine else {**m, "reused": True} for name, m in found.items()
            if name in mine or f"{name}\"" in named or f"{name}/" in named}


def _time(text: str) -> float:
    from datetime import datetime

    return datetime.strptime(text, TIME_FORMAT).timestamp()
