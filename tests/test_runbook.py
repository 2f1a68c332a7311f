"""runbook: parameters are checked against the notebook's parameters cell before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from refinelib.report import runbook

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "notebooks" / "00_environments.ipynb"


@pytest.fixture
def never_execute(monkeypatch):
    ran = []
    monkeypatch.setattr(runbook, "execute", lambda src, out, params: ran.append(params) or {"seconds": 0})
    monkeypatch.chdir(ROOT)
    return ran


def test_an_unknown_p_name_is_refused_before_running(never_execute, tmp_path):
    with pytest.raises(SystemExit, match=r"unknown parameters max_instancez \(-p\)") as err:
        runbook.main([str(CHAPTER), str(tmp_path / "out.ipynb"), "-p", "max_instancez", "3"])
    assert "smoke" in str(err.value)  # the message lists the real parameters
    assert never_execute == []


def test_an_unknown_name_in_a_profile_is_refused_naming_the_profile(never_execute, tmp_path, monkeypatch):
    configs = tmp_path / "configs" / "typo"
    configs.mkdir(parents=True)
    (configs / f"{CHAPTER.stem}.yaml").write_text("smokee: true\n")
    notebook = tmp_path / CHAPTER.name
    notebook.write_text(CHAPTER.read_text())
    monkeypatch.chdir(tmp_path)  # profiles are read from ./configs
    with pytest.raises(SystemExit, match=r"smokee \(profile typo\)"):
        runbook.main([str(notebook), str(tmp_path / "out.ipynb"), "--profile", "typo"])
    assert never_execute == []


def test_known_names_run_with_the_values_given(never_execute, tmp_path):
    runbook.main([str(CHAPTER), str(tmp_path / "out.ipynb"), "-p", "smoke", "true"])
    assert never_execute == [{"smoke": True}]


def test_the_run_record_is_written_whole(tmp_path, monkeypatch):
    import papermill

    def fake_execute(src, dst, **kwargs):  # papermill's job is tested upstream; the record is ours
        Path(dst).write_text(Path(src).read_text())

    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    out = tmp_path / "executed" / "00.ipynb"
    record = runbook.execute(CHAPTER, out, {"smoke": True})
    assert json.loads(out.with_suffix(".run.json").read_text()) == record
    assert not list(out.parent.glob(".*tmp"))  # no temporary file left behind
