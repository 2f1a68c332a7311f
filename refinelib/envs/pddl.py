"""PDDL-text: classic STRIPS planning domains played through natural-language text.

Our own domain files (``pddl_domains/{gripper,blocksworld,tyreworld,barman}.pddl``, STRIPS +
typing) and seeded problem generators (:mod:`refinelib.envs.pddl_problems`); ``pyperplan==2.1``
parses and grounds them and is the oracle. AgentBoard's 60 original problems can be played too
(:func:`agentboard_instances`, read from a directory the user gives, never copied here).

* **Observation**: the state's facts as sentences, one template per predicate ("Ball ball1 is in
  room rooma.", "The left gripper is free."), sorted. The first observation shows every fact; later
  ones leave out the static facts (which no action changes: cocktail recipes, dispensers, levels).
* **Goal**: "The goal is to satisfy the following conditions: " + the goal facts as sentences.
* **Actions**: operator name + object names, as in AgentBoard's prompts: ``pick ball1 rooma left``,
  ``unstack b1 b2``, ``fill-shot shot1 ingredient1 left right dispenser1``. Valid actions = the
  applicable ground operators that change the state (``move rooma rooma`` does not).
* **Parser**: strict and our own (AgentBoard's needs nltk's ``punkt`` download). Unknown action,
  wrong arity, unknown object, wrong type and unmet preconditions each get their own message, and
  the state stays as it was.
* **Progress**: fraction of goal facts true (max-tracked by the base class); won when all hold.
* **Oracle**: greedy best-first search with hFF (hAdd breaks ties) in a fixed order, so plans do not
  depend on PYTHONHASHSEED. Problems with several goals that a search cannot solve within a node
  budget are served goal by goal (FF's goal agenda); this solves all 20 AgentBoard barman
  problems in < 1 s each, where plain GBFS + hFF stalls for minutes on five. The plan is kept while
  the agent follows it and recomputed after any deviation; a time cap ends a search with
  :class:`OracleTimeout`.

Run ``python -m refinelib.envs.pddl`` to print one episode of the oracle.
"""

from __future__ import annotations

import functools
import heapq
import importlib.resources
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refinelib.envs import pddl_problems
from refinelib.envs.base import Instance, Outcome, TextEnv, check_known, require
from refinelib.paths import cache_dir

TASKS: tuple[str, ...] = ("gripper", "blocksworld", "tyreworld", "barman")
SCALES = {"small": dict.fromkeys(TASKS, 2),  # CI: the two smallest problems of each domain
          "agentboard": {"gripper": 20, "blocksworld": 10, "tyreworld": 10, "barman": 20}}
AGENTBOARD_NAMES = {"gripper": "gripper", "blocksworld": "blockworld", "tyreworld": "tyreworld",
                    "barman": "barman"}  # our task -> AgentBoard's folder and domain file name
OPTIONS = ("size", "problem_file", "domain_file", "oracle_time_limit")
_BACKEND = "pyperplan==2.1 (pip install pyperplan==2.1)"
_EXPANSIONS = 300  # node budget of one oracle strategy before the next gets its turn (find_plan)

