"""Where refinelib keeps generated data: a cache for environment instances, artifacts for runs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """Directory for regenerable data (generated games, problems, converted models).

    Set ``REFINELIB_CACHE`` to move it; the default is ``~/.cache/refinelib``.
    """
    root = Path(os.environ.get("REFINELIB_CACHE", Path.home() / ".cache" / "refinelib"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file and a rename: readers (and parallel workers)
    never see half a file, and a killed writer leaves the old file or none."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def artifacts_dir(*parts: str) -> Path:
    """Directory for run outputs (``REFINELIB_ARTIFACTS``, default ``./artifacts``)."""
    root = Path(os.environ.get("REFINELIB_ARTIFACTS", "artifacts"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
