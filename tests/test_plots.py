"""Figures go under the artifacts folder that REFINELIB_ARTIFACTS names."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from refinelib import plots  # noqa: E402


def test_save_honours_refinelib_artifacts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the default "artifacts/" would be
    monkeypatch.setenv("REFINELIB_ARTIFACTS", str(tmp_path / "smoke"))
    fig, _ = plt.subplots()
    png = plots.save(fig, "lengths")
    plt.close(fig)
    assert png == tmp_path / "smoke" / "figures" / "lengths.png"
    assert png.is_file() and png.with_suffix(".svg").is_file()
    assert not (tmp_path / "artifacts").exists()  # a smoke run never overwrites the real figure


def test_save_into_an_explicit_folder(tmp_path):
    fig, _ = plt.subplots()
    assert plots.save(fig, "x", tmp_path / "out") == tmp_path / "out" / "x.png"
    plt.close(fig)
