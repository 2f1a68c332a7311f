"""runs: atomic small files, one writer per run folder, recorded run identities."""

import json
import os
import subprocess
import sys
import threading

import pytest

from refinelib import paths, runs
from tests.writers import HOLDER, in_threads, spawn


# ----- atomic writes ---------------------------------------------------------------------------------
def test_write_atomic_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "x.json"
    runs.write_atomic(target, "old")
    runs.write_json_atomic(target, {"a": "é", "b": [1, 2]})
    assert json.loads(target.read_text(encoding="utf-8")) == {"a": "é", "b": [1, 2]}
    assert target.read_text(encoding="utf-8").endswith("\n")
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.json"]


def test_paths_write_atomic_is_the_same_function():
    assert paths.write_atomic is runs.write_atomic


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    target = tmp_path / "x.json"
    runs.write_json_atomic(target, {"v": 1})
    with pytest.raises(TypeError):
        runs.write_json_atomic(target, {"v": object()})  # not JSON: fails before anything is written
    with pytest.raises(TypeError):
        runs.write_atomic(target, b"bytes are not text")  # fails while writing the temporary file
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_parallel_writers_never_share_a_temporary_name(tmp_path):
    target = tmp_path / "x.json"
    def write(i):
        for _ in range(30):
            runs.write_json_atomic(target, {"writer": i, "pad": "x" * 5000})

    errors = in_threads(write)
    assert errors == []
    assert json.loads(target.read_text())["writer"] in range(4)
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


# ----- the run lock ----------------------------------------------------------------------------------
def test_a_second_writer_gets_one_error_naming_the_holders_pid(tmp_path):
    proc = spawn(tmp_path / "run", 60)
    try:
        with pytest.raises(runs.RunLockedError, match=rf"pid {proc.pid}\b") as caught:
            with runs.RunLock(tmp_path / "run"):
                pass
        assert str(tmp_path / "run") in str(caught.value)
        assert isinstance(caught.value, RuntimeError)
    finally:
        proc.kill()
        proc.wait()


def test_the_lock_is_released_when_the_holder_is_killed(tmp_path):
    proc = spawn(tmp_path, 60)
    proc.kill()
    proc.wait()
    with runs.RunLock(tmp_path) as lock:
        assert lock.path.read_text().startswith(f"pid {os.getpid()} on ")


def test_the_lock_is_released_on_exit_and_on_an_exception(tmp_path):
    with pytest.raises(KeyError):
        with runs.RunLock(tmp_path):
            raise KeyError("boom")
    proc = spawn(tmp_path, 0)  # a new process gets it at once
    assert proc.wait() == 0
    assert (tmp_path / ".lock").read_text() == ""  # no holder recorded once released


def test_the_same_thread_may_nest_but_another_thread_may_not(tmp_path):
    seen = []
    with runs.RunLock(tmp_path):
        with runs.RunLock(tmp_path):
            pass

        def other():
            try:
                with runs.RunLock(tmp_path):
                    seen.append("entered")
            except runs.RunLockedError as why:
                seen.append(str(why))

        t = threading.Thread(target=other)
        t.start()
        t.join()
        # still held after the inner exit: another process is refused
        proc = subprocess.run([sys.executable, "-c", HOLDER, str(tmp_path), "0"], capture_output=True,
                              text=True)
        assert "RunLockedError" in proc.stderr and f"pid {os.getpid()}" in proc.stderr
    assert len(seen) == 1 and "another thread" in seen[0]
    with runs.RunLock(tmp_path):  # released after the outer exit
        pass


