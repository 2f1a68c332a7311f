"""Text adventures: generated TextWorld games, our stand-in for AgentBoard's Jericho task.

AgentBoard plays 20 classic interactive-fiction games through Jericho, but the game files come
from its data archive and cannot be had offline (Jericho's wheel ships no games). We generate
TextWorld games instead (``textworld==1.7.0``), in process and from fixed seeds:
``treasure_hunter`` (find and take a named object in a maze of rooms, doors and containers; taking
the wrong object loses), ``coin_collector`` (find the coin along a chain of rooms with dead ends),
``cooking`` (read the recipe, gather, cut and cook ingredients, eat the meal) and ``custom``
(a random quest from ``textworld.generator.make_game``). These games are easier and more templated
than real interactive fiction: report results on them as such, not as Jericho numbers.

* Goal = the game's objective. For treasure_hunter and coin_collector it names only the end
  ("take the passkey from the floor of the cookery"), not the route, so the agent has to explore;
  custom quests are arbitrary action chains, so their objective spells out every step.
* Observation = the game's text, without TextWorld's ASCII banner, the prompt and the status line.
* Valid actions = the game's admissible commands. Anything else is rejected without changing the
  game: it is tried on a saved copy of the interpreter state (to get the game's own reply, e.g.
  "That's not a verb I recognise.") and the state is restored.
* Oracle = the game's remaining winning policy (``policy_commands``), else the walkthrough.
* Progress = ``1 - len(remaining policy) / len(policy at reset)``; success = the game is won.

Each game is generated once and cached under ``cache_dir("textadventure", version, task,
difficulty, seed)``: 1.5-3.5 CPU-seconds per game, 1-2 s more for the first game of a challenge
in a process (TextWorld parses its grammars). Steps take 10-30 ms on a busy machine: TextWorld
recomputes the admissible commands and the winning policy every turn.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from refinelib.envs.base import Instance, Outcome, TextEnv, check_known, require
from refinelib.paths import cache_dir

FAMILY = "textadventure"
TASKS: tuple[str, ...] = ("treasure_hunter", "coin_collector", "cooking", "custom")
DIFFICULTIES: tuple[str, ...] = ("easy", "hard")

# Generation settings per task and difficulty, picked so a game generates in seconds and the
# optimal plan fits AgentBoard's 30-step budget with room to explore.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # level 5: 5 rooms, no doors, 3-step quest; level 15: 10 rooms, closed doors and containers,
    # a wrong object that loses the game when taken, ~6-step quest.
    "treasure_hunter": {"easy": {"level": 5}, "hard": {"level": 15}},
    # level 5: a chain of 5 rooms; level 108: 8 rooms on the path plus 8 dead-end rooms.
    "coin_collector": {"easy": {"level": 5}, "hard": {"level": 108}},
    # The First TextWorld Problems skills: easy = one ingredient to fetch in the kitchen;
    # hard = two ingredients somewhere in 6 rooms, to be cut and cooked.
    "cooking": {
        "easy": {"recipe": 1, "take": 1, "go": 1, "open": True},
        "hard": {"recipe": 2, "take": 2, "go": 6, "open": True, "cook": True, "cut": True},
    },
    "custom": {
        "easy": {"nb_rooms": 3, "nb_objects": 6, "quest_length": 3},
        "hard": {"nb_rooms": 6, "nb_objects": 12, "quest_length": 6},
    },
}
CHALLENGES = {"treasure_hunter": "tw-treasure_hunter", "coin_collector": "tw-coin_collector",
              "cooking": "tw-cooking"}
GAME = "game.z8"  # the .json with the same stem sits next to it; TextWorld needs both
REJECTED = "That is not a valid action here; nothing happens."
# Interpreter commands that touch files or the session: never sent, not even to a saved state.
META_VERBS = {"save", "restore", "restart", "quit", "q", "undo", "script", "unscript",
              "transcript", "noscript", "recording", "replay"}
_INSTALL = "TextWorld (pip install 'textworld==1.7.0')"


def _textworld() -> Any:
    """Import TextWorld and the submodules used here, or raise one clear BackendMissing."""
    tw = require("textworld", FAMILY, _INSTALL)
    for sub in ("textworld.gym", "textworld.challenges", "textworld.generator"):
        importlib.import_module(sub)
    return tw


# ----- generation and the game cache ----------------------------------------------------------
def generate_game(task: str, difficulty: str, seed: int, folder: Path) -> Path:
    """Generate and compile one game into ``folder``; return the ``.z8`` path.

    A seed for which TextWorld finds no quest is retried with derived seeds, deterministically.
    """
    tw = _textworld()
    for attempt in range(10):
        options = tw.GameOptions()
        options.seeds = seed + 1_000_003 * attempt
        options.path = str(folder / GAME)
        options.grammar.only_last_action = task != "custom"  # name the end, not the route
        try:
            game = _make_game(tw, task, dict(PRESETS[task][difficulty]), options)
        except tw.generator.QuestGenerationError:
            continue
        return Path(tw.generator.compile_game(game, options))
    raise RuntimeError(f"TextWorld found no {task}/{difficulty} quest for seed {seed}")


def _make_game(tw: Any, task: str, settings: dict[str, Any], options: Any) -> Any:
    with warnings.catch_warnings():
        # Noise: thin grammar variation, and Jericho on the copy of the game that TextWorld
        # compiles to check the walkthrough.
        warnings.simplefilter("ignore", tw.GenerationWarning)
        warnings.filterwarnings("ignore", "Game .* is not fully supported")
        if task == "custom":
            for key, value in settings.items():
                setattr(options, key, value)
            return tw.generator.make_game(options)
        if task == "cooking":
            settings.update(recipe_seed=0, split=None)  # the default recipe, all food splits
        return tw.challenges.CHALLENGES[CHALLENGES[task]][1](settings, options)


def game_file(task: str, difficulty: str, seed: int) -> Path:
    """The cached game for (task, difficulty, seed), generated on first use.

    The game is built in a temporary folder that is then renamed into place, so a reader never
    sees half a game; when two processes race (pytest-xdist workers), the loser's copy is dropped.
    """
    parent = cache_dir(FAMILY, TextAdventureEnv.version, task, difficulty)
    final = parent / str(seed)
    if _complete(final):
        return final / GAME
    tmp = Path(tempfile.mkdtemp(prefix=f".{seed}-", dir=parent))
    try:
        generate_game(task, difficulty, seed, tmp)
        try:
            os.replace(tmp, final)  # fails when `final` exists and is not empty
        except OSError:
            if not _complete(final):  # not a race but a damaged folder (a file deleted by hand)
                shutil.rmtree(final, ignore_errors=True)
                os.replace(tmp, final)
            # else another process won the race: its copy is as good as ours
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final / GAME


def _complete(folder: Path) -> bool:
    return (folder / GAME).is_file() and (folder / GAME).with_suffix(".json").is_file()


# ----- text cleaning --------------------------------------------------------------------------
_PROMPT = re.compile(r"\n>[^\n]*\s*$")  # the prompt line, with the status bar on the same line
_TAGS = re.compile(r"\[[^\]\n]*\]\n?|<(score|moves)>.*?</\1>", re.DOTALL)  # TextWorld's trace
_ENDING = re.compile(r"\s*Would you like to RESTART.*$", re.DOTALL)


def clean_text(text: str, objective: str = "") -> str:
    """The game's text as a reader sees it: no banner, no prompt or status line, no trace tags.

    The intro repeats the objective (the agent gets it as the goal), so it is dropped too.
    """
    text = _ENDING.sub("", _PROMPT.sub("", _TAGS.sub("", text)))
    lines = text.strip("\n").split("\n")
    while lines and not re.search(r"[A-Za-z0-9]", lines[0]):  # banner lines hold no letters
        lines.pop(0)
    text = "\n".join(lines)
    if objective and text.lstrip().startswith(objective):
        text = text.lstrip()[len(objective):]
    text = "\n".join(line.strip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


# ----- the environment ------------------------------------------------------------------------
_ENV_IDS: dict[str, str] = {}  # game path -> textworld.gym id, registered once per process


class TextAdventureEnv(TextEnv):
    """One TextWorld challenge at one difficulty; ``reset(seed)`` plays the seed's game."""

    family = FAMILY
    version = "1"
    OPTIONS = ("difficulty",)

    def __init__(self, task: str, difficulty: str = "easy", **options: Any) -> None:
        check_known(FAMILY, "task", [task], TASKS)
        check_known(FAMILY, "difficulty", [difficulty], DIFFICULTIES)
        super().__init__(task, difficulty=difficulty, **options)
        self.difficulty = difficulty
        self._gym: Any = None
        self._path: Path | None = None
        self._info: dict[str, Any] = {}
        self._plan_at_reset = 1
        self._played: list[str] = []

    def _reset(self, seed: int) -> tuple[str, str]:
        tw = _textworld()
        path = game_file(self.task, self.difficulty, seed)
        if path != self._path:
            self.close()
            if str(path) not in _ENV_IDS:
                infos = tw.EnvInfos(admissible_commands=True, objective=True, policy_commands=True,
                                    intermediate_reward=True, max_score=True, won=True, lost=True,
                                    score=True, moves=True, extras=["walkthrough"])
                # No step limit: the episode budget is the caller's.
                _ENV_IDS[str(path)] = tw.gym.register_game(str(path), infos, max_episode_steps=None)
            self._gym, self._path = tw.gym.make(_ENV_IDS[str(path)]), path
        with warnings.catch_warnings():  # Jericho calls every TextWorld game "not supported"
            warnings.filterwarnings("ignore", "Game .* is not fully supported")
            text, self._info = self._gym.reset()
        self._plan_at_reset = max(1, len(self._info["policy_commands"]))
        self._played = []
        return self._info["objective"], clean_text(text, self._info["objective"])

    def _step(self, action: str) -> Outcome:
        # The parser ignores case; match it that way, but send the game's own spelling.
        admissible = {c.lower(): c for c in self._info["admissible_commands"]}
        command = admissible.get(action.lower())
        if command is None:
            return Outcome(self._reply_without_acting(action), valid=False)
        text, _, _, self._info = self._gym.step(command)
        self._played.append(command)
        return Outcome(clean_text(text), True, won=bool(self._info["won"]),
                       lost=bool(self._info["lost"]), progress=self._progress())

    def _valid_actions(self) -> list[str]:
        return list(self._info["admissible_commands"])

    def oracle_action(self) -> str | None:
        policy = self._info.get("policy_commands") or []
        if policy:
            return policy[0]
        walkthrough = self._info.get("extra.walkthrough") or []
        n = len(self._played)
        if not self._info.get("won") and walkthrough[:n] == self._played and n < len(walkthrough):
            return walkthrough[n]
        return None

    def snapshot(self) -> Any:
        """The interpreter's memory and registers (hashed) plus the tracked quest state."""
        ram, stack, pc, sp, fp, frames, *_ = self._frotz().get_state()
        memory = hashlib.sha1(ram.tobytes() + stack.tobytes()).hexdigest()
        info = self._info
        return (memory, pc, sp, fp, frames, info["score"], info["moves"],
                tuple(info["policy_commands"]), tuple(self.valid_actions()))

    def close(self) -> None:
        if self._gym is not None:
            self._gym.close()
        self._gym, self._path = None, None

    # ----- helpers ----------------------------------------------------------------------------
    def _progress(self) -> float | None:
        """The share of the plan at reset done so far; None (unchanged) when no plan is left
        but the game is not won (it was lost or became unwinnable)."""
        if self._info["won"]:
            return 1.0
        policy = self._info["policy_commands"]
        return 1.0 - len(policy) / self._plan_at_reset if policy else None

    def _frotz(self) -> Any:
        """The Jericho interpreter under TextWorld's wrappers (it has save/restore of state)."""
        return self._gym.batch_env.envs[0].unwrapped._jericho

    def _reply_without_acting(self, command: str) -> str:
        """The game's reply to a rejected command, taken on a saved state that is then restored.

        Commands the game would carry out (synonyms such as ``north`` for ``go north``) get a
        neutral reply instead: showing their effect without applying it would mislead.
        """
        words = command.lower().split()
        if not words or words[0] in META_VERBS:
            return REJECTED
        frotz = self._frotz()
        saved = frotz.get_state()
        try:
            # Jericho cuts input at 198 bytes, with a warning; cut it ourselves.
            raw = frotz.step(command.encode()[:190].decode(errors="ignore"))[0]
        finally:
            frotz.set_state(saved)
        text = clean_text(raw)
        return REJECTED if " - succeeded]" in raw or not text else text


def instances(scale: str = "small", tasks: Sequence[str] | None = None,
              first_seed: int | None = None) -> list[Instance]:
    """The fixed evaluation instances.

    Args:
        scale: ``"small"`` (CI: one easy and one hard game per task) or ``"agentboard"`` (20
            games, AgentBoard's Jericho size: 3 easy and 2 hard per task).
        tasks: a subset of :data:`TASKS` (default: all).
        first_seed: the first game seed (default 0); seeds count up from it per difficulty.
    """
    per_difficulty = {"small": {"easy": 1, "hard": 1}, "agentboard": {"easy": 3, "hard": 2}}
    check_known(FAMILY, "scale", [scale], per_difficulty)
    tasks = TASKS if tasks is None else tuple(tasks)
    check_known(FAMILY, "tasks", tasks, TASKS)
    start = 0 if first_seed is None else int(first_seed)
    return [Instance(FAMILY, task, start + i, (("difficulty", difficulty),))
            for task in tasks
            for difficulty, count in per_difficulty[scale].items()
            for i in range(count)]
