"""Household: the real ALFWorld engine on ALFRED-style games we generate (AgentBoard's ALFWorld).

The engine is ``alfworld==0.4.2`` on ``textworld[pddl]==1.7.0``: TextWorld's ``PddlEnv`` plays the
ALFRED PDDL domain with Fast Downward, ALFWorld's wrappers give objects their names ("apple 1") and
the planner expert gives the oracle action from any state. Games come from :mod:`household_gen`
and are cached per (task type, seed).

* goal / observation: the intro split as in AgentBoard ("You are in the middle of a room. ..." /
  "Your task is to: ...").
* valid actions: the engine's ``admissible_commands`` (``go to``, ``take X from Y``, ``move X to Y``,
  ``heat X with Y``, ``use X``, ``look``, ``inventory``, ``examine``, ``help``); anything else gets
  ALFWorld's "Nothing happens." and is not sent to the engine.
* progress: AgentBoard-style regex subgoals per task type, matched/(n+1); winning gives 1.0.

Run ``python -m refinelib.envs.household`` to play one oracle episode per task type.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import sys
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from refinelib.envs.base import Instance, Outcome, TextEnv, check_known, require
from refinelib.envs.household_gen import EVAL_FIRST_SEED, TASK_TYPES, generate, replanning_problem, write_game
from refinelib.paths import cache_dir

TASKS: tuple[str, ...] = TASK_TYPES
BACKEND = "alfworld==0.4.2 and textworld[pddl]==1.7.0 (with the Fast Downward build)"
INVALID_FEEDBACK = "Nothing happens."  # what ALFWorld answers to a command it does not know
# AgentBoard's ALFWorld suite is eval_out_of_distribution: 134 games in these per-type counts.
AGENTBOARD_COUNTS = {
    "pick_and_place_simple": 24,
    "pick_clean_then_place_in_recep": 31,
    "pick_heat_then_place_in_recep": 23,
    "pick_cool_then_place_in_recep": 21,
    "look_at_obj_in_light": 18,
    "pick_two_obj_and_place": 17,
}
SCALES = {"small": lambda task: 2, "agentboard": AGENTBOARD_COUNTS.__getitem__}


# ----- subgoals and progress ------------------------------------------------------------


@dataclass(frozen=True)
class Subgoal:
    """A sentence pattern the engine prints when a step of the task is done.

    ``pattern``'s first group is the object's number; the subgoal counts as reached once
    ``count`` different objects have matched (pick_two needs two objects placed).
    """

    name: str
    pattern: str
    count: int = 1


def subgoals(task_type: str, params: dict[str, Any]) -> list[Subgoal]:
    """AgentBoard-style subgoals for a task, in the engine's wording (``You move the X 1 to the Y 2``)."""
    obj = params["object_target"].lower()
    recep = params["parent_target"].lower()
    find = Subgoal("find", rf"you see .*?\ba {obj} (\d+)\b")
    take = Subgoal("take", rf"You pick up the {obj} (\d+) from")
    place = Subgoal("place", rf"You move the {obj} (\d+) to the {recep} \d+")
    for word in ("clean", "heat", "cool"):
        if f"_{word}_" in task_type:
            return [find, take, Subgoal(word, rf"You {word} the {obj} (\d+) using the"), place]
    if task_type == "look_at_obj_in_light":
        toggle = params["toggle_target"].lower()
        return [find, take, Subgoal("light", rf"You turn on the {toggle} (\d+)")]
    if task_type == "pick_two_obj_and_place":
        return [
            find,
            take,
            place,
            Subgoal("take second", take.pattern, 2),
            Subgoal("place second", place.pattern, 2),
        ]
    return [find, take, place]


