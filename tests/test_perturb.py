"""Perturbations (perturb-v1): bijections on real commands, the perturbed oracle, old-format refusal.

Household, babyai, pddl and textadventure run real (small) episodes; sciworld is ``slow``. Each family's
backend missing skips its tests. ~10 s warm, sciworld included (household games are cached).
"""

from __future__ import annotations

import functools

import pytest

from refinelib.envs import perturb
from refinelib.envs.base import CHECK_VALID_ACTIONS, BackendMissing
from refinelib.envs.perturb import PERTURB_VERSION, RULES, get_rule, rule_names
from refinelib.envs.perturbed import PerturbedEnv
from refinelib.envs.registry import make_instance, suite
from refinelib.envs.rollout import play
from refinelib.eval.agent import EpisodeState, instruction

# A few small instances per family, chosen to cover the command grammar (household: clean, heat, use).
INSTANCES = {
    "household": [("household_held_in", "pick_clean_then_place_in_recep"),
                  ("household_held_in", "pick_heat_then_place_in_recep"),
                  ("household_held_out", "look_at_obj_in_light")],
    "babyai": [("babyai", None)] * 3,
    "pddl": [("pddl", "gripper"), ("pddl", "blocksworld"), ("pddl", "tyreworld"), ("pddl", "barman")],
    "textadventure": [("textadventure", "treasure_hunter,difficulty=hard"),
                      ("textadventure", "cooking,difficulty=hard"),
                      ("textadventure", "custom,difficulty=hard")],
}
FAMILIES = list(INSTANCES)
CASES = [(f, r) for f in FAMILIES for r in rule_names(f)]


@functools.cache
def instances(family: str):
    chosen, taken = [], set()
    for name, task in INSTANCES[family]:
        for inst in suite(name).instances:
            if (task is None or inst.id.startswith(f"{family}/{task}/")) and inst.id not in taken:
                chosen.append(inst)
                taken.add(inst.id)
                break
    return chosen


ENVS: dict = {}


def env_for(inst):
    """One environment per instance for the module (backends are slow to start); skip if missing."""
    if inst.id not in ENVS:
        try:
            ENVS[inst.id] = make_instance(inst)
            ENVS[inst.id].reset(inst.seed)
        except BackendMissing as exc:
            pytest.skip(str(exc))
    return ENVS[inst.id]


@functools.cache
def canonical_commands(family: str) -> tuple[str, ...]:
    """Every valid action seen along the oracle's episodes (the real command language of the family)."""
    seen = set()
    for inst in instances(family):
        env = env_for(inst)
        start = env.reset(inst.seed)
        seen |= set(start.valid_actions)
        while not env.done and (action := env.oracle_action()) is not None:
            env.step(action)
            seen |= set(env.valid_actions())
    return tuple(sorted(seen))


def teardown_module():
    for env in ENVS.values():
        env.close()


# ----- the rule set -----------------------------------------------------------------------------
def test_rule_set_is_versioned_and_complete():
    assert PERTURB_VERSION == "perturb-v1"
    assert len(rule_names("household")) >= 5 and set(RULES) >= set(FAMILIES) | {"sciworld"}
    assert all(rule_names(f) for f in RULES)
    assert get_rule("household", "perturb-v1:R1") is get_rule("household", "R1")
    assert get_rule("household", "R1").id == "perturb-v1:R1"
    with pytest.raises(ValueError, match="R1"):
        get_rule("household", "R9")
    with pytest.raises(ValueError, match="perturb-v1"):
        get_rule("household", "perturb-v0:R1")




def test_pddl_synonyms_are_fresh_names():
    pairs = dict(get_rule("pddl", "R1").operators)
    assert set(pairs) == set(perturb._pddl_operators())  # every operator of every domain is renamed
    assert len(set(pairs.values())) == len(pairs) and not set(pairs.values()) & set(pairs)


# ----- bijections on real commands ----------------------------------------------------------------
@pytest.mark.parametrize(("family", "name"), CASES)
def test_rule_is_a_bijection_on_real_commands(family, name):
    rule = get_rule(family, name)
    commands = canonical_commands(family)
    assert len(commands) > 10
    perturbed = {c: rule.forward(c) for c in commands}
    assert len(set(perturbed.values())) == len(commands), "two canonical commands collide"
    for c, p in perturbed.items():
        assert rule.inverse(p) == c, (c, p)
        assert p.lower() != CHECK_VALID_ACTIONS
    if not name == "R6":  # the presentation control changes no command; every other rule changes some
        assert sum(c != p for c, p in perturbed.items()) >= 3


@pytest.mark.parametrize(("family", "name"), CASES)
def test_old_format_is_refused_or_reinterpreted(family, name):
    """A memorising agent's canonical command must not be silently understood as what it meant."""
    rule = get_rule(family, name)
    changed = [c for c in canonical_commands(family) if rule.forward(c) != c]
    for c in changed:
        back = rule.inverse(c)
        # refused; only an argument-order change may read it as another (reordered) command
        assert back is None or (family, name) == ("pddl", "R2") and back != c, (c, back)


