"""ALFRED-style problems for the household family, written as ALFWorld games.

The official ALFWorld games (``alfworld-download``) cannot be fetched offline, so we write our own
in the same format. A problem is one room of a real ALFRED floor plan (the receptacle ids and object
classes that ``alfworld==0.4.2`` ships in ``alfworld/gen/layouts``), filled with objects the way
ALFRED does it (``VAL_RECEPTACLE_OBJECTS`` says what fits where), plus ALFRED's goal formula and task
template for one of its six task types. A game is a directory with ``game.tw-pddl`` (domain,
grammar with the task text, problem, walkthrough) and ``traj_data.json`` (``task_type``,
``pddl_params``), exactly what ``AlfredTWEnv`` would read.

:func:`replanning_problem` writes the current state of a game as a smaller problem for the
oracle's planner.

Seeds below :data:`EVAL_FIRST_SEED` use ALFRED's training floor plans, seeds from it on use ALFRED's
test floor plans (unseen rooms, like AgentBoard's ``eval_out_of_distribution`` split).

>>> import tempfile
>>> problem = generate("pick_heat_then_place_in_recep", 100000)
>>> problem.task_desc, problem.floor_plan
('put a hot potato in garbagecan', 'FloorPlan1')
>>> write_game(problem, tempfile.mkdtemp() + "/game").name
'game.tw-pddl'
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refinelib.envs.base import require
from refinelib.paths import write_atomic

TASK_TYPES = (
    "pick_and_place_simple",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "look_at_obj_in_light",
    "pick_two_obj_and_place",
)
EVAL_FIRST_SEED = 100_000  # seeds from here on use ALFRED's test floor plans (rooms unseen in training)

# ALFRED floor plans: 1-30 kitchens, 201-230 living rooms, 301-330 bedrooms, 401-430 bathrooms;
# the first six of each kind are its test scenes.
ROOMS = {"Kitchen": 1, "LivingRoom": 201, "Bedroom": 301, "Bathroom": 401}
# The appliance a transform needs; ALFRED never uses it as the target receptacle.
APPLIANCE = {
    "pick_clean_then_place_in_recep": "SinkBasin",
    "pick_heat_then_place_in_recep": "Microwave",
    "pick_cool_then_place_in_recep": "Fridge",
}
PROPERTY = {"SinkBasin": "Cleanable", "Microwave": "Heatable", "Fridge": "Coolable"}
# Static receptacles that a floor plan's object list names but its pose list lacks, with counts.
EXTRA_RECEPTACLES = {
    "StoveBurner": 4,
    "CoffeeMachine": 1,
    "Toaster": 1,
    "GarbageCan": 1,
    "Toilet": 1,
    "TowelHolder": 1,
    "HandTowelHolder": 1,
    "ToiletPaperHanger": 1,
    "LaundryHamper": 1,
}
LAMP_RECEPTACLES = ("Desk", "SideTable", "Dresser")  # where the desk lamp stands
MAX_COPIES = 2  # copies of a distractor class (ALFRED allows 3; fewer keeps FD's translation quick)


@dataclass(frozen=True)
class Problem:
    """One generated game: where it happens, what to do, and the PDDL problem text."""

    task_type: str
    seed: int
    floor_plan: str
    task_desc: str  # the goal sentence, e.g. "put a hot apple in countertop"
    pddl_params: dict[str, Any]
    pddl_problem: str


def _alfred() -> tuple[Any, Any, Path]:
    constants = require("alfworld.gen.constants", "household", "alfworld==0.4.2")
    goals = require("alfworld.gen.goal_library", "household", "alfworld==0.4.2")
    return constants, goals, Path(constants.__file__).parent / "layouts"


def _mangle(name: str) -> str:
    """ALFRED's PDDL-safe ids (``PlannedGameState.fix_pddl_str_chars``)."""
    for old, new in (("-", "_minus_"), ("|", "_bar_"), ("+", "_plus_"), (".", "_dot_"), (",", "_comma_")):
        name = name.replace(old, new)
    return name


def _receptacle_type(rid: str) -> str:
    """``Sink|..|SinkBasin`` is a SinkBasin (the demangler then names it "sinkbasin 1")."""
    parts = rid.split("|")
    return parts[-1] if parts[-1].endswith("Basin") else parts[0]


