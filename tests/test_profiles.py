"""Every profile under configs/ sets only parameters its notebooks have, with values of the notebook
default's type, and keeps the episode settings that chapters 01, 04 and 05 share (their logs) equal."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

from refinelib.report.runbook import notebook_parameters, profile_parameters

ROOT = Path(__file__).resolve().parents[1]
PROFILES = sorted(p.name for p in (ROOT / "configs").iterdir() if p.is_dir() and p.name != "accelerate")
SHARED = ("01_overfitting_analysis", "04_generalization", "05_robustness")  # one episode log per model
EPISODE_SETTINGS = ("scale", "max_steps", "max_new_tokens", "max_prompt_tokens")


def defaults(notebook: Path) -> dict:
    """The notebook's parameter cell, evaluated (its values are literals)."""
    cell = next(c for c in nbformat.read(notebook, as_version=4).cells
                if "parameters" in c.metadata.get("tags", []))
    return {t.id: ast.literal_eval(n.value) for n in ast.parse(cell.source).body
            if isinstance(n, ast.Assign) for t in n.targets}


@pytest.mark.parametrize("profile", PROFILES)
def test_a_profile_sets_only_known_parameters_of_the_right_type(profile):
    files = sorted((ROOT / "configs" / profile).glob("*.yaml"))
    notebooks = {p.stem: p for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert files
    for f in files:
        if f.stem not in notebooks:
            assert profile == "paper" and f.stem == "train_refine", f"{f}: no notebook {f.stem}"
            continue
        nb = notebooks[f.stem]
        params = profile_parameters(nb, profile, ROOT / "configs")
        unknown = set(params) - set(notebook_parameters(nb))
        assert not unknown, f"{f}: unknown parameters {unknown}"
        default = defaults(nb)
        for k, v in params.items():
            if default[k] is not None and not isinstance(default[k], bool):
                kinds = (int, float) if isinstance(default[k], (int, float)) else type(default[k])
                assert isinstance(v, kinds) or (k == "sizes" and all(isinstance(x, (int, str)) for x in v)), \
                    f"{f}: {k}={v!r}, the notebook's default is {default[k]!r}"


@pytest.mark.parametrize("profile", ["default", *PROFILES])
def test_the_chapters_that_share_episode_logs_agree_on_the_episode_settings(profile):
    values = {}
    for stem in SHARED:
        nb = ROOT / "notebooks" / f"{stem}.ipynb"
        params = {**defaults(nb), **profile_parameters(nb, profile, ROOT / "configs")}
        values[stem] = {k: params[k] for k in EPISODE_SETTINGS}
    assert len({tuple(v.values()) for v in values.values()}) == 1, values
