"""Every notebook runs in smoke mode through papermill, as `make book` runs it by default."""

import json
from pathlib import Path

import nbformat
import pytest

from refinelib import runbook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_clean_with_a_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not any(c.get("outputs") for c in code), "commit notebooks without outputs"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "smoke = False" in params[0].source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_smoke_run(path, tmp_path, monkeypatch):
    monkeypatch.setenv("REFINELIB_ARTIFACTS", str(tmp_path / "artifacts"))
    out = tmp_path / path.name
    record = runbook.execute(path, out, {"smoke": True, "run_id": "smoke"})
    assert record["parameters"]["smoke"] is True and record["seconds"] > 0
    executed = nbformat.read(out, as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "remove-cell" in injected[0].metadata.tags
    manifests = list((tmp_path / "artifacts").glob("*/smoke/manifest.json"))
    assert manifests, "the notebook must write a manifest last"
    manifest = json.loads(manifests[0].read_text())
    assert manifest["smoke"] is True and manifest["git_revision"]


def test_profile_parameters(tmp_path):
    (tmp_path / "paper").mkdir()
    (tmp_path / "paper" / "00_x.yaml").write_text("scale: agentboard\n")
    assert runbook.profile_parameters(Path("00_x.ipynb"), "paper", tmp_path) == {"scale": "agentboard"}
    assert runbook.profile_parameters(Path("01_y.ipynb"), "paper", tmp_path) == {}
    with pytest.raises(SystemExit, match="unknown profile 'gpu'.*paper"):
        runbook.profile_parameters(Path("00_x.ipynb"), "gpu", tmp_path)
