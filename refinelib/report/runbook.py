"""Execute one book notebook with papermill.

``python -m refinelib.report.runbook SRC OUT [--profile P] [-p k v]``.

Parameters come from ``configs/<profile>/<notebook name>.yaml`` when that file exists, then from
``-p`` pairs; a notebook with a ``profile`` parameter is given the profile, so that it reads the
profile's shared episode settings (``configs/<profile>/episodes.yaml``, :mod:`refinelib.config`). The
executed notebook is written atomically (an interrupted run leaves no half file), papermill's
injected-parameters cell is tagged ``remove-cell`` for the book, and a small run record (``OUT`` with
``.run.json``: parameters, seconds, git revision, and the time of earlier attempts that were
interrupted) is written last.

``--rehearse`` runs a profile at the rehearsal's sizes (:data:`REHEARSAL_SIZES`): the same parameters,
hence the same code paths, with only sizes made tiny; the models (``base_model``, the teacher's ``model``
and ``base_url``) are given with ``-p``. ``tests/test_paper_profile.py`` rehearses ``PROFILE=paper`` this
way on a CPU with a tiny model and a local teacher endpoint.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
from pathlib import Path

import yaml

from refinelib.manifest import NOTEBOOK_ENV, git_revision
from refinelib.runs import write_json_atomic


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


# ----- rehearsals: a profile at tiny sizes -----------------------------------------------------------------
#: Parameters that are sizes: counts of instances, trajectories, records, samples or steps, and lengths in
#: tokens. Each value is a whole number, a list of them, or "all" (chapter 07's whole training split).
SIZE_KEYS = frozenset({
    "max_instances", "max_steps", "max_new_tokens", "max_prompt_tokens", "batch_size", "n_boot",
    "max_transcripts", "n_trajectories", "n_expert", "max_train_records", "max_validation_records",
    "max_length", "bon_instances", "n_samples", "heat_instances", "max_thoughts", "sizes", "steps",
    "validation_records", "eval_instances", "episode_overrides",
})
#: Parameters that name a model, or the endpoint that serves one: the rest of what a rehearsal changes.
MODEL_KEYS = frozenset({"base_model", "model", "base_url"})
#: The shared episode settings at a rehearsal's sizes (refinelib.config.EpisodeSettings fields; 01, 04 and 05
#: share their logs, and 06 and 07 read them when the profile sets their ``shared_episodes``).
EPISODE = {"episode_overrides": {"max_instances": 1, "robustness_instances": 1, "max_steps": 2,
                                 "max_new_tokens": 8}}
#: Per notebook, the sizes a rehearsal uses in place of the profile's (sizes only: see SIZE_KEYS).
REHEARSAL_SIZES: dict[str, dict] = {
    "00_environments": {"max_instances": 1},
    "01_overfitting_analysis": EPISODE,
    "02_refinement_synthesis": {"n_trajectories": 6, "n_expert": 3},
    "04_generalization": EPISODE,
    "05_robustness": EPISODE,
    "06_diversity": {"bon_instances": 1, "n_samples": 2, "max_steps": 2, "max_new_tokens": 8,
                     "heat_instances": 2, "max_thoughts": 100, **EPISODE},
    "07_ablations": {"sizes": [2, "all"], "steps": 2, "eval_instances": 1, "max_steps": 2,
                     "max_new_tokens": 8, **EPISODE},
}


def notebook_parameters(notebook: Path) -> dict:
    """The names and default values in ``notebook``'s ``parameters`` cell (literals only)."""
    nb = json.loads(Path(notebook).read_text())
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{notebook}: expected one cell tagged 'parameters', found {len(cells)}")
    values = {}
    for node in ast.parse("".join(cells[0]["source"])).body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    values[target.id] = ast.literal_eval(node.value)
    return values


def runner_parameters(notebook: Path, profile: str) -> dict:
    """What the runner itself gives ``notebook``: the ``profile``, when the notebook has that parameter (it
    reads the profile's shared episode settings with it)."""
    return {"profile": profile} if "profile" in notebook_parameters(notebook) else {}


def rehearsal_parameters(notebook: Path, profile: str = "paper", models: dict | None = None,
                         configs: Path = Path("configs")) -> dict:
    """``profile``'s parameters for ``notebook`` with :data:`REHEARSAL_SIZES` and the given ``models``
    (keys of :data:`MODEL_KEYS`, each applied where the notebook has that parameter).

    Raises:
        ValueError: a ``models`` key that is not a model parameter.
    """
    models = dict(models or {})
    wrong = sorted(set(models) - MODEL_KEYS)
    if wrong:
        raise ValueError(f"rehearsal models: {wrong} are not model parameters ({sorted(MODEL_KEYS)})")
    names = notebook_parameters(notebook)
    params = {**profile_parameters(notebook, profile, configs), **runner_parameters(notebook, profile)}
    params.update(REHEARSAL_SIZES.get(Path(notebook).stem, {}))
    params.update({k: v for k, v in models.items() if k in names})
    return params