def test_control_rule_changes_no_command():
    rule = get_rule("household", "R6")
    assert all(rule.forward(c) == c and rule.inverse(c) == c for c in canonical_commands("household"))


# ----- the wrapper --------------------------------------------------------------------------------
@pytest.mark.parametrize(("family", "name"), CASES)
def test_perturbed_oracle_solves(family, name):
    rule = get_rule(family, name)
    for inst in instances(family):
        canonical = env_for(inst).reset(inst.seed).valid_actions
        env = PerturbedEnv(env_for(inst), rule)
        record = play(env, inst.seed, max_steps=200)
        assert record.success and record.invalid_steps == 0, record.render(200)
        assert record.start.valid_actions == tuple(sorted(rule.forward(a) for a in canonical))


def test_wrapper_shows_perturbed_text_only():
    inst = instances("household")[0]
    env = PerturbedEnv(env_for(inst), "R1")
    start = env.reset(inst.seed)
    assert env.perturbation == "perturb-v1:R1" and env.family == "household"
    action = env.oracle_action()
    while not action.startswith("from "):  # walk to the first "take" of the plan
        env.step(action)
        action = env.oracle_action()
    listing = env.step("Check valid actions").observation
    shown = listing.removeprefix("Valid actions: ").removesuffix(".").split(", ")
    assert shown == env.valid_actions() == sorted(shown)
    assert action in shown and not any(a.startswith(("take ", "move ")) for a in shown)
    assert start.valid_actions == tuple(sorted(start.valid_actions))


@pytest.mark.parametrize("name", ["R1", "R2", "R3", "R4", "R5"])
def test_household_old_format_gets_nothing_happens(name):
    inst = instances("household")[0]
    env = PerturbedEnv(env_for(inst), name)
    env.reset(inst.seed)
    rule = get_rule("household", name)
    while rule.forward(canonical := env.env.oracle_action()) == canonical:
        env.step(rule.forward(canonical))
    before, steps = env.snapshot(), env.steps
    step = env.step(canonical)  # what a memorising agent types
    assert (step.valid, step.done, step.observation) == (False, False, "Nothing happens.")
    assert env.snapshot() == before and env.steps == steps + 1
    assert env.step(rule.forward(canonical)).valid  # the perturbed command works
    assert not env.step("dance wildly").valid  # unknown text goes to the env and fails there


def test_unknown_text_reaches_the_env():
    inst = instances("pddl")[0]
    env = PerturbedEnv(env_for(inst), "R1")
    env.reset(inst.seed)
    step = env.step("dance wildly")
    assert not step.valid and "Unknown action 'dance'" in step.observation  # the env's own feedback
    step = env.step("pick ball1 rooma left")  # the old operator name
    assert not step.valid and "not recognized" in step.observation


# ----- prompts ------------------------------------------------------------------------------------
def test_household_instruction_shows_perturbed_templates():
    plain = instruction("household")
    text = instruction("household", perturbation="R1")
    assert "- from <receptacle> take <object>" in text and "take <object> from" not in text
    assert "Action: from countertop 1 take mug 1" in text and "Action: take mug 1" not in text
    assert "Action: <one action, written exactly as in the list above>" in text
    observations = [line for line in plain.splitlines() if line.startswith("Observation:")]
    assert observations == [line for line in text.splitlines() if line.startswith("Observation:")]
    assert "apple-1" in instruction("household", perturbation="R4")
    control = instruction("household", perturbation="R6")
    assert "<item>" in control and "<object>" not in control and control != plain
    assert sorted(control.splitlines()) != sorted(plain.splitlines())


@pytest.mark.parametrize(("family", "name"), CASES + [("sciworld", r) for r in rule_names("sciworld")])
def test_every_instruction_changes_and_keeps_its_frame(family, name):
    task = "gripper" if family == "pddl" else ""
    plain, text = instruction(family, task), instruction(family, task, perturbation=name)
    assert text != plain and text.count("Available actions:") == 1 and "- check valid actions" in text
    assert len(text.splitlines()) >= len(plain.splitlines())


def test_episode_state_uses_the_perturbed_instruction():
    inst = instances("pddl")[0]
    env = PerturbedEnv(env_for(inst), "R3")
    state = EpisodeState(env, inst.seed)
    assert "pick(<ball>, <room>, <gripper>)" in state.messages[0]["content"]
    turn = state.advance(f"Thought: go.\nAction: {env.oracle_action()}")
    assert turn.valid


# ----- sciworld (slow: a JVM) ---------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", rule_names("sciworld"))
def test_sciworld_rules(name):
    inst = suite("sciworld").instances[0]
    env = env_for(inst)
    rule = get_rule("sciworld", name)
    record = play(PerturbedEnv(env, rule), inst.seed, max_steps=100)
    assert record.success and record.invalid_steps == 0, record.render(200)
    commands = set(record.start.valid_actions)
    canonical = env.reset(inst.seed).valid_actions
    perturbed = {rule.forward(c) for c in canonical}
    assert len(perturbed) == len(canonical) == len(commands)
    assert all(rule.inverse(rule.forward(c)) == c for c in canonical)
