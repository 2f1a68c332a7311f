"""Seeded problem generators for the PDDL family: gripper, blocksworld, tyreworld and barman.

Each generator writes a small problem for our own domain files (``pddl_domains/<task>.pddl``):
the oracle (:mod:`refinelib.envs.pddl`) finds a plan in well under a second. Sizes grow mildly
with the seed, so the first seeds are the easiest; ``size`` overrides the seed's size. No goal
literal holds in the initial state, so progress starts at 0 and every goal literal is work.

>>> "(at-robby room" in problem_text("gripper", 0)
True
"""

from __future__ import annotations

import random
from pathlib import Path

from refinelib.paths import write_atomic

DOMAINS = ("gripper", "blocksworld", "tyreworld", "barman")


def default_size(task: str, seed: int) -> int:
    """The size a seed gets: balls, blocks, hubs or drinks to serve (AgentBoard-like ranges)."""
    grow = {"gripper": (3, 5, 6), "blocksworld": (3, 3, 6), "tyreworld": (1, 4, 3), "barman": (1, 10, 2)}
    start, every, most = grow[task]
    return min(most, start + max(0, seed) // every)


def problem_text(task: str, seed: int, size: int | None = None) -> str:
    """The PDDL problem of ``task`` for ``seed`` (same seed and size, same text)."""
    if task not in DOMAINS:
        raise ValueError(f"unknown PDDL domain {task!r}; known: {', '.join(DOMAINS)}")
    size = default_size(task, seed) if size is None else int(size)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    rng = random.Random(f"{task}/{seed}/{size}")  # str seeds hash with sha512: stable across runs
    objects, init, goal = _GENERATORS[task](rng, size)
    return _render(f"{task}-{seed}-{size}", task, objects, init, goal)


def write_problem(task: str, seed: int, size: int | None, directory: Path) -> Path:
    """Write the problem into ``directory`` once (atomically) and return its path."""
    size = default_size(task, seed) if size is None else int(size)
    path = Path(directory) / f"{task}-seed{seed}-size{size}.pddl"
    if not path.exists():
        write_atomic(path, problem_text(task, seed, size))
    return path


# ----- the generators: (rng, size) -> (objects by type, init facts, goal facts) ---------------
Facts = list[tuple[str, ...]]


def _gripper(rng: random.Random, n_balls: int) -> tuple[dict, Facts, Facts]:
    # two rooms like AgentBoard's problems, a third one on some seeds for variety
    rooms = ["rooma", "roomb", "roomc"][: 2 + (rng.random() < 0.3)]
    balls = [f"ball{i}" for i in range(1, n_balls + 1)]
    start = {b: rng.choice(rooms) for b in balls}
    init = [("at-robby", rng.choice(rooms)), ("free", "left"), ("free", "right")]
    init += [("at", b, start[b]) for b in balls]
    goal = [("at", b, rng.choice([r for r in rooms if r != start[b]])) for b in balls]
    return {"room": rooms, "ball": balls, "gripper": ["left", "right"]}, init, goal


def _towers(rng: random.Random, blocks: list[str]) -> list[list[str]]:
    """A random arrangement of blocks into towers (bottom first)."""
    towers: list[list[str]] = []
    for b in rng.sample(blocks, len(blocks)):
        slot = rng.randrange(len(towers) + 1)
        (towers[slot].append(b) if slot < len(towers) else towers.append([b]))
    return towers


def _blocksworld(rng: random.Random, n_blocks: int) -> tuple[dict, Facts, Facts]:
    n_blocks = max(2, n_blocks)
    blocks = [f"b{i}" for i in range(1, n_blocks + 1)]
    towers = _towers(rng, blocks)
    init: Facts = [("arm-empty",)]
    for t in towers:
        init += [("on-table", t[0]), ("clear", t[-1])]
        init += [("on", a, b) for b, a in zip(t, t[1:], strict=False)]
    while True:  # AgentBoard's goals are `on` facts only; none may hold already
        goal = [("on", a, b) for t in _towers(rng, blocks) for b, a in zip(t, t[1:], strict=False)]
        if len(goal) >= min(2, n_blocks - 1) and not set(goal) & set(init):
            return {"block": blocks}, init, goal


def _tyreworld(rng: random.Random, n_hubs: int) -> tuple[dict, Facts, Facts]:
    hubs = [f"hub{i}" for i in range(1, n_hubs + 1)]
    init: Facts = [("in", t, "boot") for t in ("jack", "pump", "wrench")]
    init += [("unlocked", "boot"), ("closed", "boot")]
    goal: Facts = []
    for i, hub in enumerate(hubs, 1):
        flat, spare, nut = f"w{i}", f"r{i}", f"nut{i}"
        init += [("intact", spare), ("in", spare, "boot"), ("not-inflated", spare), ("on", flat, hub),
                 ("on-ground", hub), ("tight", nut, hub), ("fastened", hub)]
        # AgentBoard's goals: some of "spare on hub, spare inflated, flat wheel in the boot"
        wanted = [("on", spare, hub), ("inflated", spare), ("in", flat, "boot")]
        goal += wanted if rng.random() < 0.7 else rng.sample(wanted, rng.randint(1, 2))
    objects = {"hub": hubs, "nut": [f"nut{i}" for i in range(1, n_hubs + 1)], "container": ["boot"],
               "wheel": [f"{w}{i}" for i in range(1, n_hubs + 1) for w in "rw"]}
    return objects, init, goal


def _barman(rng: random.Random, n_drinks: int) -> tuple[dict, Facts, Facts]:
    shots = [f"shot{i}" for i in range(1, n_drinks + 3 + rng.randint(0, 1))]
    ingredients = [f"ingredient{i}" for i in (1, 2, 3)]
    cocktails = [f"cocktail{i}" for i in range(1, 4)]
    init: Facts = [("ontable", c) for c in ["shaker1", *shots]]
    init += [("clean", c) for c in ["shaker1", *shots]] + [("empty", c) for c in ["shaker1", *shots]]
    init += [("dispenses", f"dispenser{i}", f"ingredient{i}") for i in (1, 2, 3)]
    init += [("handempty", "left"), ("handempty", "right"), ("shaker-empty-level", "shaker1", "l0"),
             ("shaker-level", "shaker1", "l0"), ("next", "l0", "l1"), ("next", "l1", "l2")]
    for c in cocktails:
        first, second = rng.sample(ingredients, 2)
        init += [("cocktail-part1", c, first), ("cocktail-part2", c, second)]
    # one cocktail per problem keeps the search small; a second drink is a plain ingredient
    goal: Facts = [("contains", shots[0], rng.choice(cocktails))]
    goal += [("contains", shots[i], rng.choice(ingredients)) for i in range(1, n_drinks)]
    objects = {"shaker": ["shaker1"], "hand": ["left", "right"], "shot": shots, "ingredient": ingredients,
               "cocktail": cocktails, "dispenser": [f"dispenser{i}" for i in (1, 2, 3)],
               "level": ["l0", "l1", "l2"]}
    return objects, init, goal


_GENERATORS = {"gripper": _gripper, "blocksworld": _blocksworld, "tyreworld": _tyreworld, "barman": _barman}


def _render(name: str, task: str, objects: dict[str, list[str]], init: Facts, goal: Facts) -> str:
    def fact(f: tuple[str, ...]) -> str:
        return "(" + " ".join(f) + ")"

    lines = [f"(define (problem {name})", f"  (:domain {task})", "  (:objects"]
    lines += [f"    {' '.join(names)} - {kind}" for kind, names in objects.items()]
    lines += ["  )", "  (:init"] + [f"    {fact(f)}" for f in init] + ["  )"]
    lines += ["  (:goal (and"] + [f"    {fact(f)}" for f in goal] + ["  )))"]
    return "\n".join(lines) + "\n"
