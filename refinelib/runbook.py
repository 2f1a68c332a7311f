"""Execute one book notebook with papermill: ``python -m refinelib.runbook SRC OUT [--profile P] [-p k v]``.

Parameters come from ``configs/<profile>/<notebook name>.yaml`` when that file exists, then from
``-p`` pairs. The executed notebook is written atomically (an interrupted run leaves no half file),
papermill's injected-parameters cell is tagged ``remove-cell`` for the book, and a small run record
(``OUT`` with ``.run.json``: parameters, seconds, git revision) is written last.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml

from .manifest import git_revision


def profile_parameters(notebook: Path, profile: str, configs: Path = Path("configs")) -> dict:
    """The parameters a profile sets for ``notebook`` (empty when the profile has no file for it)."""
    path = configs / profile / f"{notebook.stem}.yaml"
    if profile != "default" and not (configs / profile).is_dir():
        known = sorted(p.name for p in configs.iterdir() if p.is_dir()) if configs.is_dir() else []
        raise SystemExit(f"unknown profile {profile!r}: no folder {configs / profile} (known: {known})")
    if not path.exists():
        return {}
    params = yaml.safe_load(path.read_text()) or {}
    if not isinstance(params, dict):
        raise SystemExit(f"{path}: expected a mapping of parameter names to values")
    return params


def execute(src: Path, out: Path, parameters: dict) -> dict:
    """Run ``src`` through papermill into ``out``; return the run record."""
    import nbformat
    import papermill

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.partial.ipynb")
    start = time.time()
    papermill.execute_notebook(str(src), str(tmp), parameters=parameters, kernel_name="python3",
                               cwd=str(Path.cwd()), progress_bar=False)
    seconds = round(time.time() - start, 1)
    nb = nbformat.read(tmp, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
    nbformat.write(nb, tmp)
    os.replace(tmp, out)
    record = {"notebook": src.name, "parameters": parameters, "seconds": seconds,
              "git_revision": git_revision(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    out.with_suffix(".run.json").write_text(json.dumps(record, indent=2))
    return record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--profile", default=os.environ.get("PROFILE", "default"))
    ap.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="override one parameter (YAML value)")
    args = ap.parse_args(argv)
    params = profile_parameters(args.src, args.profile)
    params.update({k: yaml.safe_load(v) for k, v in args.p})
    record = execute(args.src, args.out, params)
    print(f"{args.src} -> {args.out} in {record['seconds']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