TEMPLATES: dict[str, dict[str, str]] = {
    "gripper": {
        "at-robby": "The robot is in room {0}.", "at": "Ball {0} is in room {1}.",
        "free": "The {0} gripper is free.", "carry": "The {1} gripper is carrying ball {0}.",
        # the type predicates of AgentBoard's untyped gripper domain
        "room": "The object {0} is a room.", "ball": "The object {0} is a ball.",
        "gripper": "The object {0} is a gripper.",
    },
    "blocksworld": {
        "on": "Block {0} is on block {1}.", "on-table": "Block {0} is on the table.",
        "clear": "Block {0} is clear.", "arm-empty": "The arm is empty.",
        "holding": "The arm is holding block {0}.",
    },
    "tyreworld": {
        "isopen": "The {0} is open.", "closed": "The {0} is closed.", "unlocked": "The {0} is unlocked.",
        "have": "You have {0}.", "in": "The {0} is in the {1}.", "loose": "Nut {0} on hub {1} is loose.",
        "tight": "Nut {0} on hub {1} is tight.", "on-ground": "Hub {0} is on the ground.",
        "not-on-ground": "Hub {0} is not on the ground.", "fastened": "Hub {0} is fastened.",
        "unfastened": "Hub {0} is unfastened.", "free": "Hub {0} is free.",
        "on": "Wheel {0} is on hub {1}.", "inflated": "Wheel {0} is inflated.",
        "not-inflated": "Wheel {0} is not inflated.", "intact": "Wheel {0} is intact.",
    },
    "barman": {
        "ontable": "The {0} is on the table.", "holding": "The {0} hand is holding {1}.",
        "handempty": "The {0} hand is empty.", "empty": "The {0} is empty.",
        "contains": "The {0} contains {1}.", "clean": "The {0} is clean.",
        "used": "The {0} has been used for {1}.", "dispenses": "The {0} dispenses {1}.",
        "shaker-empty-level": "The empty level of {0} is {1}.", "shaker-level": "The {0} is at level {1}.",
        "next": "Level {1} is one above level {0}.", "unshaked": "The {0} has not been shaken.",
        "shaked": "The {0} has been shaken.", "cocktail-part1": "The first ingredient of {0} is {1}.",
        "cocktail-part2": "The second ingredient of {0} is {1}.",
    },
}


class OracleTimeout(RuntimeError):
    """The oracle's search ran past its time limit (``oracle_time_limit``)."""


# ----- rendering ----------------------------------------------------------------------------
def sentence(task: str, fact: str) -> str:
    """One fact, e.g. ``(at ball1 rooma)``, as a sentence of ``task``'s templates."""
    predicate, *args = fact.strip("()").split()
    template = TEMPLATES.get(task, {}).get(predicate)
    return template.format(*args) if template else f"The fact '{' '.join([predicate, *args])}' holds."


def render(task: str, facts: Iterable[str]) -> str:
    """Facts as sorted sentences (sorted so that set order never shows in the text)."""
    return " ".join(sorted(sentence(task, f) for f in facts))


def action_text(operator_name: str) -> str:
    """pyperplan's ``(pick ball1 rooma left)`` as the agent types it: ``pick ball1 rooma left``."""
    return operator_name.strip("()")


# ----- problems ------------------------------------------------------------------------------
@dataclass
class Problem:
    """A parsed and grounded problem: what the simulator, the parser and the oracle need."""

    task: str  # the template set (gripper, blocksworld, tyreworld, barman)
    schemas: dict[str, Any]  # action name -> pyperplan Action (parameters, preconditions)
    objects: dict[str, Any]  # object name -> pyperplan Type (constants included)
    init: frozenset[str]  # every fact of the initial state, statics included
    statics: frozenset[str]  # facts of predicates no action changes
    goals: frozenset[str]
    operators: dict[str, Any]  # action text -> ground operator (those with an effect)
    search: Any  # pyperplan Task for the oracle: statics gone, irrelevant operators pruned, sorted


def domain_file(task: str) -> Path:
    """Our domain file of ``task`` (package data)."""
    return Path(str(importlib.resources.files("refinelib.envs") / "pddl_domains" / f"{task}.pddl"))


def load_problem(task: str, domain_path: Path, problem_path: Path) -> Problem:
    """Parse and ground a domain + problem pair with pyperplan."""
    parser = require("pyperplan.pddl.parser", "pddl", _BACKEND)
    grounding = require("pyperplan.grounding", "pddl", _BACKEND)
    pddl = parser.Parser(str(domain_path), str(problem_path))
    domain = pddl.parse_domain()
    problem = pddl.parse_problem(domain)
    # the simulator keeps every operator and the static facts; the oracle's copy drops both
    full = grounding.ground(problem, remove_statics_from_initial_state=False,
                            remove_irrelevant_operators=False)
    search = grounding.ground(problem)
    search.operators = sorted(search.operators, key=lambda op: op.name)  # fixed successor order
    changed = {p.name for a in domain.actions.values() for p in a.effect.addlist | a.effect.dellist}
    statics = frozenset(f for f in full.initial_state if f.strip("()").split()[0] not in changed)
    operators = {action_text(op.name): op for op in full.operators if op.add_effects or op.del_effects}
    return Problem(task, dict(domain.actions), dict(problem.objects), frozenset(full.initial_state),
                   statics, frozenset(full.goals), operators, search)


