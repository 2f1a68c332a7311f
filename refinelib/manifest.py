"""Run manifests: written last, so "the manifest exists" means "the step completed"."""

from __future__ import annotations

import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

from refinelib.runs import write_json_atomic

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
    """Write ``manifest.json`` in ``directory`` atomically, with versions, revision and time added."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    record = {**fields, "packages": package_versions(), "git_revision": git_revision(),
              "python": platform.python_version(), "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    # a unique temporary name: two runs finishing in one folder never write into the same file
    return write_json_atomic(directory / "manifest.json", record, default=str)
