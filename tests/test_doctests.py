"""Docstring examples are tests: pytest collects them from every refinelib module, and each one runs."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
import tomllib
from pathlib import Path

import pytest

import refinelib

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(m.name for m in pkgutil.walk_packages(refinelib.__path__, "refinelib."))


def source(name: str) -> str:
    spec = importlib.util.find_spec(name)
    return Path(spec.origin).read_text(encoding="utf-8")


def test_pytest_collects_the_docstring_examples_of_refinelib():
    ini = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "refinelib" in ini["testpaths"]
    assert "--doctest-modules" in ini["addopts"].split()


WITH_EXAMPLES = [name for name in MODULES if re.search(r"^\s*>>> ", source(name), re.M)]


def test_the_modules_the_issue_named_have_examples():
    named = {"refinelib.eval.agent", "refinelib.data.dataset", "refinelib.tune.ablation",
             "refinelib.synth.personas",
             "refinelib.envs.registry", "refinelib.envs.household_gen", "refinelib.envs.pddl_problems",
             "refinelib.envs.household", "refinelib.envs.sciworld"}
    assert named <= set(WITH_EXAMPLES)


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_every_example_is_a_doctest_that_runs(name):
    module = importlib.import_module(name)
    tests = doctest.DocTestFinder().find(module)
    examples = [e for t in tests for e in t.examples]
    # every ">>>" line of the file is in a docstring doctest finds (not dead text) ...
    assert len(examples) == len(re.findall(r"^\s*>>> ", source(name), re.M))
    # ... none is skipped, and they pass
    assert not any(e.options.get(doctest.SKIP) for e in examples)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False) == (0, len(examples))
