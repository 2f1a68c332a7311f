"""The agent loop: per-family instructions, multi-turn chat, the action parser and the history window.

One episode is a chat (method.md §11; AgentBoard's instructions adapted to multi-turn chat with
``Thought`` / ``Action``)::

    system     the family's instruction (prompts/agent_<family>.jinja): task, available actions,
               ``check valid actions``, the Thought/Action format, one in-context example
    user       "Goal: ...\\nObservation: ..."          (the first observation; never dropped)
    assistant  "Thought: ...\\nAction: ..."            (the policy's output)
    user       "Observation: ..."                      (the environment's answer, or FORMAT_ERROR)
    ...

:func:`parse` takes the text after the last ``Action:`` (first line, stripped) and never raises; output
without an action becomes a *format error*: the step is spent and :data:`FORMAT_ERROR` is fed back as
the observation. :func:`window` keeps a prompt within a token budget by dropping the oldest
(assistant, user) pairs but never the system message or the first user message. :class:`EpisodeState`
holds one running episode; :mod:`refinelib.eval.evaluate` steps many of them in lock-step.

>>> parse("Thought: the key is here.\\nAction: pickup red key 1\\nmore text")
Parsed(thought='the key is here.', action='pickup red key 1')
>>> parse("I am not sure what to do.")
Parsed(thought='', action=None)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from refinelib import prompts
from refinelib.envs.base import TextEnv
from refinelib.eval.episodes import AgentTurn

MAX_STEPS = 30  # AgentBoard's max_num_steps, kept by the paper
FORMAT_ERROR = ("Error: your response has no valid action. Answer in exactly this format:\n"
                "Thought: <your reasoning>\nAction: <one action>")
Message = dict  # {"role": "system" | "user" | "assistant", "content": str}
_ACTION = "Action:"
_THOUGHT = re.compile(r"Thought:(.*?)(?=Action:|\Z)", re.S)


# ----- prompts ---------------------------------------------------------------------------------------
def prompt_version(family: str) -> str:
    """The instruction's version, e.g. ``"pddl-1+base-1"``: bumped in the template on any change."""
    own, base = prompts.template_version(f"agent_{family}"), prompts.template_version("agent_base")
    return f"{family}-{own}+base-{base}"


def instruction(family: str, task: str = "", max_steps: int = MAX_STEPS,
                perturbation: str | None = None) -> str:
    """The system message for ``family`` (its task, actions, the format and an example).

    Args:
        family: an environment family (``pddl``, ``babyai``, ``household``, ``sciworld``, ``textadventure``).
        task: the environment's task (PDDL shows only that domain's operators).
        max_steps: the step limit the instruction announces.
        perturbation: a rule of :mod:`refinelib.envs.perturb` (``"R1"``, ``"perturb-v1:R1"``); its action
            templates and example actions replace the canonical ones. None: the canonical instruction.
    """
    if not prompts.exists(f"agent_{family}"):
        raise ValueError(f"no agent instruction for family {family!r} "
                         f"(refinelib/prompts/agent_{family}.jinja)")
    text = prompts.render(f"agent_{family}", task=task, max_steps=max_steps)
    if perturbation is None:
        return text
    from refinelib.envs.perturb import get_rule, rewrite_instruction

    return rewrite_instruction(text, get_rule(family, perturbation))


def first_message(goal: str, observation: str) -> str:
    """The first user message: the goal and the first observation."""
    return f"Goal: {goal}\nObservation: {observation}"


def observation_message(observation: str) -> str:
    """A later user message: the environment's answer to the last action."""
    return f"Observation: {observation}"


# ----- the parser ------------------------------------------------------------------------------------
class Parsed(NamedTuple):
    """What the parser read from one output: the thought ("" if none) and the action (None: format error)."""

    thought: str
    action: str | None


def parse(text: str | None) -> Parsed:
    """The action after the last ``Action:`` (its first line, stripped) and the thought before it.

    Never raises.

    Returns ``action=None`` for output with no ``Action:`` or an empty action line.
    """
    if not isinstance(text, str):
        return Parsed("", None)
    cut = text.rfind(_ACTION)
    if cut < 0:
        thoughts = _THOUGHT.findall(text)
        return Parsed(thoughts[-1].strip() if thoughts else "", None)
    lines = text[cut + len(_ACTION):].strip().splitlines()
    action = lines[0].strip() if lines else ""
    thoughts = _THOUGHT.findall(text[:cut])
    return Parsed(thoughts[-1].strip() if thoughts else "", action or None)


