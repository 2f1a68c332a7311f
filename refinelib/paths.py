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