# ----- the strict action parser ----------------------------------------------------------------
def tokenize(action: str) -> list[str]:
    """Lower-cased words; brackets, commas and quotes are separators (``(pick ball1 ...)`` works)."""
    return re.sub(r"[(),;'\"`]", " ", action.lower()).split()


def _is_a(kind: Any, wanted: Any) -> bool:
    while kind is not None:
        if kind.name == wanted.name:
            return True
        kind = kind.parent
    return False


def check_action(problem: Problem, state: frozenset[str], action: str) -> tuple[str, str]:
    """``(action text, "")`` for an applicable action, else ``("", feedback saying what is wrong)``."""
    words = tokenize(action)
    if not words:
        return "", "Empty action. Type an action name followed by its objects, e.g. one of the valid actions."
    name, args = words[0], words[1:]
    schema = problem.schemas.get(name)
    if schema is None:
        return "", f"Unknown action '{name}'. The actions are: {', '.join(sorted(problem.schemas))}."
    params = schema.signature  # [(variable, (type, ...)), ...]
    # typed domains show the type, untyped ones (AgentBoard's gripper) the parameter's name
    kinds = [v.lstrip("?") if t[0].name == "object" else t[0].name for v, t in params]
    usage = " ".join([name] + [f"<{k}>" for k in kinds])
    if len(args) != len(params):
        return "", (f"'{name}' takes {len(params)} argument{'s' * (len(params) != 1)} ({usage}), "
                    f"got {len(args)}.")
    for arg in args:
        if arg not in problem.objects:
            return "", f"No object named '{arg}'. The objects are: {', '.join(sorted(problem.objects))}."
    for i, (arg, (_, types)) in enumerate(zip(args, params, strict=True), 1):
        if not any(_is_a(problem.objects[arg], t) for t in types):
            wanted = " or ".join(t.name for t in types)
            return "", (f"'{arg}' is a {problem.objects[arg].name}, but argument {i} of '{name}' must be "
                        f"a {wanted} ({usage}).")
    binding = dict(zip((v for v, _ in params), args, strict=True))
    needed = ["(" + " ".join([p.name] + [binding.get(v, v) for v, _ in p.signature]) + ")"
              for p in schema.precondition]
    missing = [f for f in needed if f not in state]
    if missing:
        unmet = " ".join(sentence(problem.task, f) for f in missing)
        return "", f"The action is not applicable. Unmet condition{'s' * (len(missing) > 1)}: {unmet}"
    text = " ".join(words)
    if text not in problem.operators:
        return "", f"The action '{text}' would change nothing."
    return text, ""


# ----- the oracle: deterministic greedy best-first search ----------------------------------------
@functools.cache
def _heuristic_class() -> type:
    relaxation = require("pyperplan.heuristics.relaxation", "pddl", _BACKEND)

    class OrderedFF(relaxation.hFFHeuristic):
        """hFF, then hAdd as tie-breaker, with facts visited in sorted order.

        pyperplan walks facts in set order, which follows PYTHONHASHSEED; ties in its Dijkstra
        pass then pick other cheapest achievers, other relaxed plans and other searches.
        """

        def __init__(self, task: Any) -> None:
            super().__init__(task)
            for op in self.operators:
                op.add_effects = tuple(sorted(op.add_effects))

        def __call__(self, node: Any) -> Any:
            state = sorted(node.state)
            self.init_distance(set(state))
            heap = [(0, 0, self.start_state)] + [(0, i, self.facts[f]) for i, f in enumerate(state, 1)]
            self.tie_breaker = len(heap)  # a sorted list is a valid heap
            self.dijkstra(heap)
            ff = self.calc_goal_h()
            return ff if ff == float("inf") else (ff, sum(self.facts[g].distance for g in self.goals))

    return OrderedFF


