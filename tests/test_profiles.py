"""Every profile under configs/ sets only parameters its notebooks have, with values of the notebook
default's type; the episode settings that chapters 01, 04 and 05 share (their logs) live once per profile,
in ``configs/<profile>/episodes.yaml`` (refinelib.config), and no chapter or chapter file re-types them."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import nbformat
import pytest
import yaml

from refinelib import config
from refinelib.report.runbook import notebook_parameters, profile_parameters

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
PROFILES = sorted(p.name for p in CONFIGS.iterdir() if p.is_dir() and p.name != "accelerate")
SHARED = ("01_overfitting_analysis", "04_generalization", "05_robustness")  # one episode log per model
SHARING = ("06_diversity", "07_ablations")  # the shared settings too, when a profile sets shared_episodes
FIELDS = {f.name for f in dataclasses.fields(config.EpisodeSettings)}
# What each profile played before the settings moved into episodes.yaml (chapters 01 / 04 with
# max_instances, 05 with robustness_instances): the move changes no run.
BEFORE = {
    "default": dict(scale="agentboard", max_instances=20, robustness_instances=4, max_steps=15,
                    max_new_tokens=48, max_prompt_tokens=1280, batch_size=20),
    "cpu-long": dict(scale="agentboard", max_instances=60, robustness_instances=40, max_steps=20,
                     max_new_tokens=48, max_prompt_tokens=1280, batch_size=20),
    "paper": dict(scale="agentboard", max_instances=0, robustness_instances=0, max_steps=30,
                  max_new_tokens=256, max_prompt_tokens=7000, batch_size=64),
}
# Chapters 06 and 07 with shared_episodes: what the profile's own file set before (07's batch_size is its
# training batch, not an episode setting).
BEFORE_SHARING = {
    ("paper", "06_diversity"): dict(scale="agentboard", max_steps=30, max_new_tokens=256,
                                    max_prompt_tokens=7000, batch_size=64),
    ("paper", "07_ablations"): dict(scale="agentboard", max_steps=30, max_new_tokens=256,
                                    max_prompt_tokens=7000),
    ("cpu-long", "07_ablations"): dict(scale="agentboard", max_steps=20, max_new_tokens=48,
                                       max_prompt_tokens=1280),
}


def defaults(notebook: Path) -> dict:
    """The notebook's parameter cell, evaluated (its values are literals)."""
    cell = next(c for c in nbformat.read(notebook, as_version=4).cells
                if "parameters" in c.metadata.get("tags", []))
    return {t.id: ast.literal_eval(n.value) for n in ast.parse(cell.source).body
            if isinstance(n, ast.Assign) for t in n.targets}


@pytest.mark.parametrize("profile", PROFILES)
def test_a_profile_sets_only_known_parameters_of_the_right_type(profile):
    files = sorted((CONFIGS / profile).glob("*.yaml"))
    notebooks = {p.stem: p for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert files
    for f in files:
        if f.name == config.EPISODES_FILE:  # the shared episode settings: tested below
            continue
        if f.stem not in notebooks:
            assert profile == "paper" and f.stem == "train_refine", f"{f}: no notebook {f.stem}"
            continue
        nb = notebooks[f.stem]
        params = profile_parameters(nb, profile, CONFIGS)
        unknown = set(params) - set(notebook_parameters(nb))
        assert not unknown, f"{f}: unknown parameters {unknown}"
        default = defaults(nb)
        for k, v in params.items():
            if default[k] is not None and not isinstance(default[k], bool):
                kinds = (int, float) if isinstance(default[k], (int, float)) else type(default[k])
                assert isinstance(v, kinds) or (k == "sizes" and all(isinstance(x, (int, str)) for x in v)), \
                    f"{f}: {k}={v!r}, the notebook's default is {default[k]!r}"


@pytest.mark.parametrize("stem", SHARED + SHARING)
def test_the_chapters_that_share_episode_logs_read_the_profiles_episode_settings(stem):
    params = notebook_parameters(ROOT / "notebooks" / f"{stem}.ipynb")
    assert {"profile", "episode_overrides"} <= set(params)
    if stem in SHARED:  # nothing left to keep equal by hand
        assert not FIELDS & set(params), f"{stem} re-types episode settings {sorted(FIELDS & set(params))}"
    else:
        assert params["shared_episodes"] is False  # the default book: short episodes of their own


@pytest.mark.parametrize("profile", ["default", *PROFILES])
def test_the_profiles_episode_settings_are_what_the_chapters_played_before(profile):
    settings = config.load_episode_settings(profile, configs=CONFIGS)
    assert dataclasses.asdict(settings) == BEFORE[profile]
    for stem in SHARED:  # no chapter file sets them aside from episodes.yaml
        assert not FIELDS & set(profile_parameters(ROOT / "notebooks" / f"{stem}.ipynb", profile, CONFIGS))


@pytest.mark.parametrize("profile", PROFILES)
def test_chapters_06_and_07_with_shared_episodes_play_what_their_files_set_before(profile):
    settings = dataclasses.asdict(config.load_episode_settings(profile, configs=CONFIGS))
    for stem in SHARING:
        params = profile_parameters(ROOT / "notebooks" / f"{stem}.ipynb", profile, CONFIGS)
        shared = params.get("shared_episodes", False)
        assert shared == ((profile, stem) in BEFORE_SHARING), (profile, stem)
        if shared:  # the file sets no episode setting it would not use
            assert not {"scale", "max_steps", "max_new_tokens", "max_prompt_tokens"} & set(params)
            expected = BEFORE_SHARING[(profile, stem)]
            assert {k: settings[k] for k in expected} == expected


def test_every_episodes_file_is_a_mapping_of_known_settings():
    files = sorted(CONFIGS.glob(f"*/{config.EPISODES_FILE}"))
    assert {f.parent.name for f in files} >= {"cpu-long", "paper"}
    for f in files:
        assert set(yaml.safe_load(f.read_text())) <= FIELDS, f
