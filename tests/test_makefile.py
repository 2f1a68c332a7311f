"""`make book` re-runs exactly the chapters an edit can change (checked with `make -n` on a copy).

The copy has the real Makefile, notebooks, package and profiles; every executed chapter is made up to
date (older inputs, newer outputs), then one input is edited and `make -n book` lists the chapters it
would run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def _chapters(*numbers: str) -> set[str]:
    return {c for c in CHAPTERS if c[:2] in numbers}


ALL = set(CHAPTERS)
PROMPT_CHAPTERS = ALL - _chapters("00")  # every chapter but the oracle survey renders prompts or follows one


@pytest.fixture
def tree(tmp_path):
    """A copy of what `make book` reads, with every chapter already executed (profile ``default``)."""
    for name in ("Makefile", "pyproject.toml", "constraints-cpu.txt"):
        shutil.copy(ROOT / name, tmp_path / name)
    if os.environ.get("MAKEFILE_UNDER_TEST"):  # to check these tests against another Makefile
        shutil.copy(os.environ["MAKEFILE_UNDER_TEST"], tmp_path / "Makefile")
    for name in ("notebooks", "refinelib", "configs"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    for name in (".venv/bin/python", ".venv/.installed"):
        (tmp_path / name).touch()
    _age(tmp_path, 1_000_000)
    executed = tmp_path / "book" / "executed"
    executed.mkdir(parents=True)
    for chapter in CHAPTERS:
        (executed / f"{chapter}.ipynb").touch()
    assert _reruns(tmp_path) == ALL  # executed without a record of their parameters: not trusted
    assert (executed / ".params" / CHAPTERS[0]).read_text() == "default none\n"
    _age(executed, 500_000)  # executed (parameters recorded) after every input changed
    assert _reruns(tmp_path) == set(), "the copy should start up to date"
    return tmp_path


def _age(folder: Path, seconds_ago: int) -> None:
    stamp = int(time.time()) - seconds_ago
    for path in [folder, *folder.rglob("*")]:
        os.utime(path, (stamp, stamp), follow_symlinks=False)


def _reruns(tree: Path, *args: str) -> set[str]:
    """The chapters `make -n book` would execute."""
    env = {k: v for k, v in os.environ.items() if k not in ("PROFILE", "REFINELIB_ARTIFACTS", "MAKEFLAGS")}
    done = subprocess.run(["make", "-n", "book", *args], cwd=tree, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    return set(re.findall(r"-m refinelib\.report\.runbook notebooks/(\S+)\.ipynb", done.stdout))


def _edit(path: Path, old: str | None = None, new: str = "") -> None:
    text = path.read_text()
    path.write_text(text.replace(old, new, 1) if old else text + new)


def test_a_prompt_edit_reruns_the_chapters_that_render_prompts_and_those_downstream(tree):
    _edit(tree / "refinelib/prompts/agent_pddl.jinja", new="\n")
    assert _reruns(tree) == PROMPT_CHAPTERS
    assert "00_environments" not in PROMPT_CHAPTERS and "01_overfitting_analysis" in PROMPT_CHAPTERS


def test_a_teacher_prompt_edit_reruns_the_synthesis_and_everything_after_it(tree):
    _edit(tree / "refinelib/prompts/synth_script.jinja", new="\n")
    assert _chapters("02", "03", "04", "08", "09") <= _reruns(tree) == PROMPT_CHAPTERS


@pytest.mark.parametrize("data_file", ["refinelib/synth/personas.yaml",
                                       "refinelib/envs/pddl_domains/gripper.pddl"])
def test_a_package_data_file_is_a_dependency(tree, data_file):
    _edit(tree / data_file, new="\n")
    assert _reruns(tree) == ALL


def test_an_environment_version_bump_reruns_every_chapter(tree):
    """Every chapter plays or reads episodes of the environments (the logs they re-use are then checked
    against the new version: tests/test_evaluate.py)."""
    _edit(tree / "refinelib/envs/pddl.py", '    version = "1"', '    version = "2"')
    assert _reruns(tree) == ALL


def _executed_now(tree: Path) -> None:
    """Pretend `make book` ran: every executed chapter newer than its parameter record."""
    time.sleep(0.01)
    for chapter in CHAPTERS:
        (tree / "book" / "executed" / f"{chapter}.ipynb").touch()


def test_a_profile_yaml_edit_reruns_that_chapter_and_those_downstream(tree):
    assert _reruns(tree, "PROFILE=paper") == ALL  # switching profile re-runs everything ...
    record = tree / "book" / "executed" / ".params" / "04_generalization"
    assert record.read_text().startswith("paper ") and "none" not in record.read_text()
    _executed_now(tree)  # ... which we pretend happened
    assert _reruns(tree, "PROFILE=paper") == set()
    _edit(tree / "configs/paper/04_generalization.yaml", new="\n# a comment\n")
    assert _reruns(tree, "PROFILE=paper") == _chapters("04", "05", "06", "07", "08", "09")


def test_removing_a_chapters_profile_file_reruns_it(tree):
    _reruns(tree, "PROFILE=paper")
    _executed_now(tree)
    (tree / "configs/paper/07_ablations.yaml").unlink()  # back to the notebook's own defaults
    assert _reruns(tree, "PROFILE=paper") == _chapters("07", "08", "09")


def test_touching_a_profile_file_without_changing_it_reruns_nothing(tree):
    _reruns(tree, "PROFILE=paper")
    _executed_now(tree)
    (tree / "configs/paper/02_refinement_synthesis.yaml").touch()
    assert _reruns(tree, "PROFILE=paper") == set()


def test_another_profiles_yaml_does_not_rerun_the_default_book(tree):
    _edit(tree / "configs/paper/04_generalization.yaml", new="\n")
    assert _reruns(tree) == set()


def test_switching_profile_back_and_forth_reruns_everything_each_time(tree):
    assert _reruns(tree, "PROFILE=paper") == ALL
    assert _reruns(tree) == ALL  # the stamp says paper now: back to default re-runs too


def test_adding_a_file_to_the_profile_reruns_its_chapter_and_those_downstream(tree):
    (tree / "configs" / "default").mkdir()
    (tree / "configs" / "default" / "05_robustness.yaml").write_text("smoke: false\n")
    assert _reruns(tree) == _chapters("05", "06", "07", "08", "09")


EPISODE_CHAPTERS = _chapters("01", "04", "05", "06", "07", "08", "09")  # read the episode settings, or follow


def test_an_episode_settings_edit_reruns_the_evaluation_chapters_and_those_downstream(tree):
    """configs/<profile>/episodes.yaml (refinelib.config) is read by 01, 04 and 05 (and 06 / 07)."""
    assert _reruns(tree, "PROFILE=cpu-long") == ALL
    record = tree / "book" / "executed" / ".params" / "episodes"
    assert record.read_text().startswith("cpu-long ") and "none" not in record.read_text()
    _executed_now(tree)
    assert _reruns(tree, "PROFILE=cpu-long") == set()
    _edit(tree / "configs/cpu-long/episodes.yaml", "max_steps: 20", "max_steps: 25")
    assert _reruns(tree, "PROFILE=cpu-long") == EPISODE_CHAPTERS
    assert not _chapters("00", "02", "03") & EPISODE_CHAPTERS


def test_adding_episode_settings_to_the_default_profile_reruns_the_evaluation_chapters(tree):
    assert (tree / "book" / "executed" / ".params" / "episodes").read_text() == "default none\n"
    (tree / "configs" / "default").mkdir()
    (tree / "configs" / "default" / "episodes.yaml").write_text("max_instances: 5\n")
    assert _reruns(tree) == EPISODE_CHAPTERS


def test_touching_the_episode_settings_without_changing_them_reruns_nothing(tree):
    _reruns(tree, "PROFILE=paper")
    _executed_now(tree)
    (tree / "configs/paper/episodes.yaml").touch()
    assert _reruns(tree, "PROFILE=paper") == set()


def test_another_profiles_episode_settings_do_not_rerun_the_default_book(tree):
    _edit(tree / "configs/paper/episodes.yaml", new="\n")
    assert _reruns(tree) == set()


def test_clean_says_what_it_removes_and_distclean_removes_the_artifacts(tree):
    (tree / "artifacts" / "evaluation").mkdir(parents=True)
    (tree / "_build").mkdir()
    clean = subprocess.run(["make", "clean"], cwd=tree, capture_output=True, text=True)
    assert clean.returncode == 0
    assert "removing _build/" in clean.stdout and "keeping artifacts/" in clean.stdout
    assert not (tree / "book" / "executed").exists() and not (tree / "_build").exists()
    assert (tree / "artifacts").is_dir()
    dist = subprocess.run(["make", "distclean"], cwd=tree, capture_output=True, text=True)
    assert dist.returncode == 0 and "removing artifacts/" in dist.stdout
    assert not (tree / "artifacts").exists()


def test_each_chapter_runs_with_its_name_in_refinelib_notebook(tree):
    """The manifests a chapter writes name it (refinelib.manifest reads REFINELIB_NOTEBOOK)."""
    python = tree / ".venv" / "bin" / "python"
    python.write_text('#!/bin/sh\necho "$REFINELIB_NOTEBOOK" >> ran.txt\n')
    python.chmod(0o755)  # an order-only prerequisite of the environment: editing it re-installs nothing
    _edit(tree / "notebooks" / "07_ablations.ipynb", new=" ")
    done = subprocess.run(["make", "book/executed/07_ablations.ipynb"], cwd=tree, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert (tree / "ran.txt").read_text() == "07_ablations\n"


@pytest.mark.parametrize("where", ["/", "."])
def test_distclean_refuses_to_remove_the_root_or_the_checkout(tree, where):
    env = {**os.environ, "REFINELIB_ARTIFACTS": where}
    done = subprocess.run(["make", "distclean"], cwd=tree, capture_output=True, text=True, env=env)
    assert done.returncode != 0 and "refusing to remove" in done.stdout
    assert (tree / "Makefile").is_file()