def _gbfs(task: Any, budget: int | None, deadline: float, limit: float) -> list[Any] | None:
    """Greedy best-first search; None when the space or the node budget is exhausted."""
    searchspace = require("pyperplan.search.searchspace", "pddl", _BACKEND)
    h = _heuristic_class()(task)
    root = searchspace.make_root_node(task.initial_state)
    value = h(root)
    if value == float("inf"):
        return None
    frontier, seen, tie, expanded = [(value, 0, root)], {task.initial_state}, 0, 0
    while frontier:
        node = heapq.heappop(frontier)[2]
        if task.goal_reached(node.state):
            return node.extract_solution()
        expanded += 1
        if budget is not None and expanded > budget:
            return None
        if expanded % 16 == 0 and time.monotonic() > deadline:
            raise OracleTimeout(f"the PDDL oracle found no plan for {task.name!r} within {limit:g} s "
                                "(raise the env option oracle_time_limit, or use a smaller problem)")
        for op in task.operators:
            if op.preconditions <= node.state:
                succ = (node.state - op.del_effects) | op.add_effects
                if succ not in seen:
                    seen.add(succ)
                    child = searchspace.make_child_node(node, op, succ)
                    value = h(child)
                    if value != float("inf"):
                        tie += 1
                        heapq.heappush(frontier, (value, tie, child))
    return None


def find_plan(search: Any, state: frozenset[str], time_limit: float = 30.0) -> list[str] | None:
    """A plan (action texts) from ``state`` to the goal of ``search``; None if there is none.

    Strategies, each with a node budget, first success wins: all goals at once; then the goals
    one more at a time in sorted order (a goal agenda), then in reverse order; last, all goals
    at once without a budget. Raises :class:`OracleTimeout` after ``time_limit`` seconds.
    """
    task_class = require("pyperplan.task", "pddl", _BACKEND).Task
    deadline = time.monotonic() + time_limit
    start = state & search.facts  # the search task has no static facts
    goals = sorted(search.goals)
    agendas = [[goals]]
    if len(goals) > 1:
        agendas += [[goals[:k] for k in range(1, len(goals) + 1)],
                    [goals[::-1][:k] for k in range(1, len(goals) + 1)]]
    for agenda, budget in [(a, _EXPANSIONS) for a in agendas] + [([goals], None)]:
        current, plan = start, []
        for stage in agenda:
            sub = task_class(search.name, search.facts, current, frozenset(stage), search.operators)
            steps = _gbfs(sub, budget, deadline, time_limit)
            if steps is None:
                break
            for op in steps:
                current = op.apply(current)
            plan += [action_text(op.name) for op in steps]
        else:
            return plan
    return None


