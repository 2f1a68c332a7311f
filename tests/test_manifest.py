"""Run manifests: written atomically under a name no other writer uses, naming the chapter that wrote
them; which of them belong to this build."""

import json

import pytest

from refinelib import manifest
from tests.writers import in_threads


def test_a_manifest_never_takes_over_another_writers_temporary_file(tmp_path):
    # another run finishing in the same folder is half-way through writing its own temporary file
    theirs = tmp_path / ".manifest.json.partial"
    theirs.write_text("another writer's half-written manifest")
    manifest.write_manifest(tmp_path, notebook="00_x", smoke=True)
    assert theirs.read_text() == "another writer's half-written manifest"
    record = json.loads((tmp_path / "manifest.json").read_text())
    assert record["notebook"] == "00_x" and record["git_revision"] and "packages" in record


def test_parallel_manifests_in_one_folder_all_succeed_and_leave_one_whole_file(tmp_path, monkeypatch):
    monkeypatch.setattr(manifest, "git_revision", lambda: "rev")  # no git subprocess per write
    def write(i):
        for _ in range(20):
            manifest.write_manifest(tmp_path, writer=i)

    errors = in_threads(write)
    assert errors == []
    assert json.loads((tmp_path / "manifest.json").read_text())["writer"] in range(4)
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


# ----- which runs belong to this build ---------------------------------------------------------------
def _chapter_ran(executed, notebook, finished_in_s=0, seconds=60.0):
    """The run record `make book` keeps for ``notebook``: it ran for ``seconds`` until now + finished_in_s."""
    import time

    finished = time.strftime(manifest.TIME_FORMAT, time.localtime(time.time() + finished_in_s))
    executed.mkdir(parents=True, exist_ok=True)
    (executed / f"{notebook}.run.json").write_text(json.dumps({"notebook": f"{notebook}.ipynb",
                                                              "seconds": seconds, "finished": finished}))


def test_a_manifest_names_the_notebook_being_executed(tmp_path, monkeypatch):
    monkeypatch.setenv(manifest.NOTEBOOK_ENV, "04_generalization")
    record = json.loads(manifest.write_manifest(tmp_path / "a", stage="generalization").read_text())
    assert record["notebook"] == "04_generalization"
    with pytest.raises(ValueError, match="notebook='00_environments'.*04_generalization is the notebook"):
        manifest.write_manifest(tmp_path / "b", notebook="00_environments")
    monkeypatch.delenv(manifest.NOTEBOOK_ENV)
    assert "notebook" not in json.loads(manifest.write_manifest(tmp_path / "c", x=1).read_text())


def test_this_build_is_the_chapter_run_the_executed_record_names(tmp_path, monkeypatch):
    executed, artifacts = tmp_path / "executed", tmp_path / "artifacts"
    monkeypatch.setenv(manifest.NOTEBOOK_ENV, "04_generalization")
    path = manifest.write_manifest(artifacts / "generalization" / "default", smoke=False)
    written = json.loads(path.read_text())
    assert manifest.this_build(written, executed, smoke=False) == \
        f"04_generalization has no run record in {executed}"
    _chapter_ran(executed, "04_generalization")
    assert manifest.this_build(written, executed, smoke=False) is None
    assert manifest.this_build(written, executed, smoke=True) == "not a smoke run"
    no_mode = {k: v for k, v in written.items() if k != "smoke"}  # e.g. a trained model's own manifest
    assert manifest.this_build(no_mode, executed, smoke=True) is None
    unnamed = {**written, "notebook": None}
    assert manifest.this_build(unnamed, executed, smoke=False) == "its manifest names no chapter"
    _chapter_ran(executed, "04_generalization", finished_in_s=3600)  # ran again later: this one is a leftover
    assert manifest.this_build(written, executed, smoke=False).startswith("left over from an earlier run")


def test_build_manifests_keeps_this_builds_runs_and_the_runs_they_reused(tmp_path, monkeypatch):
    executed, artifacts = tmp_path / "executed", tmp_path / "artifacts"
    old = {"notebook": "03_refinement_tuning", "smoke": False, "written": "2020-01-01T00:00:00+0000"}
    for folder in ("tuning/default/refine", "tuning/default/leftover", "tuning/old"):  # an earlier build's
        (artifacts / folder).mkdir(parents=True)
        (artifacts / folder / "manifest.json").write_text(json.dumps(old))
    monkeypatch.setenv(manifest.NOTEBOOK_ENV, "03_refinement_tuning")
    manifest.write_manifest(artifacts / "tuning" / "default", smoke=False,
                            models={"refine": {"output_dir": str(artifacts / "tuning/default/refine")}})
    _chapter_ran(executed, "03_refinement_tuning")
    found = manifest.build_manifests(executed, smoke=False, root=artifacts)
    assert sorted(found) == ["tuning/default", "tuning/default/refine"]
    assert found["tuning/default/refine"]["reused"] is True and "reused" not in found["tuning/default"]
    assert manifest.build_manifests(executed, smoke=True, root=artifacts) == {}