class SubgoalTracker:
    """Which subgoals the observations so far reached; progress = reached/(n+1) as in AgentBoard.

    >>> t = SubgoalTracker([Subgoal("take", r"You pick up the apple (\\d+)")])
    >>> t.observe("You pick up the apple 2 from the countertop 1."), t.progress
    (True, 0.5)
    """

    def __init__(self, goals: Sequence[Subgoal]) -> None:
        self.goals = list(goals)
        self.seen: list[set[str]] = [set() for _ in self.goals]  # object numbers matched per subgoal

    def observe(self, text: str) -> bool:
        """Record one observation; True if a new subgoal was reached."""
        before = self.reached
        for goal, seen in zip(self.goals, self.seen, strict=True):
            seen.update(m.group(1) for m in re.finditer(goal.pattern, text))
        return self.reached > before

    @property
    def done(self) -> list[bool]:
        return [len(seen) >= goal.count for goal, seen in zip(self.goals, self.seen, strict=True)]

    @property
    def reached(self) -> int:
        return sum(self.done)

    @property
    def progress(self) -> float:
        return self.reached / (len(self.goals) + 1)

    def state(self) -> tuple:
        return tuple(tuple(sorted(seen)) for seen in self.seen)


# ----- the engine -----------------------------------------------------------------------


def game_path(task: str, seed: int, version: str) -> Path:
    """The cached game for (task, seed) under ``version``, generated on first use."""
    directory = cache_dir("household", version, task, str(seed))
    path = directory / "game.tw-pddl"
    if not path.exists():
        write_game(generate(task, seed), directory)
    return path


@functools.cache
def _engine_modules() -> tuple[Any, Any, Any, Any]:
    """Import the backend once (one clear BackendMissing if it is absent) and speed up its grammar."""
    textworld = require("textworld", "household", BACKEND)
    pddl = require("textworld.envs.pddl.pddl", "household", BACKEND)
    if pddl.fast_downward_missing:
        require("fast_downward", "household", BACKEND)  # raises BackendMissing with the reason
    alfred = require("alfworld.agents.environment.alfred_tw_env", "household", BACKEND)
    logic = require("textworld.envs.pddl.logic", "household", BACKEND)
    _speed_up_grammar(require("textworld.envs.pddl.textgen", "household", BACKEND), textworld.logic.Rule)
    return textworld, pddl, alfred, _Translator(logic)


def _speed_up_grammar(textgen: Any, rule: Any) -> None:
    """Make TextWorld's grammar derivation ~5x faster without changing its output.

    Every admissible command is derived through the grammar on every step, and each derivation
    re-parses its rule text and conditions with TatSu (~13 ms each) and deep-copies the entity
    infos in its context. Parsing is pure, so we memoise it (handing out copies of symbols, which
    derivation mutates; parsed conditions are only read), and contexts are only ever updated at the
    top level, so a shallow copy is enough.
    """
    if getattr(textgen, "_refinelib_fast", False):
        return
    parse = textgen._parse_and_convert

    @functools.lru_cache(maxsize=8192)
    def parsed(text: str, rule_name: str) -> Any:
        return parse(text, rule_name=rule_name)

    def parse_cached(text: str, rule_name: str = "symbols", trace: bool = False) -> Any:
        return copy.deepcopy(
            parse(text, rule_name=rule_name, trace=True) if trace else parsed(text, rule_name)
        )

    def copy_context(context: dict) -> dict:
        return {**context, "variables": dict(context["variables"]), "mapping": dict(context["mapping"])}

    textgen._parse_and_convert = parse_cached
    textgen.copy_context = copy_context
    textgen.Rule = SimpleNamespace(
        parse_conjunctive_query=functools.lru_cache(maxsize=8192)(rule.parse_conjunctive_query)
    )
    textgen._refinelib_fast = True


