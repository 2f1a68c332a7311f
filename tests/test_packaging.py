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
