"""The data contract: what an erroneous turn, a refinement turn, a record and an episode key are.

Every stage reads and writes the same few shapes; their definitions live here, once, in the paper's
words (method.md §3-§7), and every other module imports them:

* a **trajectory** (synthesis): alternating ``DM`` and ``Player`` turns; a DM turn carries the three
  error :data:`FLAGS`; a Player turn is **erroneous** when the DM turn after it sets any flag;
* a **record** (the released schema): ``{id, conversations: [{from, loss, value}]}``; an erroneous
  ``gpt`` turn keeps ``loss`` false, so tuning sees it in the context but never learns to make it;
* a **refinement turn**: the first correct ``gpt`` turn after one or more erroneous ones (the turn that
  corrects the mistake; the ``no_refinement_loss`` ablation masks it);
* the **episode key**: what makes two evaluation episodes the same game played by the same policy
  (:data:`EPISODE_KEY`): how logs resume and what the claims pair;
* the **action normaliser**: how environments and metrics compare actions (whitespace collapsed, a
  final period dropped; each family lower-cases where its parser is case-blind, and
  :func:`action_text` is the case-blind form the failure-mode detectors compare).

>>> trajectory = [{"role": "DM", "Observation": "hi", **dict.fromkeys(FLAGS, False)},
...               {"role": "Player", "Thought": "", "Action": "opne door"},
...               {"role": "DM", "Observation": "no", "parameter_error": True, "place_error": False,
...                "logic_error": False},
...               {"role": "Player", "Thought": "", "Action": "open door"},
...               {"role": "DM", "Observation": "open", **dict.fromkeys(FLAGS, False)}]
>>> erroneous_player_turns(trajectory)
[1]
>>> record = {"id": "r", "conversations": [{"from": "human", "loss": False, "value": "..."},
...           {"from": "gpt", "loss": False, "value": "a"}, {"from": "human", "loss": False, "value": "no"},
...           {"from": "gpt", "loss": True, "value": "b"}, {"from": "human", "loss": False, "value": "ok"},
...           {"from": "gpt", "loss": True, "value": "c"}]}
>>> erroneous_turns(record), refinement_turns(record)
([1], [3])
>>> normalize_action("  go to   desk 1. ")
'go to desk 1'
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

# The DM's three error flags (method.md §4): a wrong parameter, a wrong place, a wrong logic.
FLAGS = ("parameter_error", "place_error", "logic_error")


class RecordError(ValueError):
    """A record does not follow the ``{id, conversations: [{from, loss, value}]}`` schema."""


# ----- trajectories (DM / Player turns) ------------------------------------------------------------
def flags_set(dm_turn: Mapping) -> list[str]:
    """The error flags a DM turn sets, in :data:`FLAGS` order (strictly ``True`` values only)."""
    return [f for f in FLAGS if dm_turn.get(f) is True]


def erroneous_player_turns(trajectory: Sequence[Mapping]) -> list[int]:
    """Indices of the Player turns the next DM turn flags as erroneous."""
    return [i for i, (turn, nxt) in enumerate(zip(trajectory, trajectory[1:], strict=False))
            if turn.get("role") == "Player" and nxt.get("role") == "DM" and flags_set(nxt)]


def error_episodes(erroneous: Sequence[bool]) -> int:
    """Error->refinement episodes: runs of erroneous Player turns followed by a correct one."""
    return sum(1 for a, b in zip(erroneous, erroneous[1:], strict=False) if a and not b)


# ----- records (the released schema) ---------------------------------------------------------------
def is_erroneous(turn: Mapping) -> bool:
    """An erroneous turn of an AgentRefine record: a ``gpt`` turn with ``loss`` false.

    (Meant for AgentRefine records; in AgentInstruct-style records an untrained gpt turn is no error.)
    """
    return turn.get("from") == "gpt" and not turn.get("loss")


def erroneous_turns(record: Mapping) -> list[int]:
    """Indices (in ``conversations``) of the record's erroneous turns."""
    return [i for i, t in enumerate(record["conversations"]) if is_erroneous(t)]


def refinement_turns(record: Mapping) -> list[int]:
    """Indices of the refinement turns: the first trained ``gpt`` turn after erroneous ones."""
    out, after_error = [], False
    for i, turn in enumerate(record["conversations"]):
        if turn.get("from") != "gpt":
            continue
        if is_erroneous(turn):
            after_error = True
        elif after_error:
            out.append(i)
            after_error = False
    return out


# ----- episodes -------------------------------------------------------------------------------------
EPISODE_KEY = ("policy", "suite", "instance", "seed", "perturbation", "sample")


def episode_key(episode) -> tuple:
    """What identifies one evaluation episode (an ``Episode``, its dict, or a row with these fields):
    the same key means the same game (suite, instance, seed, perturbation, sample) by the same policy."""
    get = episode.get if isinstance(episode, Mapping) else lambda name: getattr(episode, name)
    return tuple(get(name) for name in EPISODE_KEY)


# ----- actions --------------------------------------------------------------------------------------
def normalize_action(action: str) -> str:
    """Strip and collapse whitespace and drop a final period (agents often add both); case is kept."""
    action = re.sub(r"\s+", " ", action.strip())
    return action[:-1].rstrip() if action.endswith(".") else action


def action_text(action: str) -> str:
    """The case-blind form of an action the failure-mode detectors match: lower-cased, whitespace
    collapsed, trailing periods dropped."""
    return " ".join(action.lower().split()).rstrip(".")