class _Translator:
    """Fast Downward's PDDL-to-SAS translation for TextWorld's ``PddlState``, memoised.

    ``PddlState`` translates every problem twice (for playing, and optimised for its ``replan``)
    on load and again on every reset: ~1 s each for a kitchen. While our engine loads or resets, we
    lend it this object in place of the ``fast_downward`` module: the playing translation is
    memoised per problem, and the replanning one is skipped (we never call ``PddlState.replan``;
    the oracle plans on a smaller problem, see ``HouseholdEnv._replan``).
    """

    def __init__(self, logic: Any) -> None:
        self.logic, self.fd = logic, logic.fast_downward
        self._memo: OrderedDict[tuple[str, bool], tuple[Any, str]] = OrderedDict()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fd, name)

    def pddl2sas(self, domain: str, problem: str, verbose: bool = False, optimize: bool = False) -> tuple:
        if optimize:
            return None, ""  # unused: PddlState.replan is never called
        return self._translate(domain, problem, optimize=False)

    def sas_for_replanning(self, domain: str, problem: str) -> str:
        """The optimised translation that ``HouseholdEnv._replan`` searches."""
        return self._translate(domain, problem, optimize=True)[1]

    def _translate(self, domain: str, problem: str, optimize: bool) -> tuple[Any, str]:
        key = (problem, optimize)
        if key not in self._memo:
            argv = list(sys.argv)  # the translator overwrites sys.argv; scripts and notebooks read it
            try:
                self._memo[key] = self.fd.pddl2sas(domain, problem, optimize=optimize)
            finally:
                sys.argv[:] = argv
            while len(self._memo) > 4:  # two games' worth
                self._memo.popitem(last=False)
        self._memo.move_to_end(key)
        return self._memo[key]

    @contextmanager
    def lent(self) -> Iterator[None]:
        self.logic.fast_downward = self
        try:
            yield
        finally:
            self.logic.fast_downward = self.fd


# Commands that only look: the planner's plan stays valid after them.
SENSING = ("look", "inventory", "help", "examine ")