def _coords(rng: random.Random) -> str:
    return "|".join(f"{rng.uniform(-3, 3):+06.2f}" for _ in range(3))


def _floor_plans(task_type: str, seed: int) -> list[int]:
    constants, _, _ = _alfred()
    test = seed >= EVAL_FIRST_SEED
    plans = []
    for room in sorted(constants.GOALS_VALID[task_type]):
        first = ROOMS[room]
        plans += list(range(first, first + 6)) if test else list(range(first + 6, first + 30))
    return plans


def _room(layouts: Path, plan: int, rng: random.Random) -> tuple[dict[str, str], list[str]]:
    """Receptacle ids -> types, and the object classes the floor plan has."""
    poses = json.loads((layouts / f"FloorPlan{plan}-openable.json").read_text())
    classes = json.loads((layouts / f"FloorPlan{plan}-objects.json").read_text())
    receptacles = {rid: _receptacle_type(rid) for rid in sorted(poses)}
    present = set(receptacles.values())
    for rtype, count in EXTRA_RECEPTACLES.items():
        if rtype in classes and rtype not in present:
            receptacles.update({f"{rtype}|{_coords(rng)}": rtype for _ in range(count)})
    for basin in ("SinkBasin", "BathtubBasin"):
        if basin in classes and basin not in present:
            receptacles[f"{basin[:-5]}|{_coords(rng)}|{basin}"] = basin
    return receptacles, sorted(classes)


def generate(task_type: str, seed: int) -> Problem:
    """The ALFRED-style problem for (task type, seed); deterministic."""
    if task_type not in TASK_TYPES:
        raise ValueError(f"unknown household task {task_type!r}; known: {', '.join(TASK_TYPES)}")
    rng = random.Random(f"household/{task_type}/{seed}")
    plans = _floor_plans(task_type, seed)
    for _ in range(200):  # a room that cannot host the task is redrawn
        problem = _try_room(task_type, seed, rng.choice(plans), rng)
        if problem is not None:
            return problem
    raise RuntimeError(f"no room can host {task_type} (seed {seed})")


# Long on purpose: one room sampled in order (receptacles, objects, the target, its placement); the
# random draws must stay in this order for a seed to keep giving the same game.
def _try_room(task_type: str, seed: int, plan: int, rng: random.Random) -> Problem | None:
    constants, goals, layouts = _alfred()
    fits = constants.VAL_RECEPTACLE_OBJECTS
    receptacles, classes = _room(layouts, plan, rng)
    rtypes = sorted(set(receptacles.values()))
    # Objects are the floor plan's classes that fit in at least one receptacle of the room.
    otypes = [c for c in classes if c in constants.OBJECTS_SET and any(c in fits.get(r, ()) for r in rtypes)]
    appliance = APPLIANCE.get(task_type)
    if appliance and appliance not in rtypes:
        return None
    lamp_homes = [r for r in receptacles if receptacles[r] in LAMP_RECEPTACLES]
    if task_type == "look_at_obj_in_light" and ("DeskLamp" not in classes or not lamp_homes):
        return None

    # The target: an object class with the task's property and a receptacle class that can hold it.
    pairs = [
        (o, r)
        for o in otypes
        for r in rtypes
        if o in fits.get(r, ())
        and r != appliance
        and (appliance is None or o in constants.VAL_ACTION_OBJECTS[PROPERTY[appliance]])
        and any(o in fits.get(s, ()) for s in rtypes if s not in (r, appliance))
    ]
    if not pairs:
        return None
    obj, recep = rng.choice(pairs)
    toggle = "DeskLamp" if task_type == "look_at_obj_in_light" else ""
    if toggle:
        recep = ""  # ALFRED's look_at task has no parent receptacle

    # Fill the room: every object goes into a receptacle that can hold it; the target class never
    # starts in the target or appliance receptacle class (else the goal would be half done).
    distractors = [o for o in otypes if o != obj]
    chosen = sorted(rng.sample(distractors, min(len(distractors), rng.randint(8, 14))))
    copies = {o: rng.randint(1, MAX_COPIES) for o in chosen}
    copies[obj] = rng.randint(2, 3) if task_type == "pick_two_obj_and_place" else rng.randint(1, 2)
    placed: list[tuple[str, str, str]] = []  # (object id, class, receptacle id)
    for otype in sorted(copies):
        banned = {recep, appliance} if otype == obj else set()
        homes = [
            r for r in receptacles if otype in fits.get(receptacles[r], ()) and receptacles[r] not in banned
        ]
        for _ in range(copies[otype]):
            home = rng.choice(homes)
            placed.append((f"{otype}|{_coords(rng)}", otype, home))
    if "DeskLamp" in classes and lamp_homes:  # scenery in most rooms, the light in look_at tasks
        placed.append((f"DeskLamp|{_coords(rng)}", "DeskLamp", rng.choice(lamp_homes)))
    if len({oid for oid, _, _ in placed}) < len(placed):
        return None  # two objects drew the same coordinates

    template = rng.choice(goals.gdict[task_type]["templates"])
    desc = template.format(obj=obj.lower(), recep=recep.lower(), toggle=toggle.lower(), mrecep="")
    goal = goals.gdict[task_type]["pddl"].format(obj=obj, recep=recep, toggle=toggle).replace("#", "-")
    params = {
        "object_target": obj,
        "parent_target": recep,
        "toggle_target": toggle,
        "mrecep_target": "",
        "object_sliced": False,
    }
    text = _problem_text(constants, receptacles, placed, goal, rng)
    return Problem(task_type, seed, f"FloorPlan{plan}", desc, params, text)


