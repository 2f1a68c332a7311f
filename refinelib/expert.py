"""Expert-only baseline data: oracle episodes on the held-in household tasks (method.md §1, Figure 2).

The stand-in for AgentInstruct / Agent-FLAN / AgentGym-style data: error-free expert trajectories from
a few hand-made environments, in exactly the chat the agent sees at evaluation time (the household
instruction, ``Goal: ... Observation: ...``, ``Thought: ... / Action: ...``). A model tuned on them is the
paper's memorising baseline: strong held-in, weak held-out.

Episodes come from :func:`refinelib.evaluate.run` with :class:`ExpertPolicy` (the environment's oracle
with templated thoughts), so they are logged and resumable like any evaluation. Training games use the
household family's training seeds (< 100000: ALFRED's train floor plans), never an evaluation layout.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from refinelib import agent
from refinelib.envs.base import CHECK_VALID_ACTIONS, Instance
from refinelib.envs.registry import HELD_IN_HOUSEHOLD, SUITES, Suite, family_module
from refinelib.episodes import Episode
from refinelib.policies import Policy

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
VERB = re.compile(r"^(go to|open|close|take|heat|cool|clean|move|use|examine) (.+?)"
                  r"(?: (?:from|with|to) (.+))?$")


class ExpertPolicy(Policy):
    """The household oracle's action with a templated thought (seeded: same request, same thought)."""

    name = "expert"

    def generate(self, batch, envs=None, seeds=None):
        if envs is None or len(envs) != len(batch):
            raise ValueError("the expert policy needs the environment of every request")
        out = []
        for messages, env, seed in zip(batch, envs, seeds or [0] * len(batch), strict=True):
            action = env.oracle_action() or CHECK_VALID_ACTIONS
            rng = random.Random(f"expert-{seed}")
            first = sum(m["role"] == "assistant" for m in messages) == 0
            goal = env.goal.removeprefix("Your task is to: ").rstrip(".")
            thought = (rng.choice(PLAN).format(goal=goal) if first else "") + _why(rng, action)
            out.append(f"Thought: {thought}\nAction: {action}")
        return out


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
    """``n`` successful expert episodes as chat records + metadata (resumable through ``log_path``)."""
    from refinelib.evaluate import run

    episodes = run(ExpertPolicy(), [training_suite(n, tasks)], max_steps=max_steps, log_path=log_path,
                   progress_bar=progress)
    failed = [e.instance for e in episodes if not e.success]
    if failed:  # the oracle wins every game; a loss means an environment bug, not data to train on
        raise RuntimeError(f"the household oracle failed {len(failed)} training game(s): {failed[:5]}")
    records = [record(e, max_steps) for e in episodes]
    meta = {r["id"]: {"source": "expert", "theme": f"household/{e.task}", "persona": "", "error_kinds": [],
                      "templates": [], "attempts": 1} for r, e in zip(records, episodes, strict=True)}
    return records, meta
