"""Expert-only baseline data: oracle episodes on the held-in household tasks (method.md §1, Figure 2).

The stand-in for AgentInstruct / Agent-FLAN / AgentGym-style data: error-free expert trajectories from
a few hand-made environments, in exactly the chat the agent sees at evaluation time (the household
instruction, ``Goal: ... Observation: ...``, ``Thought: ... / Action: ...``). A model tuned on them is the
paper's memorising baseline: strong held-in, weak held-out.

**The expert searches.** ALFWorld's planner knows where every object lies and walks straight to it; a
model cannot see that, so imitating it teaches "go somewhere, take what is there" (our pilot: 0 of 20
held-in games won after two epochs on 48 such episodes, the model walking to one receptacle and taking
whatever lay on it). AgentInstruct's ALFWorld trajectories were GPT-4's, filtered by success, and they
search. :class:`ExpertPolicy` therefore looks for the task's object the way an agent without the
planner's knowledge can: receptacles in a fixed order of likely places (:data:`SEARCH_ORDER`, then
the room's own listing), opening closed ones, taking the first object of the task's type it sees; from
then on (cleaning, heating, cooling, placing: every receptacle involved is in plain sight) it follows the
planner. Only successful episodes become data, as AgentInstruct kept only successful ones.

Episodes come from :func:`refinelib.eval.evaluate.run` with :class:`ExpertPolicy` (the environment's oracle
with templated thoughts), so they are logged and resumable like any evaluation. Training games use the
household family's training seeds (< 100000: ALFRED's train floor plans), never an evaluation layout.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from refinelib import runs
from refinelib.envs.base import CHECK_VALID_ACTIONS, Instance
from refinelib.envs.registry import HELD_IN_HOUSEHOLD, SUITES, Suite, family_module
from refinelib.eval import agent
from refinelib.eval.episodes import Episode
from refinelib.eval.policies import Policy

# Thought templates per action verb (AgentInstruct-like: plan first, then say why each step).
PLAN = ("To solve the task, I need to {goal}. ", "My task: {goal}. I will work through it step by step. ", "")
THOUGHTS = {
    "go": ("The next place to go is {1}.", "Next I should go to {1}.", "I need to get to {1} now."),
    "open": ("{0} is closed. I open it to see what is inside.", "Let me open {0}."),
    "take": ("I see {0} here. I take it.", "Now I pick up {0} from {1}."),
    "heat": ("I have {0}. Now I heat it with {1}.", "Next, heat {0} with {1}."),
    "cool": ("I have {0}. Now I cool it with {1}.", "Next, cool {0} with {1}."),
    "clean": ("I have {0}. Now I clean it with {1}.", "Next, clean {0} with {1}."),
    "move": ("Now I put {0} in/on {1}.", "Finally I place {0} at {1}."),
    "use": ("I turn on {0}.", "Let me use {0}."),
}
# Where a searching agent looks first: surfaces in plain view, then what must be opened (by receptacle type,
# then its number); receptacles of other types follow in the order the room lists them.
SEARCH_ORDER = ("countertop", "diningtable", "sidetable", "coffeetable", "desk", "dresser", "shelf", "bed",
                "sofa", "armchair", "ottoman", "stoveburner", "sinkbasin", "bathtubbasin", "toilet",
                "fridge", "microwave", "cabinet", "drawer", "safe", "garbagecan")
_ACTION = re.compile(r"^Action:\s*(.+?)\s*$", re.M)
_SEEN = re.compile(r"\ban? ([a-z]+ \d+)")
VERB = re.compile(r"^(go to|open|close|take|heat|cool|clean|move|use|examine) (.+?)"
                  r"(?: (?:from|with|to) (.+))?$")


class ExpertPolicy(Policy):
    """The household expert: it searches for the task's object (:func:`search_action`), then follows the
    planner; each action with a templated thought (seeded: same request, same thought). ``search=False``:
    the planner alone, straight to the object (ALFWorld's privileged expert)."""

    name = "expert"

    def __init__(self, search: bool = True) -> None:
        self.search = search

    def config(self):
        # the expert's code is part of its episodes' identity: an expert log played by another version of
        # this module (e.g. before it searched) is set aside, never reused as training data
        return {**super().config(), "search": self.search, "code": runs.code_version("refinelib.eval.expert")}

    def generate(self, batch, envs=None, seeds=None):
        if envs is None or len(envs) != len(batch):
            raise ValueError("the expert policy needs the environment of every request")
        out = []
        for messages, env, seed in zip(batch, envs, seeds or [0] * len(batch), strict=True):
            rng = random.Random(f"expert-{seed}")
            target = env.target_object
            searching = search_action(messages, target) if self.search else None
            action = searching or env.oracle_action() or CHECK_VALID_ACTIONS
            first = sum(m["role"] == "assistant" for m in messages) == 0
            goal = env.goal.removeprefix("Your task is to: ").rstrip(".")
            why = search_thought(messages, target, action) if searching else _why(rng, action)
            thought = (rng.choice(PLAN).format(goal=goal) if first else "") + why
            out.append(f"Thought: {thought}\nAction: {action}")
        return out


def search_action(messages: Sequence[dict], target: str) -> str | None:
    """The searching expert's next action while it does not hold an object of type ``target``, from
    what the agent has seen (the chat so far); None once it holds one or has looked everywhere.

    >>> chat = [{"role": "system", "content": ""},
    ...         {"role": "user", "content": "Goal: put some apple on desk.\\nObservation: You are in "
    ...          "the middle of a room. Looking quickly around you, you see a fridge 1, a desk 1, and a "
    ...          "countertop 1."}]
    >>> search_action(chat, "apple")
    'go to countertop 1'
    >>> chat += [{"role": "assistant", "content": "Action: go to countertop 1"},
    ...          {"role": "user", "content": "Observation: On the countertop 1, you see a bread 1."}]
    >>> search_action(chat, "apple")
    'go to desk 1'
    >>> chat += [{"role": "assistant", "content": "Action: go to desk 1"},
    ...          {"role": "user", "content": "Observation: On the desk 1, you see a apple 2."}]
    >>> search_action(chat, "apple")
    'take apple 2 from desk 1'
    """
    actions, here, last = _search_state(messages)
    if any(a.startswith(f"take {target} ") for a in actions):
        return None  # holding it: the planner takes over
    if here is not None:
        seen = [o for o in _SEEN.findall(last) if o.rsplit(" ", 1)[0] == target]
        if seen:
            return f"take {seen[0]} from {here}"
        if f"{here} is closed" in last:
            return f"open {here}"
    first = next(m["content"] for m in messages if m["role"] == "user")
    listed = list(dict.fromkeys(_SEEN.findall(first.split("you see", 1)[-1])))
    rank = {kind: i for i, kind in enumerate(SEARCH_ORDER)}
    order = sorted(listed, key=lambda r: (rank.get(r.rsplit(" ", 1)[0], len(rank)),
                                          int(r.rsplit(" ", 1)[1]) if r.rsplit(" ", 1)[0] in rank else 0))
    visited = {a.removeprefix("go to ") for a in actions if a.startswith("go to ")}
    return next((f"go to {r}" for r in order if r not in visited), None)


def search_thought(messages: Sequence[dict], target: str, action: str) -> str:
    """The thought of a search step: it says what the last observation showed before deciding (a small
    model imitates a decision it can read off its own thought more easily than one it must infer).

    >>> chat = [{"role": "user", "content": "Observation: ..."}, {"role": "assistant", "content":
    ...         "Action: go to desk 1"}, {"role": "user", "content": "On the desk 1, you see a pen 1."}]
    >>> search_thought(chat, "apple", "go to shelf 1")
    'I see a pen 1 here, no apple. Next I check shelf 1.'
    """
    _, here, last = _search_state(messages)
    if action.startswith("take "):
        found = action.split(" from ")[0].removeprefix("take ")
        return f"I see {found} here: the {target} I need. I take it."
    if action.startswith("open "):
        return f"{here} is closed. A {target} could be inside, so I open it."
    place = action.removeprefix("go to ")
    if here is None:
        return f"I need to find a {target}. First I look at {place}."
    seen = ", ".join(f"a {o}" for o in _SEEN.findall(last.split("you see", 1)[-1])) or "nothing"
    return f"I see {seen} here, no {target}. Next I check {place}."


def _search_state(messages: Sequence[dict]) -> tuple[list[str], str | None, str]:
    """The agent's actions so far, where it is (its last ``go to``) and the last observation."""
    actions = [m.group(1).lower() for msg in messages if msg["role"] == "assistant"
               for m in [_ACTION.search(msg["content"])] if m]
    here = next((a.removeprefix("go to ") for a in reversed(actions) if a.startswith("go to ")), None)
    last = messages[-1]["content"] if messages[-1]["role"] == "user" and actions else ""
    return actions, here, last


def _why(rng: random.Random, action: str) -> str:
    match = VERB.match(action)
    if not match:
        return f"The next step is {action}."
    verb, first, second = match.group(1).split()[0], match.group(2), match.group(3) or ""
    if verb == "go":
        second = first
    return rng.choice(THOUGHTS.get(verb, ("The next step is {0}.",))).format(first, second)


def training_suite(n: int, tasks: Sequence[str] = HELD_IN_HOUSEHOLD, first_seed: int = 0) -> Suite:
    """``n`` household training games, round-robin over ``tasks`` (seeds below the evaluation seeds)."""
    module = family_module("household")
    if first_seed + n > module.EVAL_FIRST_SEED:
        raise ValueError(f"training seeds must stay below {module.EVAL_FIRST_SEED} (evaluation layouts)")
    spec = SUITES["household_train"]
    instances = tuple(Instance("household", tasks[i % len(tasks)], first_seed + i // len(tasks))
                      for i in range(n))
    return Suite("household_train", f"{spec.version}+household-{module.HouseholdEnv.version}", "train",
                 "household", f"n{n}", instances, spec.description)


def record(episode: Episode, max_steps: int = agent.MAX_STEPS) -> dict:
    """An episode as a released-schema chat record: the agent's own prompt, every assistant turn trained."""
    task = episode.task
    conversations = [
        {"from": "system", "loss": False, "value": agent.instruction(episode.family, task, max_steps)},
        {"from": "human", "loss": False,
         "value": agent.first_message(episode.goal, episode.first_observation)},
    ]
    for i, turn in enumerate(episode.turns):
        conversations.append({"from": "gpt", "loss": True, "value": turn.raw})
        if i + 1 < len(episode.turns):  # the last observation teaches nothing
            conversations.append({"from": "human", "loss": False,
                                  "value": agent.observation_message(turn.observation)})
    return {"id": f"expert-{episode.instance}", "conversations": conversations}


def expert_data(n: int, log_path, max_steps: int = agent.MAX_STEPS, tasks: Sequence[str] = HELD_IN_HOUSEHOLD,
                progress: bool = True) -> tuple[list[dict], dict[str, dict]]:
    """The successful ones of ``n`` expert episodes as chat records + metadata (resumable through
    ``log_path``); an episode that ran out of steps searching is left out."""
    from refinelib.eval.evaluate import run

    episodes = run(ExpertPolicy(), [training_suite(n, tasks)], max_steps=max_steps, log_path=log_path,
                   progress_bar=progress)
    won = [e for e in episodes if e.success]
    if len(won) < len(episodes) / 2:  # a search runs out of steps now and then; most losses: a bug
        raise RuntimeError(f"the household expert won only {len(won)} of {len(episodes)} training games: "
                           "an environment or expert bug, not data to train on")
    episodes = won  # the others ran out of steps searching: not expert data
    records = [record(e, max_steps) for e in episodes]
    meta = {r["id"]: {"source": "expert", "theme": f"household/{e.task}", "persona": "", "error_kinds": [],
                      "templates": [], "attempts": 1} for r, e in zip(records, episodes, strict=True)}
    return records, meta
