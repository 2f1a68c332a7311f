"""Tests for the TextWorld adventure family (the Jericho stand-in).

Generating the 8 games of the small suite costs ~35 CPU-seconds the first time (about 2 min wall on
a loaded 2-core machine); they are cached under ``REFINELIB_CACHE`` and later runs take ~12 s.
"""

import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("textworld")

from env_contract import (  # noqa: E402
    assert_deterministic,
    assert_invalid_action_keeps_state,
    assert_oracle_solves,
    partial_progress,
)

from refinelib.envs import textadventure as ta  # noqa: E402
from refinelib.envs.base import BackendMissing  # noqa: E402
from refinelib.envs.rollout import play  # noqa: E402

SMALL = ta.instances("small")


@pytest.fixture(scope="module")
def envs():
    """One environment per (task, difficulty), shared by the tests of this module."""
    made = {}
    yield lambda task, difficulty: made.setdefault(
        (task, difficulty), ta.TextAdventureEnv(task, difficulty=difficulty))
    for env in made.values():
        env.close()


def _env(envs, inst):
    return envs(inst.task, dict(inst.options)["difficulty"])


@pytest.mark.parametrize("inst", SMALL, ids=[i.id for i in SMALL])
def test_oracle_solves_small_suite(envs, inst):
    assert_oracle_solves(_env(envs, inst), inst.seed, max_steps=60)


@pytest.mark.parametrize("task", ["treasure_hunter", "cooking"])
def test_invalid_action_keeps_state(envs, task, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a stray "save" would write a file here
    env = envs(task, "hard")
    assert_invalid_action_keeps_state(env, 0, "dance wildly")
    assert env.step("dance wildly").observation == "That's not a verb I recognise."
    before = env.snapshot()
    for bad in ["take unicorn", "save", "restart", "quit"]:
        step = env.step(bad)
        assert not step.valid and step.observation and env.snapshot() == before
    assert list(tmp_path.iterdir()) == []


def test_synonym_the_game_would_obey_is_rejected_without_effect(envs):
    env = envs("coin_collector", "easy")
    start = env.reset(0)
    go = next(a for a in start.valid_actions if a.startswith("go "))
    before = env.snapshot()
    step = env.step(go.split()[1])  # "north" moves the player in the real game
    assert not step.valid and step.observation == ta.REJECTED
    assert env.snapshot() == before
    assert env.step(go.upper()).valid  # the parser ignores case, so do we


def test_deterministic(envs):
    assert_deterministic(envs("cooking", "hard"), 0)
    assert_deterministic(envs("custom", "easy"), 0)


def test_partial_progress(envs):
    progress = partial_progress(envs("cooking", "hard"), 0)
    assert 0.0 < progress < 1.0


def test_progress_counts_the_remaining_plan(envs):
    env = envs("treasure_hunter", "hard")
    env.reset(0)
    plan = len(env._info["policy_commands"])
    step = env.step(env.oracle_action())
    assert step.progress == pytest.approx(1 / plan)


def test_losing_ends_without_full_progress(envs):
    """Eating an ingredient loses a cooking game; the empty plan must not read as progress 1."""
    env = envs("cooking", "easy")
    env.reset(0)
    while not env.done:
        eat = [a for a in env.valid_actions() if a.startswith("eat ") and a != "eat meal"]
        step = env.step(eat[0] if eat else env.oracle_action())
        if eat:
            break
    assert eat and step.done and not step.success and step.progress < 1.0


def test_first_observation_has_no_banner_and_no_objective(envs):
    for task in ta.TASKS:
        start = envs(task, "easy").reset(0)
        assert start.goal and start.observation.startswith("-= ")
        assert "$$" not in start.observation and start.goal not in start.observation


def test_clean_text_strips_banner_prompt_status_and_tags():
    raw = (
        "\n\n\n                    ________  ________\n"
        "                   |        \\|        \\\n"
        "                    \\$$$$$$$$| $$$$$$$$\n\n"
        "Get the coin. That's it!\n\n-= Attic =-\nA dusty attic.\n\n\n\n"
        "There is a coin on the floor.\n\n"
        ">                                                  -= Attic =-0/1"
    )
    assert ta.clean_text(raw, "Get the coin. That's it!") == (
        "-= Attic =-\nA dusty attic.\n\nThere is a coin on the floor.")
    traced = "\n[taking]\nYou take it.\n[taking - succeeded]\n\n<score>\n1\n</score>\n>  "
    assert ta.clean_text(traced) == "You take it."


# ----- the game cache ---------------------------------------------------------------------------
@pytest.fixture
def fake_generation(monkeypatch, tmp_path):
    """A private cache and a generator that copies a real cached game (no TextWorld run)."""
    real = ta.game_file("custom", "easy", 0)
    monkeypatch.setenv("REFINELIB_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake(task, difficulty, seed, folder):
        calls.append(seed)
        for suffix in (".z8", ".json"):
            shutil.copy(real.with_suffix(suffix), Path(folder) / ta.GAME.replace(".z8", suffix))
        return Path(folder) / ta.GAME

    monkeypatch.setattr(ta, "generate_game", fake)
    return calls


def test_cache_is_reused_and_regenerated_when_deleted(fake_generation):
    path = ta.game_file("custom", "easy", 7)
    assert path.is_file() and fake_generation == [7]
    assert ta.game_file("custom", "easy", 7) == path and fake_generation == [7]
    shutil.rmtree(path.parent)
    assert ta.game_file("custom", "easy", 7).is_file() and fake_generation == [7, 7]
    path.with_suffix(".json").unlink()  # half a game (e.g. edited by hand) is regenerated too
    assert ta.game_file("custom", "easy", 7).with_suffix(".json").is_file()
    assert [p.name for p in path.parent.parent.iterdir()] == ["7"]  # no temporary folders left


def test_cache_tolerates_losing_the_race(fake_generation, monkeypatch):
    first = ta.generate_game

    def racing(task, difficulty, seed, folder):
        final = Path(folder).parent / str(seed)
        final.mkdir()
        first(task, difficulty, seed, final)  # another process finishes first
        return first(task, difficulty, seed, folder)

    monkeypatch.setattr(ta, "generate_game", racing)
    path = ta.game_file("custom", "easy", 3)
    assert path.is_file() and [p.name for p in path.parent.parent.iterdir()] == ["3"]


def test_cached_game_is_played_without_generating(monkeypatch):
    ta.game_file("custom", "easy", 0)
    monkeypatch.setattr(ta, "generate_game", lambda *a: pytest.fail("regenerated a cached game"))
    env = ta.TextAdventureEnv("custom", difficulty="easy")
    assert play(env, 0).success
    env.close()


# ----- instance lists and errors --------------------------------------------------------------
def test_instances():
    assert len(SMALL) == 8 and {i.task for i in SMALL} == set(ta.TASKS)
    board = ta.instances("agentboard")
    assert len(board) == 20 and len({i.id for i in board}) == 20
    assert [i.seed for i in ta.instances("small", ["cooking"], first_seed=5)] == [5, 5]
    with pytest.raises(ValueError, match="agentboard"):
        ta.instances("huge")
    with pytest.raises(ValueError, match="treasure_hunter"):
        ta.instances("small", ["zork1"])
    with pytest.raises(ValueError, match="easy"):
        ta.TextAdventureEnv("cooking", difficulty="nightmare")


def test_missing_backend_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "textworld", None)
    with pytest.raises(BackendMissing, match="textworld==1.7.0"):
        ta.TextAdventureEnv("cooking").reset(0)
