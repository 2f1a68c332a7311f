"""Run manifests are written atomically under a name no other writer uses."""

import json

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