# ----- the history window ----------------------------------------------------------------------------
def approx_tokens(messages: Sequence[Message]) -> int:
    """A tokenizer-free estimate (4 characters a token, 4 tokens of chat markup a message)."""
    return sum(len(m["content"]) // 4 + 4 for m in messages)


def window(messages: Sequence[Message], budget: int | None,
           count: Callable[[Sequence[Message]], int] = approx_tokens,
           start: int = 0) -> tuple[list[Message], int]:
    """Drop the oldest (assistant, user) pairs until the prompt fits ``budget`` tokens.

    The system message, the first user message and the last pair are always kept (a prompt that still
    does not fit goes out as it is). Pairs go whole, so roles keep alternating.

    Args:
        messages: ``[system, user, (assistant, user)*]``.
        budget: the most prompt tokens; None keeps everything.
        count: tokens of a message list (a policy's ``count_tokens``).
        start: pairs already dropped at an earlier step (the window only moves forward, which keeps the
            number of ``count`` calls per step small).

    Returns:
        (the kept messages, the number of dropped pairs).

    >>> msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "u0"}]
    >>> msgs += [{"role": r, "content": f"{r[0]}{i}"} for i in range(1, 4) for r in ("assistant", "user")]
    >>> kept, dropped = window(msgs, budget=4, count=len)
    >>> [m["content"] for m in kept], dropped
    (['s', 'u0', 'a3', 'u3'], 2)
    """
    head, pairs = list(messages[:2]), list(messages[2:])
    n_pairs = len(pairs) // 2
    dropped = min(start, max(n_pairs - 1, 0))
    while True:
        kept = head + pairs[2 * dropped:]
        if budget is None or dropped >= n_pairs - 1 or count(kept) <= budget:
            return kept, dropped
        dropped += 1


# ----- one running episode ---------------------------------------------------------------------------
@dataclass
class EpisodeState:
    """One episode in progress: the environment, the chat so far and the recorded turns.

    ``prompt()`` gives the messages for the next policy call; ``advance(output)`` parses the output,
    steps the environment (or feeds back the format error) and records the turn.
    """

    env: TextEnv
    seed: int  # the environment seed (``reset(seed)``)
    max_steps: int = MAX_STEPS
    goal: str = ""
    first_observation: str = ""
    messages: list[Message] = field(default_factory=list)
    turns: list[AgentTurn] = field(default_factory=list)
    dropped: int = 0  # (assistant, user) pairs the history window has dropped so far
    done: bool = False
    success: bool = False
    progress: float = 0.0

    def __post_init__(self) -> None:
        start = self.env.reset(self.seed)
        self.goal, self.first_observation = start.goal, start.observation
        self.progress = self.env.progress
        self.messages = [
            {"role": "system", "content": instruction(self.env.family, self.env.task, self.max_steps,
                                                      getattr(self.env, "perturbation", None))},
            {"role": "user", "content": first_message(start.goal, start.observation)},
        ]

    def prompt(self, budget: int | None = None, count: Callable = approx_tokens) -> list[Message]:
        """The messages for the next step, within ``budget`` tokens (see :func:`window`)."""
        kept, self.dropped = window(self.messages, budget, count, self.dropped)
        return kept

    def advance(self, output: str) -> AgentTurn:
        """Play one step from the policy's raw ``output``; a missing action is a format error."""
        if self.done:
            raise RuntimeError("the episode is over")
        output = output if isinstance(output, str) else ""
        thought, action = parse(output)
        if action is None:
            turn = AgentTurn(output, thought, None, FORMAT_ERROR, False, self.progress, format_error=True)
        else:
            step = self.env.step(action)
            self.progress, self.success = step.progress, step.success
            turn = AgentTurn(output, thought, action, step.observation, step.valid, step.progress, step.done,
                             step.success)
        self.turns.append(turn)
        self.done = turn.done or len(self.turns) >= self.max_steps
        turn.done = self.done
        self.messages += [{"role": "assistant", "content": output},
                          {"role": "user", "content": observation_message(turn.observation)}]
        return turn
