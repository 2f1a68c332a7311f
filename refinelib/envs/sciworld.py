"""ScienceWorld: elementary-science tasks in a simulated house, on the real ``scienceworld==1.2.3`` engine.

The engine is a Scala program behind py4j (Java 17). One JVM serves the whole process: it starts on
the first ``reset`` (1.6 s idle, up to ~10 s on a busy machine) and holds one loaded task at a time,
so every env object keeps the log of the actions it sent and the JVM is rebuilt from that log
(reload + replay) when another env object used it in between.

Determinism needs two fixes the stock engine lacks: (1) it iterates hash sets of objects in
identity-hash order, so text, gold paths and dynamics (where the bee flies) change from run to run:
the JVM runs with a constant identity hash (``DETERMINISM_OPTIONS``); (2) listing the valid actions
draws from the engine's one random generator, so asking for them changed later dynamics: every
query runs with the generator's state saved and restored. With both, an episode is a pure function
of (task, seed, simplification, actions).

* Task = a ScienceWorld task name (``TASKS`` are ten short ones: gold paths of 4-29 steps, median 12);
  ``reset(seed)`` plays variation ``variation_order(n)[seed % n]``: the engine's test split first,
  then dev, then train, so seeds 0, 1, ... are held-out variations first and never repeat below n.
* Simplification (option ``simplification``): ``"easy"`` by default (teleport actions, open doors,
  self-watering flower pots, no electrical actions); ``"agentboard"`` is AgentBoard's
  ``selfWateringFlowerPots,openContainers,openDoors,noElectricalAction``; any comma-separated
  engine string is accepted. Electrical tasks drop ``noElectricalAction``, as the engine's "easy" does.
* Goal = the task description; observation = the engine's text; the first observation is a free
  ``look around`` (it costs no simulated time, so the state is the one the gold path starts from).
* Valid actions = ``get_valid_action_object_combinations()`` (115-422 strings, 20-100 ms warm, up to
  ~0.7 s cold or under load): computed only when asked and cached until the next accepted action.
* Invalid actions: input the parser cannot match ("No known action matches that input.") is
  rejected by the engine itself without a tick. Input that matches several objects makes the engine
  ask for a number ("Ambiguous request: ..."); we never leave it waiting: the request is rejected
  with the engine's own message, and because cancelling inside the engine costs a tick, the state is
  restored by reload + replay. Actions the engine parses but that fail ("You can't ...") take
  simulated time, so they count as valid, as in the engine.
* Oracle = the engine's gold action sequence for the variation (cached on disk). We track the position
  along it; after an off-path action the oracle keeps proposing the rest of the gold path (best
  effort: the path is only guaranteed when followed from reset).
* Progress = the engine's score / 100 (subgoal-based), max-tracked; won when the engine says the
  task is completed with score 100; lost when it is completed otherwise or the score drops below 0
  (e.g. focusing on the wrong object). Step limits are the caller's business (AgentBoard: 30).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from typing import Any

from refinelib.envs.base import BackendMissing, Instance, Outcome, TextEnv, check_known, require
from refinelib.paths import cache_dir, write_atomic

FAMILY = "sciworld"
# Short tasks (gold paths of 4-29 steps on the seeds used, either simplification; no mendelian-genetics,
# no boiling/freezing: 60-130 steps), spread over classification, life spans and stages, chemistry,
# measurement.
TASKS: tuple[str, ...] = (
    "find-living-thing",
    "find-non-living-thing",
    "find-animal",
    "find-plant",
    "lifespan-longest-lived",
    "lifespan-shortest-lived",
    "lifespan-longest-lived-then-shortest-lived",
    "identify-life-stages-2",
    "chemistry-mix-paint-secondary-color",
    "use-thermometer",
)
# The CI suite: one seed of six cheap tasks (one per kind of task).
SMALL_TASKS: tuple[str, ...] = (
    "find-non-living-thing",
    "find-animal",
    "lifespan-longest-lived-then-shortest-lived",
    "identify-life-stages-2",
    "chemistry-mix-paint-secondary-color",
    "use-thermometer",
)
# Seeds whose gold path does not win, found by playing the oracle on seeds 0-15 (agentboard) and
# 0-12 (easy, none). With openContainers the beehive is open, bees fly out, and the engine's gold
# agent picks up a bee it cannot name ("ERROR FINDING UNIQUE REFERENT", "move living thing in
# inventory to ..."). ``instances`` skips them; the seeds still play, only the oracle fails.
GOLD_FAILS: dict[str, dict[str, tuple[int, ...]]] = {
    "agentboard": {"find-living-thing": (1, 2, 6, 9, 11, 13), "find-animal": (6, 7, 12, 13, 14)},
}
SCALES = {"small": 1, "agentboard": 9}  # seeds per task; agentboard: 10 tasks x 9 = AgentBoard's 90
SIMPLIFICATIONS = {
    "easy": "easy",
    "agentboard": "selfWateringFlowerPots,openContainers,openDoors,noElectricalAction",
}
JAVA_OPTIONS = "-Xmx768m -XX:+UseSerialGC"  # default JVM heap is ~3 GB RSS; this is ~0.5 GB, same speed
# The engine iterates hash sets of objects in identity-hash order, so by default the text, the gold
# paths and the dynamics change from run to run; a constant identity hash makes them reproducible.
DETERMINISM_OPTIONS = "-XX:+UnlockExperimentalVMOptions -XX:hashCode=2"
NO_MATCH = "No known action matches that input."
AMBIGUOUS = "Ambiguous request"
CANCELLED = ("(This wrapper does not wait for a number: the request was cancelled and nothing happened. "
             "Name the object exactly as in 'check valid actions'.)")
_INSTALL = "ScienceWorld (pip install 'scienceworld==1.2.3') and a Java 17 runtime"


def variation_order(n: int) -> list[int]:
    """Variations in seed order: the engine's test split, then dev, then train, then any left over.

    Mirrors ``PythonInterface.getSets`` (50/25/25 split in blocks of ``n // 4``).

    >>> variation_order(10)
    [6, 7, 8, 9, 4, 5, 0, 1, 2, 3]
    """
    special = {0: ([], [], []), 1: ([0], [], [0]), 2: ([0], [], [1]), 3: ([0], [1], [2]),
               4: ([0, 1], [2], [3])}
    if n in special:
        train, dev, test = special[n]
    else:
        size = n // 4
        groups = [list(range(i, min(i + size, n))) for i in range(0, n, size)] + [[]]
        train, dev, test = groups[0] + groups[1], groups[2], groups[3] + groups[4]  # blocks past 5 are unused
    return list(dict.fromkeys(test + dev + train + list(range(n))))


def simplification_string(task: str, simplification: str) -> str:
    """The engine's simplification string for ``task`` (aliases expanded, electrical tasks fixed)."""
    text = SIMPLIFICATIONS.get(simplification, simplification)
    if "power-component" in task or "conductivity" in task:  # the engine refuses these otherwise
        text = ",".join(s for s in text.split(",") if s != "noElectricalAction")
    return text


@functools.cache
def known_tasks() -> tuple[str, ...]:
    """Every ScienceWorld task name (:data:`TASKS` are the short ones we evaluate on), read from the
    package's task list without starting the JVM."""
    constants = require("scienceworld.constants", FAMILY, _INSTALL)
    return tuple(t["task_name"] for t in constants.TASKS)


class _Simulator:
    """The process's one ScienceWorld JVM; ``owner`` is the env whose episode is loaded in it."""

    def __init__(self) -> None:
        sw = require("scienceworld", FAMILY, _INSTALL)
        if shutil.which("java") is None:
            raise BackendMissing(
                f"The '{FAMILY}' environment needs a Java 17 runtime and `java` is not on PATH: install "
                "one, e.g. `apt-get install openjdk-17-jre-headless`.")
        os.environ.setdefault("JAVA_TOOL_OPTIONS", JAVA_OPTIONS)  # read by the JVM at start
        user_options = os.environ["JAVA_TOOL_OPTIONS"]
        os.environ["JAVA_TOOL_OPTIONS"] = f"{user_options} {DETERMINISM_OPTIONS}"  # for this JVM only
        try:
            self.env = sw.ScienceWorldEnv("")  # the wrapper validates names; we call its server directly
        finally:
            os.environ["JAVA_TOOL_OPTIONS"] = user_options
        self.server = self.env.server
        self.jvm = self.env._gateway.jvm
        # scala.util.Random's java.util.Random: the engine's one source of randomness.
        self.random = getattr(getattr(self.jvm, "scala.util.Random$"), "MODULE$").self()
        self.package_version = sw.__version__
        self.max_variations: dict[str, int] = {}
        self.owner: int | None = None

    def random_state(self) -> int:
        """The 48-bit state of the engine's one random generator (scala.util.Random)."""
        buffer = self.jvm.java.io.ByteArrayOutputStream()
        stream = self.jvm.java.io.ObjectOutputStream(buffer)
        stream.writeObject(self.random)
        stream.flush()
        data = bytes(buffer.toByteArray())
        # java.util.Random serialises (haveNextNextGaussian, nextNextGaussian, seed) + TC_ENDBLOCKDATA.
        if data[-1] != 0x78:
            raise RuntimeError(
                "unexpected java.util.Random serial form: cannot keep ScienceWorld deterministic")
        return int.from_bytes(data[-9:-1], "big")

    def set_random_state(self, state: int) -> None:
        self.random.setSeed(state ^ 0x5DEECE66D)  # setSeed scrambles with this multiplier

    @contextlib.contextmanager
    def random_kept(self) -> Iterator[None]:
        """Run engine queries without moving its random state (valid actions draw from it)."""
        state = self.random_state()
        try:
            yield
        finally:
            self.set_random_state(state)

    def variations(self, task: str) -> int:
        if task not in self.max_variations:
            if task not in self.env.get_task_names():
                known = sorted(self.env.get_task_names())
                raise ValueError(f"unknown ScienceWorld task {task!r}; known tasks: {known}")
            self.max_variations[task] = int(self.server.getTaskMaxVariations(task))
        return self.max_variations[task]

    def load(self, task: str, variation: int, simplification: str, owner: int) -> None:
        self.env.load(task, variation, simplification)
        # getScore/getCompleted keep the previous episode's values until a step goes through the
        # parser (and "help", "task", "objects" do not): an empty input refreshes them, without a tick.
        with self.random_kept():
            self.server.step("")
        self.owner = owner

    def gold(self, task: str, variation: int, simplification: str) -> list[str]:
        """The gold action sequence, generated once (0.2-10 s) and cached on disk."""
        folder = cache_dir(FAMILY, SciWorldEnv.version, f"scienceworld-{self.package_version}",
                           simplification.replace(",", "+") or "none")
        path = folder / f"{task}-{variation}.json"
        if path.exists():
            return json.loads(path.read_text())["gold"]
        self.env.load(task, variation, simplification, generateGoldPath=True)
        self.owner = None
        gold = [str(a) for a in self.env.get_gold_action_sequence()]
        if not gold or gold[0].startswith("ERROR"):
            raise RuntimeError(f"ScienceWorld gave no gold path for {task} variation {variation}: {gold[:1]}")
        write_atomic(path, json.dumps({"task": task, "variation": variation, "simplification": simplification,
                                       "gold": gold}))
        return gold


_SIMULATOR: _Simulator | None = None
_TOKENS = itertools.count(1)


def simulator() -> _Simulator:
    """Start (once) and return the shared JVM."""
    global _SIMULATOR
    if _SIMULATOR is None:
        _SIMULATOR = _Simulator()
    return _SIMULATOR


class SciWorldEnv(TextEnv):
    """One ScienceWorld task; ``reset(seed)`` plays one of its variations."""

    family = FAMILY
    version = "1"
    OPTIONS = ("simplification",)

    def __init__(self, task: str, simplification: str = "easy") -> None:
        check_known(FAMILY, "task", [task], known_tasks())  # the JVM would refuse it only at reset
        super().__init__(task, simplification=simplification)
        self.simplification = simplification_string(task, simplification)
        self.variation: int | None = None
        self._token = next(_TOKENS)
        self._log: list[str] = []  # accepted actions, to rebuild the state in the shared JVM
        self._valid: list[str] | None = None
        self._gold: list[str] = []
        self._gold_pos = 0

    # ----- the shared JVM --------------------------------------------------------------
    def _server(self) -> Any:
        """The engine, holding this env's current state (rebuilt by replay if another env used it)."""
        sim = simulator()
        if sim.owner != self._token:
            sim.load(self.task, self.variation, self.simplification, self._token)
            for action in self._log:
                sim.server.step(action)
        return sim.server

    # ----- hooks -----------------------------------------------------------------------
    def _reset(self, seed: int) -> tuple[str, str]:
        sim = simulator()
        n = sim.variations(self.task)
        self.variation = variation_order(n)[seed % n]
        self._gold = sim.gold(self.task, self.variation, self.simplification)
        self._log, self._valid, self._gold_pos = [], None, 0
        sim.load(self.task, self.variation, self.simplification, self._token)
        with sim.random_kept():
            return sim.server.getTaskDescription().strip(), sim.server.freeActionLook().strip()

    def _step(self, action: str) -> Outcome:
        server = self._server()
        random_state = simulator().random_state()
        text = server.step(action).strip()
        if text.startswith(NO_MATCH):  # the parser rejected it: no tick; keep the randomness too
            simulator().set_random_state(random_state)
            return Outcome(text, valid=False)
        if text.startswith(AMBIGUOUS):  # the engine now waits for a number; rebuild the state instead
            simulator().owner = None
            self._server()
            return Outcome(f"{text}\n{CANCELLED}", valid=False)
        self._log.append(action)
        self._valid = None
        if self._gold_pos < len(self._gold) and action.lower() == self._gold[self._gold_pos].lower():
            self._gold_pos += 1
        score, completed = float(server.getScore()), bool(server.getCompleted())
        won = completed and score >= 1.0
        return Outcome(text, valid=True, won=won, lost=(completed or score < 0) and not won, progress=score)

    def _valid_actions(self) -> list[str]:
        if self._valid is None:
            server = self._server()
            with simulator().random_kept():
                self._valid = [str(a) for a in server.getValidActionObjectCombinations()]
        return self._valid

    def oracle_action(self) -> str | None:
        """The next gold action (exact when the gold path has been followed from reset)."""
        if self.done or self._gold_pos >= len(self._gold):
            return None
        return self._gold[self._gold_pos]

    def snapshot(self) -> Any:
        """What the agent could observe, the simulated time and the score."""
        server = self._server()
        with simulator().random_kept():
            return (server.freeActionLook(), server.freeActionInventory(), int(server.getNumMoves()),
                    float(server.getScore()))


def instances(scale: str = "small", tasks: Sequence[str] | None = None,
              first_seed: int | None = None) -> list[Instance]:
    """The fixed instance list: "small" = 6 tasks x seed 0; "agentboard" = 10 tasks x 9 seeds = 90.

    "agentboard" also uses AgentBoard's simplifications (no teleport, containers open) and skips
    the seeds in ``GOLD_FAILS``, so the oracle wins every instance of both scales.
    """
    check_known(FAMILY, "scale", [scale], SCALES)
    chosen = tuple(tasks) if tasks is not None else (SMALL_TASKS if scale == "small" else TASKS)
    check_known(FAMILY, "tasks", chosen, TASKS)
    simplification = "agentboard" if scale == "agentboard" else "easy"
    options = (("simplification", simplification),) if simplification != "easy" else ()
    start = 0 if first_seed is None else int(first_seed)
    out = []
    for task in chosen:
        failing = GOLD_FAILS.get(simplification, {}).get(task, ())
        seeds = (seed for seed in itertools.count(start) if seed not in failing)
        out += [Instance(FAMILY, task, seed, options) for seed in itertools.islice(seeds, SCALES[scale])]
    return out