# ----- code versions ---------------------------------------------------------------------------------
def test_code_version_changes_with_the_code_and_not_with_the_location(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        (folder / "__pycache__").mkdir(parents=True)
        (folder / "m.py").write_text("X = 1\n")
        (folder / "__pycache__" / "m.pyc").write_bytes(os.urandom(8))  # build output: ignored
    assert runs.code_version(a) == runs.code_version(b) == runs.code_version(str(a))
    assert len(runs.code_version(a)) == 12
    (b / "m.py").write_text("X = 2\n")
    assert runs.code_version(a) != runs.code_version(b)
    assert runs.code_version(a / "m.py") != runs.code_version(b / "m.py")


def test_code_version_of_modules_and_packages():
    import refinelib.envs
    import refinelib.synth.teacher

    assert runs.code_version("refinelib.synth.teacher") == runs.code_version(refinelib.synth.teacher)
    assert runs.code_version("refinelib.envs") == runs.code_version(refinelib.envs)  # every *.py under it
    assert runs.code_version("refinelib.synth.teacher") != runs.code_version("refinelib.envs")
    with pytest.raises(ModuleNotFoundError):
        runs.code_version("refinelib.no_such_module")
    with pytest.raises(ValueError, match="at least one"):
        runs.code_version()


# ----- run identities --------------------------------------------------------------------------------
def test_a_fresh_run_records_its_identity_and_the_same_identity_passes(tmp_path):
    sidecar = tmp_path / "log.settings.json"
    runs.check_identity(sidecar, {"steps": 30, "suites": ("a", "b")}, "refuse")
    assert json.loads(sidecar.read_text()) == {"steps": 30, "suites": ["a", "b"]}
    runs.check_identity(sidecar, {"steps": 30, "suites": ["a", "b"]}, "refuse")  # tuple == list as stored
    # a field None on one side and missing on the other is the same identity (a newly added field)
    runs.check_identity(sidecar, {"steps": 30, "suites": ["a", "b"], "new_field": None}, "refuse")
    assert json.loads(sidecar.read_text())["new_field"] is None


def test_refuse_names_each_changed_field_and_the_folder(tmp_path):
    sidecar = tmp_path / "run.json"
    runs.check_identity(sidecar, {"prompt": "v1", "steps": 30, "same": 1}, "refuse")
    with pytest.raises(runs.StaleRunError) as caught:
        runs.check_identity(sidecar, {"prompt": "v2", "steps": 10, "same": 1}, "refuse")
    message = str(caught.value)
    assert "prompt: 'v1' -> 'v2'" in message and "steps: 30 -> 10" in message
    assert "same" not in message and str(tmp_path) in message
    assert isinstance(caught.value, ValueError)
    assert json.loads(sidecar.read_text())["prompt"] == "v1"  # nothing was touched


def test_set_aside_renames_the_sidecar_and_files_and_warns_naming_the_fields(tmp_path):
    sidecar, log = tmp_path / "base.settings.json", tmp_path / "base.jsonl"
    runs.check_identity(sidecar, {"prompt": "v1"}, "set_aside", files=[log])
    log.write_text("old episode\n")
    with pytest.warns(runs.StaleRunWarning, match=r"prompt: 'v1' -> 'v2'"):
        runs.check_identity(sidecar, {"prompt": "v2"}, "set_aside", files=[log])
    assert (tmp_path / "base.stale-1.jsonl").read_text() == "old episode\n"
    assert json.loads((tmp_path / "base.settings.stale-1.json").read_text()) == {"prompt": "v1"}
    assert json.loads(sidecar.read_text()) == {"prompt": "v2"} and not log.exists()
    # a second change takes the next free number and keeps the first set-aside files
    log.write_text("v2 episode\n")
    with pytest.warns(runs.StaleRunWarning):
        runs.check_identity(sidecar, {"prompt": "v3"}, "set_aside", files=[log])
    assert (tmp_path / "base.stale-2.jsonl").read_text() == "v2 episode\n"
    assert (tmp_path / "base.stale-1.jsonl").read_text() == "old episode\n"


def test_files_without_a_recorded_identity_are_not_reused(tmp_path):
    sidecar, log = tmp_path / "base.settings.json", tmp_path / "base.jsonl"
    log.write_text("episode of unknown origin\n")
    with pytest.raises(runs.StaleRunError, match="no identity recorded"):
        runs.check_identity(sidecar, {"prompt": "v1"}, "refuse", files=[log])
    with pytest.warns(runs.StaleRunWarning, match="no identity recorded"):
        runs.check_identity(sidecar, {"prompt": "v1"}, "set_aside", files=[log])
    assert (tmp_path / "base.stale-1.jsonl").is_file() and not log.exists()


def test_an_unreadable_sidecar_is_a_mismatch(tmp_path):
    sidecar = tmp_path / "run.json"
    sidecar.write_text("{cut by a kill")
    with pytest.raises(runs.StaleRunError, match="unreadable"):
        runs.check_identity(sidecar, {"a": 1}, "refuse")
    with pytest.raises(ValueError, match="on_mismatch"):
        runs.check_identity(sidecar, {"a": 1}, "ignore")



def test_set_aside_takes_the_first_number_free_for_every_path(tmp_path):
    log, sidecar = tmp_path / "m.jsonl", tmp_path / "m.settings.json"
    log.write_text("a")
    (tmp_path / "m.stale-1.jsonl").write_text("older")  # 1 is taken for the log, so neither gets it
    assert runs.set_aside(log, sidecar) == [tmp_path / "m.stale-2.jsonl"]  # the missing sidecar is skipped
    assert (tmp_path / "m.stale-2.jsonl").read_text() == "a" and not log.exists()


def test_set_aside_contents_keeps_the_folder_and_its_lock(tmp_path):
    folder = tmp_path / "model"
    with runs.RunLock(folder):
        (folder / "adapter").mkdir()
        (folder / "manifest.json").write_text("{}")
        aside = runs.set_aside_contents(folder)
        assert aside == tmp_path / "model.stale-1"
        assert sorted(p.name for p in aside.iterdir()) == ["adapter", "manifest.json"]
        assert [p.name for p in folder.iterdir()] == [".lock"]
        other = subprocess.run([sys.executable, "-c", HOLDER, str(folder), "0"], capture_output=True,
                               text=True)
        assert "RunLockedError" in other.stderr  # still held: another process cannot slip in
    assert runs.set_aside_contents(folder) == tmp_path / "model.stale-2"