class HouseholdEnv(TextEnv):
    """One ALFRED task type; ``reset(seed)`` plays the generated game for that seed."""

    family = "household"
    version = "1"

    def __init__(self, task: str, **options: Any) -> None:
        check_known("household", "task", [task], TASKS)
        super().__init__(task, **options)
        textworld, pddl, alfred, self._translator = _engine_modules()
        infos = textworld.EnvInfos(admissible_commands=True, won=True, extras=["gamefile"])
        self._engine = alfred.AlfredInfos(alfred.AlfredDemangler(pddl.PddlEnv(infos)))
        self._loaded: Path | None = None
        self._state: Any = None
        self._plan: list[str] | None = None  # the planner's plan from the current state, if known
        self._traj: dict[str, Any] = {}
        self._goal_pddl = ""
        self._tracker = SubgoalTracker([])

    # ----- hooks ---------------------------------------------------------------------
    def _reset(self, seed: int) -> tuple[str, str]:
        path = game_path(self.task, seed, self.version)
        with self._translator.lent():
            if path != self._loaded:
                self._engine.load(str(path))
                self._loaded = path
            self._state = self._engine.reset()
        game = json.loads(path.read_text())
        self._traj = json.loads((path.parent / "traj_data.json").read_text())
        self._goal_pddl = game["pddl_problem"][game["pddl_problem"].index("(:goal") :]
        self._plan = game.get("walkthrough")
        if self._plan is None:
            self._record_walkthrough(path, game)
        self._tracker = SubgoalTracker(subgoals(self._traj["task_type"], self._traj["pddl_params"]))
        # "-= Welcome to TextWorld, ALFRED! =-\n\n<what you see>\n\nYour task is to: <goal>."
        _, observation, goal = self._state.feedback.split("\n\n", 2)
        return goal.strip(), observation.strip()

    def _step(self, action: str) -> Outcome:
        action = action.lower()
        if action not in self._state["admissible_commands"]:
            return Outcome(INVALID_FEEDBACK, valid=False)
        self._state, _, _ = self._engine.step(action)
        if self._plan and action == self._plan[0]:
            self._plan = self._plan[1:]  # the rest of an optimal plan is optimal from here
        elif not action.startswith(SENSING):
            self._plan = None
        observation = self._state.feedback.strip()
        self._tracker.observe(observation)
        return Outcome(observation, valid=True, won=bool(self._state["won"]), progress=self._tracker.progress)

    def _valid_actions(self) -> list[str]:
        return list(self._state["admissible_commands"])

    def oracle_action(self) -> str | None:
        """ALFWorld's planner expert: Fast Downward's plan from the current state, first step."""
        if self._state is None or self.done:
            return None
        if not self._plan:
            self._plan = self._replan()
        return self._plan[0] if self._plan else None

    def snapshot(self) -> Any:
        facts = sorted(map(str, self._engine.unwrapped._pddl_state.facts))
        return tuple(facts), self._tracker.state()

    # ----- helpers -------------------------------------------------------------------
    @property
    def target_object(self) -> str:
        """The object type the task is about (``"potato"`` in "cool some potato and put it in ...")."""
        return self._traj["pddl_params"]["object_target"].lower()

    @property
    def subgoals(self) -> list[Subgoal]:
        """The current episode's subgoals (after ``reset``)."""
        return list(self._tracker.goals)

    @property
    def subgoals_done(self) -> list[bool]:
        return self._tracker.done

    def _replan(self) -> list[str]:
        """Fast Downward's plan from the current state (what ALFWorld's planner expert returns).

        TextWorld's own ``replan`` searches the whole room and takes minutes in a kitchen, so the
        same library searches :func:`replanning_problem`, the state cut down to the task.
        """
        core = self._engine.unwrapped
        state = core._pddl_state
        problem = replanning_problem(
            state.facts, state.name2type, self._traj["task_type"], self._traj["pddl_params"], self._goal_pddl
        )
        sas = self._translator.sas_for_replanning(core._game_data["pddl_domain"], problem)
        lib = state.downward_lib
        if not lib.solve_sas(sas.encode("utf-8"), False):
            return []
        operators = (self._translator.Operator * lib.get_last_plan_length())()
        lib.get_last_plan(operators)
        return list(state.plan_to_templated_actions([op.name for op in operators], core._entity_infos))

    def _record_walkthrough(self, path: Path, game: dict) -> None:
        """Check a newly generated game with the planner and store its plan (ALFWorld's ``solvable``)."""
        self._plan = self._replan()
        if not self._plan:
            raise RuntimeError(f"generated household game has no plan: {path}")
        game.update(solvable=True, walkthrough=self._plan)
        tmp = path.with_name(f".game.tw-pddl.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(game))
        tmp.replace(path)


def instances(
    scale: str = "small", tasks: Sequence[str] | None = None, first_seed: int | None = None
) -> list[Instance]:
    """The fixed instance list: ``small`` = 2 seeds per task type, ``agentboard`` = 134 games.

    Args:
        scale: ``small`` (CI) or ``agentboard`` (AgentBoard's per-type counts of ALFWorld's
            ``eval_out_of_distribution``).
        tasks: task types to keep (default: all six).
        first_seed: first seed of each task type; default :data:`EVAL_FIRST_SEED` (100000), whose
            seeds use ALFRED's test floor plans; pass a seed below it for training-room games.
    """
    check_known("household", "scale", [scale], SCALES)
    chosen = TASKS if tasks is None else tuple(tasks)
    check_known("household", "tasks", chosen, TASKS)
    start = EVAL_FIRST_SEED if first_seed is None else int(first_seed)
    return [Instance("household", task, start + i) for task in chosen for i in range(SCALES[scale](task))]


if __name__ == "__main__":
    from refinelib.envs.rollout import play

    for task in TASKS:
        record = play(HouseholdEnv(task), EVAL_FIRST_SEED)
        print(record.render(160), f"\n-> success={record.success}\n")
