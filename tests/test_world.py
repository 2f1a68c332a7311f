"""World engine semantics, the script round trip, and the procedural script generator."""

import json
import re

import pytest

from refinelib.envs import perturb
from refinelib.synth.themes import HELD_OUT_SHAPES, THEMES, generate_script, shape
from refinelib.synth.world import FORMAT_ERROR, GOAL_DONE, PLACEHOLDER, World, template_regex

NO = {"parameter_error": False, "place_error": False, "logic_error": False}


def _act(template, params, here=(), pre=(), add=(), dele=(), say="Done."):
    return {"template": template, "parameters": params, "here": list(here), "pre": [list(p) for p in pre],
            "add": [list(a) for a in add], "del": [list(d) for d in dele], "say": say}


@pytest.fixture
def engine():
    """A shop and a yard; the screw is in a locked toolbox in the yard, the key on the shop bench."""
    places, things = ["bench", "toolbox"], ["key", "screw"]
    return {
        "theme": "test", "locations": ["shop", "yard"], "start": "shop",
        "init": [["in", "bench", "shop"], ["in", "toolbox", "yard"], ["state", "toolbox", "locked"],
                 ["in", "key", "bench"], ["in", "screw", "toolbox"]],
        "actions": [
            _act("walk over to {room}", {"room": ["shop", "yard"]}, pre=[["not", "at", "player", "{room}"]],
                 add=[["at", "player", "{room}"]], dele=[["at", "player", "*"]], say="You go to the {room}."),
            _act("{place}: retrieve {item}", {"place": places, "item": things}, here=["item", "place"],
                 pre=[["in", "{item}", "{place}"], ["not", "state", "{place}", "closed"],
                      ["not", "state", "{place}", "locked"]],
                 add=[["holding", "{item}"]], dele=[["in", "{item}", "{place}"]], say="Got the {item}."),
            _act("unlatch {place}", {"place": ["toolbox"]}, here=["place"],
                 pre=[["state", "{place}", "closed"]],
                 add=[["state", "{place}", "open"]], dele=[["state", "{place}", "*"]]),
            _act("unlock {place} using {key}", {"place": ["toolbox"], "key": ["key"]}, here=["place", "key"],
                 pre=[["holding", "{key}"], ["state", "{place}", "locked"]],
                 add=[["state", "{place}", "closed"]], dele=[["state", "{place}", "*"]]),
        ],
        "goal": [["holding", "screw"]], "goal_text": "Get the screw.", "conditions": ["You hold the screw."],
    }


def test_template_regex_full_match_one_group_per_placeholder():
    regex = template_regex("{place}: retrieve {item}")
    assert re.compile(regex).groups == 2
    assert re.fullmatch(regex, "  tool box:   retrieve  red screw ").groups() == ("tool box", "red screw")
    assert not re.fullmatch(regex, "retrieve screw")


def test_each_flag_kind_and_invalid_leaves_state_unchanged(engine):
    world = World(engine)
    before = world.state
    obs, flags = world.step("fly to the moon")
    assert obs == FORMAT_ERROR and flags == {**NO, "parameter_error": True} and world.state == before
    obs, flags = world.step("bench: retrieve hammer")  # matches the regex, value not allowed
    assert flags == {**NO, "parameter_error": True} and "hammer" in obs and world.state == before
    obs, flags = world.step("toolbox: retrieve screw")  # both in the yard
    assert flags == {**NO, "place_error": True} and obs == "There is no screw here." and world.state == before
    world.step("walk over to yard")
    before = world.state
    obs, flags = world.step("unlatch toolbox")
    assert flags == {**NO, "logic_error": True} and obs == "The toolbox is locked." and world.state == before
    obs, flags = world.step("toolbox: retrieve screw")
    assert flags["logic_error"] and obs == "The toolbox is locked." and world.state == before
    obs, flags = world.step("walk over to yard")
    assert flags["logic_error"] and obs == "You are already in the yard."


def test_plan_is_shortest_and_reaches_goal(engine):
    world = World(engine)
    plan = world.plan()
    assert plan == ["bench: retrieve key", "walk over to yard", "unlock toolbox using key", "unlatch toolbox",
                    "toolbox: retrieve screw"]
    for action in plan[:-1]:
        assert world.step(action)[1] == NO and not world.goal_reached()
    obs, flags = world.step(plan[-1])
    assert flags == NO and obs.endswith(GOAL_DONE) and world.goal_reached()


def test_script_round_trip(engine):
    script = World(engine).to_script()
    assert {"Environment", "Goal", "Completion Conditions", "Available Actions", "Engine"} <= set(script)
    script = json.loads(json.dumps(script))
    for template, spec in script["Available Actions"].items():
        assert re.compile(spec["verification code"]).groups == len(PLACEHOLDER.findall(template))
        assert set(spec["parameters"]) == set(PLACEHOLDER.findall(template))
    again = World.from_script(script)
    assert again.to_script() == script
    assert again.plan() == World(engine).plan()
    assert script["Environment"]["locations"]["yard"]["toolbox"] == {"state": "locked", "screw": {}}


@pytest.fixture(scope="module")
def scripts():
    return [generate_script(seed) for seed in range(200)]


def test_generator_diversity_and_solvable(scripts):
    themes = {s["Engine"]["theme"] for s in scripts}
    templates = {t for s in scripts for t in s["Available Actions"]}
    assert len(THEMES) >= 8 and len(themes) >= 8
    assert len(templates) >= 150
    for script in scripts:
        world = World.from_script(json.loads(json.dumps(script)))
        plan = script["Engine"]["plan"]
        assert 2 <= len(plan) <= 6
        for action in plan:
            assert world.step(action)[1] == NO
        assert world.goal_reached()
        assert script["Goal"] and script["Completion Conditions"]


def test_generator_deterministic():
    assert generate_script(11) == generate_script(11)
    assert generate_script(11) != generate_script(12)


def test_themes_are_not_evaluation_environments(scripts):
    held_out = set(HELD_OUT_SHAPES)
    for rules in perturb.RULES.values():
        for rule in rules.values():
            for rw in getattr(rule, "rewrites", ()):
                held_out |= {shape(rw.canonical), shape(rw.perturbed)}
    operators = perturb._pddl_operators()
    banned = {"alfworld", "babyai", "scienceworld", "gripper", "blocksworld", "barman", "tyreworld",
              "countertop", "sinkbasin", "microwave", "thermometer"}
    for script in scripts:
        for template in script["Available Actions"]:
            assert shape(template) not in held_out, template
            words = shape(template).split()
            if all(w == "{}" for w in words[1:]):
                assert words[0] not in operators, template
        text = json.dumps(script).lower()
        assert not any(b in text for b in banned)
