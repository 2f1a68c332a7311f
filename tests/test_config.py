"""refinelib.config: the shared episode settings, one YAML per profile."""

from __future__ import annotations

import dataclasses

import pytest

from refinelib import config


def write(tmp_path, profile: str, text: str):
    (tmp_path / profile).mkdir(parents=True, exist_ok=True)
    path = tmp_path / profile / config.EPISODES_FILE
    path.write_text(text)
    return path


def test_the_defaults_are_the_default_books_and_every_field_says_what_it_is():
    assert dataclasses.asdict(config.EpisodeSettings()) == dict(
        scale="agentboard", max_instances=20, robustness_instances=4, max_steps=15, max_new_tokens=48,
        max_prompt_tokens=1280, batch_size=20)
    assert all(f.metadata.get("help") for f in dataclasses.fields(config.EpisodeSettings))


def test_a_missing_file_is_the_defaults(tmp_path):
    assert config.load_episode_settings("default", configs=tmp_path) == config.EpisodeSettings()
    (tmp_path / "quiet").mkdir()
    assert config.load_episode_settings("quiet", configs=tmp_path) == config.EpisodeSettings()


def test_a_file_sets_what_it_names_and_keeps_the_rest(tmp_path):
    write(tmp_path, "long", "max_instances: 60\nmax_steps: 20\n")
    settings = config.load_episode_settings("long", configs=tmp_path)
    assert (settings.max_instances, settings.max_steps, settings.batch_size) == (60, 20, 20)


def test_an_unknown_key_is_refused_naming_the_file_and_the_key(tmp_path):
    path = write(tmp_path, "typo", "max_step: 20\n")
    with pytest.raises(ValueError, match=rf"{path}: unknown episode setting 'max_step'; the settings are: "):
        config.load_episode_settings("typo", configs=tmp_path)


@pytest.mark.parametrize(("text", "error"), [
    ("scale: huge\n", "scale must be one of"),
    ("max_steps: 0\n", "max_steps must be an integer >= 1"),
    ("max_instances: -1\n", "max_instances must be an integer >= 0"),
    ("batch_size: true\n", "batch_size must be an integer"),
    ("[1, 2]\n", "expected a mapping"),
])
def test_a_bad_value_is_refused_naming_the_file(tmp_path, text, error):
    path = write(tmp_path, "bad", text)
    with pytest.raises(ValueError, match=error) as caught:
        config.load_episode_settings("bad", configs=tmp_path)
    assert str(path) in str(caught.value)


def test_an_unknown_profile_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown profile 'gpu'"):
        config.load_episode_settings("gpu", configs=tmp_path)


def test_overrides_then_smoke(tmp_path):
    write(tmp_path, "p", "max_instances: 60\n")
    settings = config.load_episode_settings("p", {"max_steps": 9}, configs=tmp_path)
    assert (settings.max_instances, settings.max_steps) == (60, 9)
    with pytest.raises(ValueError, match="episode_overrides: unknown episode setting 'steps'"):
        config.load_episode_settings("p", {"steps": 9}, configs=tmp_path)
    smoke = config.load_episode_settings("p", {"max_steps": 9}, smoke=True, configs=tmp_path)
    assert (smoke.max_instances, smoke.robustness_instances) == (1, 1)
    assert (smoke.max_steps, smoke.max_new_tokens) == (1, 16)


def test_evaluation_gives_the_keyword_arguments_of_evaluate_models():
    settings = config.EpisodeSettings(max_instances=0, robustness_instances=4)
    assert settings.evaluation("m") == dict(scale="agentboard", max_instances=None, max_steps=15,
                                            max_new_tokens=48, max_prompt_tokens=1280, batch_size=20,
                                            base_model="m")
    assert settings.evaluation("m", instances=settings.robustness_instances)["max_instances"] == 4


def test_settings_made_any_way_are_checked():
    with pytest.raises(ValueError, match="max_steps must be an integer >= 1, got 0"):
        config.EpisodeSettings(max_steps=0)
    with pytest.raises(ValueError, match="episode_overrides: batch_size must be an integer"):
        config.EpisodeSettings().with_overrides({"batch_size": "8"})
