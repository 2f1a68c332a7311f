"""Families and suites: names, errors, held-in / held-out tags."""

import pytest

from refinelib.envs import registry
from refinelib.envs.base import BackendMissing, require


def test_unknown_family_lists_the_known_ones():
    with pytest.raises(ValueError, match="known families: .*babyai.*household"):
        registry.make("minecraft", "x")


def test_unknown_suite_and_scale_list_the_known_ones():
    with pytest.raises(ValueError, match="known suites: .*household_held_in"):
        registry.suite("jericho")
    with pytest.raises(ValueError, match="known scales"):
        registry.suite("pddl", scale="huge")


def test_every_family_module_imports_without_its_backend_being_used():
    for family in registry.FAMILIES:
        module = registry.family_module(family)
        assert module.TASKS, family
        assert callable(module.instances)


def test_suites_are_fixed_tagged_and_disjoint_where_they_must_be():
    for name in registry.EVALUATION_SUITES:
        s = registry.suite(name)
        assert len(s) > 0 and s.split in ("held_in", "held_out")
        assert [i.id for i in s.instances] == [i.id for i in registry.suite(name).instances]
        assert len({i.id for i in s.instances}) == len(s)
    assert registry.suite("household_held_in").split == "held_in"
    assert all(registry.suite(n).split == "held_out" for n in registry.EVALUATION_SUITES[1:])
    train = {i.id for i in registry.suite("household_train", "agentboard").instances}
    held_in = {i.id for i in registry.suite("household_held_in", "agentboard").instances}
    assert train and not train & held_in, "training and held-in evaluation layouts overlap"
    held_out_tasks = {i.task for i in registry.suite("household_held_out").instances}
    assert held_out_tasks.isdisjoint({i.task for i in registry.suite("household_train").instances})


def test_agentboard_scale_matches_agentboard_sizes():
    sizes = {n: len(registry.suite(n, "agentboard")) for n in ("babyai", "sciworld", "pddl", "textadventure")}
    assert sizes == {"babyai": 112, "sciworld": 90, "pddl": 60, "textadventure": 20}
    household = len(registry.suite("household_held_in", "agentboard")) + len(
        registry.suite("household_held_out", "agentboard"))
    assert household == 134


def test_pddl_agentboard_suite_needs_a_directory(monkeypatch):
    monkeypatch.delenv("REFINELIB_AGENTBOARD_PDDL", raising=False)
    with pytest.raises(ValueError, match="REFINELIB_AGENTBOARD_PDDL"):
        registry.suite("pddl_agentboard")


def test_missing_backend_is_one_clear_error():
    with pytest.raises(BackendMissing, match=r"'sciworld' environment needs Java.*pip install"):
        require("no_such_module_xyz", "sciworld", "Java 17 and scienceworld==1.2.3")