def _problem_text(
    constants: Any,
    receptacles: dict[str, str],
    placed: list[tuple[str, str, str]],
    goal: str,
    rng: random.Random,
) -> str:
    """The ALFRED-style ``(define (problem ...))``; ``goal`` closes the define, as in ALFRED."""
    fits = constants.VAL_RECEPTACLE_OBJECTS
    actions = constants.VAL_ACTION_OBJECTS
    # One location per receptacle (ALFRED's loc|x|z|rotation|horizon), plus the agent's start.
    locations: dict[str, str] = {}
    taken: set[str] = set()
    for rid in [*receptacles, "agent"]:
        loc = (
            f"loc|{rng.randint(-12, 12)}|{rng.randint(-12, 12)}|{rng.randint(0, 3)}|{rng.choice((0, 30, 60))}"
        )
        while loc in taken:
            loc = loc + "0"
        taken.add(loc)
        locations[rid] = loc
    otypes = sorted({o for _, o, _ in placed})
    rtypes = sorted(set(receptacles.values()))
    objects = ["agent1 - agent"]
    objects += [f"{_mangle(o)} - object" for o, _, _ in placed]
    objects += [f"{_mangle(r)} - receptacle" for r in receptacles]
    objects += [f"{_mangle(loc)} - location" for loc in locations.values()]
    objects += [f"{t}Type - otype" for t in otypes] + [f"{t}Type - rtype" for t in rtypes]
    init = ["(= (total-cost) 0)", f"(atLocation agent1 {_mangle(locations['agent'])})"]
    for rid, rtype in receptacles.items():
        init.append(f"(receptacleType {_mangle(rid)} {rtype}Type)")
        init.append(f"(receptacleAtLocation {_mangle(rid)} {_mangle(locations[rid])})")
        if rtype in constants.OPENABLE_CLASS_SET:
            init.append(f"(openable {_mangle(rid)})")
    for oid, otype, home in placed:
        o = _mangle(oid)
        init += [
            f"(objectType {o} {otype}Type)",
            f"(inReceptacle {o} {_mangle(home)})",
            f"(objectAtLocation {o} {_mangle(locations[home])})",
        ]
        if otype in actions["Toggleable"]:
            init.append(f"(toggleable {o})")
        else:
            init.append(f"(pickupable {o})")
        for prop, fact in (("Cleanable", "cleanable"), ("Heatable", "heatable"), ("Coolable", "coolable")):
            if otype in actions[prop]:
                init.append(f"({fact} {o})")
    # Without canContain for a pair, FD finds no move action for it (and no plan for the goal).
    init += [f"(canContain {r}Type {o}Type)" for r in rtypes for o in otypes if o in fits.get(r, ())]
    return (
        "(define (problem plan_household)\n(:domain alfred)\n(:objects\n"
        + "\n".join(objects)
        + "\n)\n(:init\n"
        + "\n".join(init)
        + "\n)\n"
        + goal.strip()
        + "\n"
    )