# ----- the environment ---------------------------------------------------------------------------
class PDDLEnv(TextEnv):
    """One PDDL domain; ``reset(seed)`` plays the generated problem of the seed.

    Options: ``size`` (balls, blocks, hubs or drinks; default grows with the seed),
    ``problem_file`` (play this file instead; its domain is ``<dir>/../<dir name>.pddl``, as in
    AgentBoard's layout, or ``domain_file``), ``oracle_time_limit`` (seconds, default 30).
    """

    family = "pddl"
    version = "1"
    OPTIONS = OPTIONS

    def __init__(self, task: str, **options: Any) -> None:
        check_known("pddl", "task", [task], TASKS)
        super().__init__(task, **options)
        self.problem: Problem | None = None
        self.state: frozenset[str] = frozenset()
        self._plan: list[str] = []  # the oracle's remaining plan, valid while state == _plan_state
        self._plan_state: frozenset[str] | None = None
        self._loaded: dict[tuple[str, str], Problem] = {}

    def _files(self, seed: int) -> tuple[Path, Path]:
        if not self.options.get("problem_file"):
            directory = cache_dir("pddl", self.version, self.task)
            return domain_file(self.task), pddl_problems.write_problem(
                self.task, seed, self.options.get("size"), directory)
        problem = Path(self.options["problem_file"])
        beside = problem.parent.parent / f"{problem.parent.name}.pddl"  # AgentBoard's layout
        domain = Path(self.options.get("domain_file") or beside)
        for path in (problem, domain):
            if not path.is_file():
                raise FileNotFoundError(f"PDDL file {path} is missing (problem_file={problem})")
        return domain, problem

    def _reset(self, seed: int) -> tuple[str, str]:
        files = self._files(seed)
        key = (str(files[0]), str(files[1]))
        if key not in self._loaded:
            self._loaded[key] = load_problem(self.task, *files)
        self.problem = self._loaded[key]
        self.state = self.problem.init
        self._plan, self._plan_state = [], None
        goal = "The goal is to satisfy the following conditions: " + render(self.task, self.problem.goals)
        return goal, render(self.task, self.state)

    def _step(self, action: str) -> Outcome:
        assert self.problem is not None
        text, feedback = check_action(self.problem, self.state, action)
        if not text:
            return Outcome(feedback, valid=False)
        before, self.state = self.state, self.problem.operators[text].apply(self.state)
        if self._plan_state == before and self._plan[:1] == [text]:  # the agent follows the oracle
            self._plan, self._plan_state = self._plan[1:], self.state
        won = self.problem.goals <= self.state
        observation = render(self.task, self.state - self.problem.statics)
        return Outcome(observation + (" The goal is satisfied." if won else ""), valid=True, won=won,
                       progress=self.goal_fraction())

    def goal_fraction(self) -> float:
        """Share of goal facts true now (AgentBoard's PDDL progress, before max-tracking)."""
        assert self.problem is not None
        return len(self.problem.goals & self.state) / max(1, len(self.problem.goals))

    def _valid_actions(self) -> list[str]:
        assert self.problem is not None
        return [text for text, op in self.problem.operators.items() if op.preconditions <= self.state]

    def oracle_action(self) -> str | None:
        if self.problem is None or self.problem.goals <= self.state:
            return None
        if self._plan_state != self.state:
            limit = float(self.options.get("oracle_time_limit", 30.0))
            self._plan = find_plan(self.problem.search, self.state, limit) or []
            self._plan_state = self.state
        return self._plan[0] if self._plan else None

    def snapshot(self) -> Any:
        return tuple(sorted(self.state))


# ----- instance lists ------------------------------------------------------------------------------
def instances(scale: str = "small", tasks: Sequence[str] | None = None,
              first_seed: int | None = None) -> list[Instance]:
    """Generated problems: "small" (2 per domain) or "agentboard" (AgentBoard's 20/10/10/20 counts)."""
    check_known("pddl", "scale", [scale], SCALES)
    chosen = tuple(tasks) if tasks is not None else TASKS
    check_known("pddl", "tasks", chosen, TASKS)
    start = 0 if first_seed is None else int(first_seed)
    return [Instance(PDDLEnv.family, task, seed) for task in chosen
            for seed in range(start, start + SCALES[scale][task])]


def _natural(path: Path) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path.name))


def agentboard_instances(directory: str | Path, tasks: Sequence[str] | None = None) -> list[Instance]:
    """AgentBoard's original problems (gripper 20, blockworld 10, tyreworld 10, barman 20).

    ``directory`` holds ``<name>.pddl`` domain files and ``<name>/`` problem folders (AgentBoard's
    ``pddlgym/pddl`` layout; ``blockworld`` is our ``blocksworld``). Seeds number the problems 1..n.
    """
    root = Path(directory).expanduser().resolve()
    chosen = tuple(tasks) if tasks is not None else TASKS
    check_known("pddl", "tasks", chosen, TASKS)
    found = []
    for task in chosen:
        name = AGENTBOARD_NAMES[task]
        problems = sorted((root / name).glob("*.pddl"), key=_natural)
        if not (root / f"{name}.pddl").is_file() or not problems:
            raise FileNotFoundError(f"AgentBoard's PDDL problems for {task!r} are missing from {root}: "
                                    f"expected {root / (name + '.pddl')} and {root / name}/*.pddl")
        found += [Instance(PDDLEnv.family, task, i, (("problem_file", str(p)),))
                  for i, p in enumerate(problems, 1)]
    return found


if __name__ == "__main__":
    from refinelib.envs.rollout import play

    print(play(PDDLEnv("gripper"), 0).render())
