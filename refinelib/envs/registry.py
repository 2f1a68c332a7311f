"""Named environment families and versioned task suites with a held-in / held-out tag.

Held-in means: the memorising baseline's training trajectories come from this environment (our
Agent-FLAN analogue is trained on household pick / clean / heat / cool). Everything else is held-out,
and AgentRefine-style models see none of these environments in training.

>>> s = suite("pddl")
>>> s.split, s.family, s.instances[0].id
('held_out', 'pddl', 'pddl/gripper/0')
>>> make_instance(s.instances[0]).task
'gripper'
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

from refinelib.envs.base import Instance, TextEnv, check_known

# family -> "module:Class"; imported on first use so a missing backend only hurts its own family.
FAMILIES: dict[str, str] = {
    "household": "refinelib.envs.household:HouseholdEnv",
    "babyai": "refinelib.envs.babyai:BabyAIEnv",
    "sciworld": "refinelib.envs.sciworld:SciWorldEnv",
    "pddl": "refinelib.envs.pddl:PDDLEnv",
    "textadventure": "refinelib.envs.textadventure:TextAdventureEnv",
}

HELD_IN_HOUSEHOLD = (
    "pick_and_place_simple",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
)
HELD_OUT_HOUSEHOLD = ("look_at_obj_in_light", "pick_two_obj_and_place")
HOUSEHOLD_TRAIN_FIRST_SEED = 0  # training layouts; evaluation seeds are the family's default range
SCALES = ("small", "agentboard")


def _lookup(family: str) -> tuple[str, str]:
    if family not in FAMILIES:
        raise ValueError(f"unknown environment family {family!r}; known families: {sorted(FAMILIES)}")
    module, cls = FAMILIES[family].split(":")
    return module, cls


def family_module(family: str):
    """The module that implements ``family`` (it imports without the family's backend)."""
    return importlib.import_module(_lookup(family)[0])


def make(family: str, task: str, **options) -> TextEnv:
    """An environment of ``family`` bound to ``task``; call ``reset(seed)`` to start.

    Raises:
        ValueError: an unknown family, task or option (naming it and listing the known ones), before the
            family's backend starts.
    """
    module, cls = _lookup(family)
    env_class = getattr(importlib.import_module(module), cls)
    check_known(family, "options", sorted(options), env_class.OPTIONS)
    return env_class(task, **options)


def make_instance(instance: Instance) -> TextEnv:
    """The environment for ``instance``, not yet reset (call ``env.reset(instance.seed)``)."""
    if not isinstance(instance, Instance):
        raise ValueError(f"make_instance: instance must be a refinelib.envs.Instance, got "
                         f"{type(instance).__name__}")
    return make(instance.family, instance.task, **dict(instance.options))


@dataclass(frozen=True)
class Suite:
    """A fixed, versioned list of instances with a held-in / held-out tag."""

    name: str
    version: str  # the suite's own version + the family's environment version
    split: str  # "held_in" | "held_out" | "train"
    family: str
    scale: str
    instances: tuple[Instance, ...]
    description: str

    def __len__(self) -> int:
        return len(self.instances)


@dataclass(frozen=True)
class SuiteSpec:
    """How to build a suite from its family's ``instances()``."""

    family: str
    split: str
    description: str
    tasks: tuple[str, ...] | None = None  # None: every task of the family
    first_seed: int | None = None  # None: the family's evaluation seeds
    version: str = "1"  # bump when the instance list changes


SUITES: dict[str, SuiteSpec] = {
    "household_train": SuiteSpec(
        "household", "train", "household pick/clean/heat/cool on training layouts (the memorising "
        "baseline's training environments)", HELD_IN_HOUSEHOLD, HOUSEHOLD_TRAIN_FIRST_SEED),
    "household_held_in": SuiteSpec(
        "household", "held_in", "household pick/clean/heat/cool on unseen layouts of seen task types",
        HELD_IN_HOUSEHOLD),
    "household_held_out": SuiteSpec(
        "household", "held_out", "household task types never trained on (look at an object in the "
        "light, pick two objects)", HELD_OUT_HOUSEHOLD),
    "babyai": SuiteSpec("babyai", "held_out", "BabyAI grid-world levels behind a text wrapper"),
    "sciworld": SuiteSpec("sciworld", "held_out", "ScienceWorld short science tasks"),
    "pddl": SuiteSpec("pddl", "held_out", "PDDL planning domains (gripper, blocksworld, tyreworld, "
                      "barman) rendered as text"),
    "textadventure": SuiteSpec("textadventure", "held_out", "TextWorld-generated games standing in for "
                               "Jericho's text adventures"),
    # Opt-in: AgentBoard's original 60 problems, read at run time from REFINELIB_AGENTBOARD_PDDL.
    "pddl_agentboard": SuiteSpec("pddl", "held_out", "AgentBoard's original PDDL problems"),
}

# The evaluation suites, in the book's order (training suites and opt-in suites excluded).
EVALUATION_SUITES = ("household_held_in", "household_held_out", "babyai", "sciworld", "pddl", "textadventure")


def suite(name: str, scale: str = "small") -> Suite:
    """The suite called ``name`` at ``scale`` ("small" for CPU / CI, "agentboard" for AgentBoard sizes)."""
    if not isinstance(name, str) or name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; known suites: {sorted(SUITES)}")
    if not isinstance(scale, str) or scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; known scales: {list(SCALES)}")
    spec = SUITES[name]
    module = family_module(spec.family)
    if name == "pddl_agentboard":
        directory = os.environ.get("REFINELIB_AGENTBOARD_PDDL")
        if not directory:
            raise ValueError("suite 'pddl_agentboard' reads AgentBoard's 60 PDDL problems from a directory: "
                             "set REFINELIB_AGENTBOARD_PDDL (e.g. to ../shared/data/agentboard-pddl)")
        items = module.agentboard_instances(directory)
    else:
        items = module.instances(scale, tasks=spec.tasks, first_seed=spec.first_seed)
    env_version = getattr(module, _lookup(spec.family)[1]).version
    return Suite(name, f"{spec.version}+{spec.family}-{env_version}", spec.split, spec.family, scale,
                 tuple(items), spec.description)
