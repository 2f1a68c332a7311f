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


def copy_notebook(src, dst, **kwargs):  # papermill's job is tested upstream; the record is ours
    Path(dst).write_text(Path(src).read_text())


@pytest.fixture
def copy_only(monkeypatch):
    import papermill

    monkeypatch.setattr(papermill, "execute_notebook", copy_notebook)


def test_the_run_record_is_written_whole(tmp_path, copy_only):
    out = tmp_path / "executed" / "00.ipynb"
    record = runbook.execute(CHAPTER, out, {"smoke": True})
    assert json.loads(out.with_suffix(".run.json").read_text()) == record
    assert not list(out.parent.glob(".*tmp"))  # no temporary file left behind


def test_a_killed_attempt_counts_until_its_partial_notebook_was_last_saved(tmp_path, copy_only):
    import os
    import time

    out = tmp_path / "executed" / "00.ipynb"
    out.parent.mkdir()
    started = time.time() - 1000  # an attempt killed outright: it wrote its start, never its end
    (out.parent / ".00.attempts.json").write_text(json.dumps([{"started": started, "seconds": None}]))
    partial = out.parent / ".00.partial.ipynb"
    partial.write_text("{}")
    os.utime(partial, (started + 400, started + 400))  # papermill's last save of that attempt
    record = runbook.execute(CHAPTER, out, {"smoke": True})
    assert [a["seconds"] for a in record["earlier_attempts"]] == [400.0]
    assert record["seconds_with_earlier_attempts"] == pytest.approx(record["seconds"] + 400, abs=0.11)
    assert not (out.parent / ".00.attempts.json").exists()  # the next run starts afresh
    assert "earlier_attempts" not in runbook.execute(CHAPTER, out, {"smoke": True})


def test_a_failed_attempt_writes_its_end_and_the_next_run_counts_it(tmp_path, monkeypatch):
    import papermill

    def failing(src, dst, **kwargs):
        raise RuntimeError("a cell failed")

    monkeypatch.setattr(papermill, "execute_notebook", failing)
    out = tmp_path / "executed" / "00.ipynb"
    with pytest.raises(RuntimeError):
        runbook.execute(CHAPTER, out, {"smoke": True})
    attempts = json.loads((out.parent / ".00.attempts.json").read_text())
    assert len(attempts) == 1 and attempts[0]["seconds"] is not None
    monkeypatch.setattr(papermill, "execute_notebook", copy_notebook)
    record = runbook.execute(CHAPTER, out, {"smoke": True})
    assert len(record["earlier_attempts"]) == 1


def test_the_time_table_adds_earlier_attempts_in_their_own_column():
    from refinelib.report import gather

    resumed = {"notebook": "01.ipynb", "seconds": 600, "earlier_attempts": [{"started": "", "seconds": 1800}]}
    records = [resumed, {"notebook": "04.ipynb", "seconds": 120}]
    table = gather.time_table(records)
    assert table["minutes"].tolist() == [10.0, 2.0, 12.0]
    assert table["earlier attempts (minutes)"].tolist() == [30.0, 0.0, 30.0]