def write_game(problem: Problem, directory: str | os.PathLike, walkthrough: list[str] | None = None) -> Path:
    """Write ``traj_data.json`` and ``game.tw-pddl`` into ``directory`` atomically; return the game path.

    ``game.tw-pddl`` is written last, so its presence means the game is complete.
    """
    _, _, layouts = _alfred()
    data = layouts.parent.parent / "data"
    grammar = (data / "alfred.twl2").read_text().replace("UNKNOWN GOAL", problem.task_desc)
    game = {
        "pddl_domain": (data / "alfred.pddl").read_text(),
        "grammar": grammar,
        "pddl_problem": problem.pddl_problem,
        "solvable": walkthrough is not None,
        "walkthrough": walkthrough,
    }
    traj = {
        "task_type": problem.task_type,
        "pddl_params": problem.pddl_params,
        "scene": {"floor_plan": problem.floor_plan, "seed": problem.seed},
        "task_desc": problem.task_desc,
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_atomic(directory / "traj_data.json", json.dumps(traj, indent=1))
    write_atomic(directory / "game.tw-pddl", json.dumps(game))
    return directory / "game.tw-pddl"


def replanning_problem(
    facts: list[Any], types: dict[str, str], task_type: str, pddl_params: dict[str, Any], goal: str
) -> str:
    """The current state as a PDDL problem, cut down to what the task needs, for the planner.

    TextWorld's planner runs a blind (uniform-cost) search, and a kitchen's ~17 cabinets and drawers
    that could be opened or closed make that take minutes. The cut keeps every entity a plan can
    use (objects of the target classes and the held object; receptacles holding them, of the target
    or appliance class, at the agent's location, and one drop-off for a held non-target object) with
    all their facts, so each plan found is valid in the full game and as short as one there.

    Args:
        facts: ``PddlState.facts`` (propositions over lowercased ids).
        types: object id -> PDDL type (``PddlState.name2type``).
        task_type, pddl_params: from ``traj_data.json``.
        goal: the problem's ``(:goal ...)`` text, with the ``)`` that closes the problem.
    """
    by_name: dict[str, list[tuple[str, ...]]] = {}
    for fact in facts:
        if "@" not in fact.name and fact.name not in ("checked", "examined"):
            by_name.setdefault(fact.name, []).append(tuple(arg.name for arg in fact.arguments))
    kind = {o: t for (o, t) in by_name.get("objecttype", [])} | {
        r: t for (r, t) in by_name.get("receptacletype", [])
    }
    wanted = {f"{pddl_params[k].lower()}type" for k in ("object_target", "toggle_target") if pddl_params[k]}
    recep_types = {f"{pddl_params['parent_target'].lower()}type"}
    if task_type in APPLIANCE:
        recep_types.add(f"{APPLIANCE[task_type].lower()}type")
    held = {o for (_, o) in by_name.get("holds", [])}
    objects = {o for o, t in kind.items() if types.get(o) == "object" and t in wanted} | held
    here = {loc for (_, loc) in by_name.get("atlocation", [])}
    at = dict(by_name.get("receptacleatlocation", []))
    receptacles = {r for (o, r) in by_name.get("inreceptacle", []) if o in objects}
    receptacles |= {r for r, loc in at.items() if kind.get(r) in recep_types or loc in here}
    for o in sorted(held - {o for o in objects if kind[o] in wanted}):  # somewhere to put it down
        fits = {rt for (rt, ot) in by_name.get("cancontain", []) if ot == kind[o]}
        homes = sorted((r in {x for (x,) in by_name.get("openable", [])}, r) for r in at if kind[r] in fits)
        receptacles |= {homes[0][1]} if homes else set()
    keep = objects | receptacles | {at[r] for r in receptacles} | here | {"agent1"}
    keep |= {n for n, t in types.items() if t in ("otype", "rtype")}
    init = ["(= (total-cost) 0)"] + [
        f"({name} {' '.join(args)})"
        for name, rows in sorted(by_name.items())
        for args in sorted(rows)
        if set(args) <= keep
    ]
    declared = "\n".join(f"{n} - {types[n]}" for n in sorted(keep))
    return (
        "(define (problem replan)\n(:domain alfred)\n(:objects\n"
        + declared
        + "\n)\n(:init\n"
        + "\n".join(init)
        + "\n)\n"
        + goal.strip()
        + "\n"
    )
