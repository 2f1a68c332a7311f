"""The two-command setup stays consistent: pyproject, environment.yml, constraints, Makefile, CI."""

import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_installs_the_same_extras_as_the_makefile():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict))
    assert pip_section == ["-e .[all,dev]"]
    python = next(d for d in deps if isinstance(d, str) and d.startswith("python="))
    floor = PYPROJECT["project"]["requires-python"].removeprefix(">=")
    assert tuple(map(int, python.split("=")[1].split("."))) >= tuple(map(int, floor.split(".")))
    assert "-e '.[all,dev]'" in (ROOT / "Makefile").read_text()


def test_all_extra_covers_every_extra_but_dev():
    extras = PYPROJECT["project"]["optional-dependencies"]
    (all_req,) = extras["all"]
    assert Requirement(all_req).extras == set(extras) - {"all", "dev"}


def test_torch_is_a_range_in_the_package_and_pinned_only_by_the_cpu_constraints():
    ml = [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["ml"]]
    torch = next(r for r in ml if r.name == "torch")
    assert not any(s.operator == "==" for s in torch.specifier), "keep torch a range for GPU users"
    pins = [Requirement(line) for line in (ROOT / "constraints-cpu.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    (pin,) = [p for p in pins if p.name == "torch"]
    (version,) = [s.version for s in pin.specifier]
    assert torch.specifier.contains(version), "the CPU pin must satisfy the package's torch range"


def test_readme_shows_the_two_commands_and_ci_runs_the_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make book" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_book_builds_strictly_from_executed_notebooks():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "off"
    assert ".*" in config["exclude_patterns"]
    assert "sphinx-mathjax-offline" in config["sphinx"]["extra_extensions"]
    assert "-W" in (ROOT / "Makefile").read_text()
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    chapters = [c["file"] for part in toc.get("parts", [toc]) for c in part.get("chapters", [])]
    notebooks = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
    executed = [c for c in chapters if c.startswith("book/executed/")]
    assert [f"book/executed/{n}" for n in notebooks] == executed


def test_make_book_reruns_a_changed_notebook_and_everything_downstream(tmp_path):
    """Executed copies newer than their sources are reused; a profile parameter file re-runs its notebook
    and the notebooks after it in the dependency order (synthesis -> tuning -> evaluations -> results)."""
    import os
    import shutil
    import subprocess
    import time

    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    for name in ("pyproject.toml", "constraints-cpu.txt", "refinelib/x.py", ".venv/bin/python"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    stems = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
    for stem in stems:
        (tmp_path / "notebooks").mkdir(exist_ok=True)
        (tmp_path / "notebooks" / f"{stem}.ipynb").write_text("{}")
    past = time.time() - 100
    for path in tmp_path.rglob("*"):
        os.utime(path, (past, past))
    (tmp_path / ".venv" / ".installed").write_text("")
    (tmp_path / "book" / "executed").mkdir(parents=True)
    now = time.time()
    for stem in stems:  # executed copies, newer than everything (one time stamp: none is behind another)
        (tmp_path / "book" / "executed" / f"{stem}.ipynb").write_text("{}")
        os.utime(tmp_path / "book" / "executed" / f"{stem}.ipynb", (now, now))
    # the parameter records of those runs (book/executed/.params/, written by make), as old as the sources
    subprocess.run(["make", "-n", "book"], cwd=tmp_path, capture_output=True, check=True)
    for path in (tmp_path / "book" / "executed" / ".params").iterdir():
        os.utime(path, (past, past))

    def reruns() -> list[str]:
        out = subprocess.run(["make", "-n", "book"], cwd=tmp_path, capture_output=True, text=True, check=True)
        return [line.split()[3].split("/")[-1].removesuffix(".ipynb") for line in out.stdout.splitlines()
                if "refinelib.report.runbook" in line]

    assert reruns() == []
    (tmp_path / "configs" / "default").mkdir(parents=True)
    synthesis = next(s for s in stems if s.startswith("02_"))
    (tmp_path / "configs" / "default" / f"{synthesis}.yaml").write_text("error_rate: 0.5\n")
    rerun = reruns()
    assert rerun[0] == synthesis and set(rerun) == {s for s in stems if s[:2] >= "01" and s[:2] != "00"}
    assert rerun.index(synthesis) < rerun.index(next(s for s in stems if s.startswith("03_")))