STAMP = "%Y-%m-%dT%H:%M:%S%z"  # the run record's times


def _attempts_path(out: Path) -> Path:
    """Where the attempts at ``out`` are kept until one finishes."""
    return out.with_name(f".{out.stem}.attempts.json")


def _begin_attempt(out: Path, tmp: Path, start: float) -> list[dict]:
    """The earlier unfinished attempts at ``out`` (``{"started": epoch seconds, "seconds": ...}``), with
    this one, started at ``start``, added to their file.

    A chapter whose episodes are logged resumes where an interrupted attempt stopped, so the time of that
    attempt is part of what the chapter cost. An attempt that failed wrote its end; one killed outright
    (a session ending, SIGKILL) did not: it is taken to have lasted until papermill last saved its partial
    notebook (at every cell, and every 30 s of output), which can only underestimate it."""
    path = _attempts_path(out)
    earlier = json.loads(path.read_text()) if path.exists() else []
    if earlier and earlier[-1].get("seconds") is None:
        last = earlier[-1]
        end = tmp.stat().st_mtime if tmp.exists() else last["started"]
        last["seconds"] = round(max(0.0, end - last["started"]), 1)
    write_json_atomic(path, [*earlier, {"started": start, "seconds": None}])
    return earlier


def _end_attempt(out: Path, seconds: float) -> None:
    """Write the end of this attempt, which failed (the next attempt counts it as an earlier one)."""
    path = _attempts_path(out)
    attempts = json.loads(path.read_text())
    attempts[-1]["seconds"] = round(seconds, 1)
    write_json_atomic(path, attempts)


def execute(src: Path, out: Path, parameters: dict) -> dict:
    """Run ``src`` through papermill into ``out``; return the run record.

    The record's ``seconds`` is this attempt's; earlier unfinished attempts at the same output (a chapter
    that was interrupted and resumed) are listed in ``earlier_attempts`` and added into
    ``seconds_with_earlier_attempts``."""
    import nbformat
    import papermill

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.partial.ipynb")
    start = time.time()
    earlier = _begin_attempt(out, tmp, start)
    saved = os.environ.get(NOTEBOOK_ENV)
    os.environ[NOTEBOOK_ENV] = Path(src).stem  # the chapter's manifests name it (what make book sets too)
    try:
        papermill.execute_notebook(str(src), str(tmp), parameters=parameters, kernel_name="python3",
                                   cwd=str(Path.cwd()), progress_bar=False)
    except BaseException:
        _end_attempt(out, time.time() - start)
        raise
    finally:
        os.environ.pop(NOTEBOOK_ENV) if saved is None else os.environ.__setitem__(NOTEBOOK_ENV, saved)
    seconds = round(time.time() - start, 1)
    nb = nbformat.read(tmp, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
    nbformat.write(nb, tmp)
    os.replace(tmp, out)
    record = {"notebook": src.name, "parameters": parameters, "seconds": seconds,
              "git_revision": git_revision(), "finished": time.strftime(STAMP)}
    if earlier:
        record["earlier_attempts"] = [
            {"started": time.strftime(STAMP, time.localtime(a["started"])),
             "seconds": a["seconds"]} for a in earlier]
        record["seconds_with_earlier_attempts"] = round(seconds + sum(a["seconds"] for a in earlier), 1)
    write_json_atomic(out.with_suffix(".run.json"), record)
    _attempts_path(out).unlink()
    return record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--profile", default=os.environ.get("PROFILE", "default"))
    ap.add_argument("--rehearse", action="store_true",
                    help="the profile at the rehearsal's tiny sizes (give the models with -p)")
    ap.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="override one parameter (YAML value)")
    args = ap.parse_args(argv)
    if args.rehearse:
        params = rehearsal_parameters(args.src, args.profile)
    else:
        params = {**profile_parameters(args.src, args.profile), **runner_parameters(args.src, args.profile)}
    overrides = {k: yaml.safe_load(v) for k, v in args.p}
    # papermill only warns about a name the notebook does not have, and the run then silently uses the
    # default: refuse before anything runs, naming where each unknown name came from.
    known = notebook_parameters(args.src)
    unknown = [f"{k} ({'-p' if k in overrides else f'profile {args.profile}'})"
               for k in {**params, **overrides} if k not in known]
    if unknown:
        raise SystemExit(f"{args.src}: unknown parameters {', '.join(unknown)}; "
                         f"its parameters are: {', '.join(sorted(known))}")
    params.update(overrides)
    record = execute(args.src, args.out, params)
    print(f"{args.src} -> {args.out} in {record['seconds']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
