"""A synthesized trajectory as a chat record: Algorithm 1's last step (method.md §7).

The record schema is the released AgentRefine one (:mod:`refinelib.data.chat` reads and writes it).
Conversion rules:

1. the first human message holds the environment, the goal, the action templates and the required
   ``Thought: ...\\nAction: ...`` format, followed by the DM's initial observation (so roles alternate, as
   Mistral-style templates require);
2. a DM turn -> human ``Observation: {Observation}`` (consecutive DM turns are joined into one message);
3. a Player turn -> gpt ``Thought: {Thought}\\nAction: {Action}``, ``loss`` false when it is erroneous (the
   next DM turn sets any flag: :func:`refinelib.schema.erroneous_player_turns`), true otherwise. The DM's
   Thought and flags are not shown to the model.

>>> script = {"Environment": {"home": ["notes.txt"]}, "Goal": "Read notes.txt.",
...           "Completion Conditions": ["notes.txt read"],
...           "Available Actions": {"cat {file}": {"verification code": r"^\\s*cat\\s+(.+?)\\s*$",
...                                                "parameters": {"file": ["notes.txt"]}}}}
>>> trajectory = [
...     {"turn": 0, "role": "DM", "Thought": "", "Observation": "You are in home.",
...      "parameter_error": False, "place_error": False, "logic_error": False},
...     {"turn": 1, "role": "Player", "Thought": "Read it.", "Action": "open notes.txt"},
...     {"turn": 2, "role": "DM", "Thought": "No such action.", "Observation": "Error: unknown command.",
...      "parameter_error": True, "place_error": False, "logic_error": False},
...     {"turn": 3, "role": "Player", "Thought": "Use cat.", "Action": "cat notes.txt"},
...     {"turn": 4, "role": "DM", "Thought": "Done.", "Observation": "hello",
...      "parameter_error": False, "place_error": False, "logic_error": False}]
>>> record = to_conversation(script, trajectory, "demo")
>>> [(t["from"], t["loss"]) for t in record["conversations"]]
[('human', False), ('gpt', False), ('human', False), ('gpt', True), ('human', False)]
>>> record["conversations"][1]["value"]
'Thought: Read it.\\nAction: open notes.txt'
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from refinelib.schema import RecordError, erroneous_player_turns
from refinelib.synth.parse import parse_json

FORMAT_INSTRUCTION = (
    "Each turn, respond in exactly this format, with one action from the list above:\n"
    "Thought: <your reasoning>\nAction: <the action>"
)

def instruction(script: Mapping) -> str:
    """The first human message: environment, goal, action templates and the required output format."""
    env = script.get("Environment", "")
    env_text = env if isinstance(env, str) else json.dumps(env, indent=2, ensure_ascii=False)
    lines = []
    for template, spec in (script.get("Available Actions") or {}).items():
        description = spec.get("description") if isinstance(spec, Mapping) else None
        lines.append(f"- {template}" + (f": {description}" if description else ""))
    return (f"You are the player in a text-based environment.\n\nEnvironment:\n{env_text}\n\n"
            f"Goal: {script.get('Goal', '')}\n\nAvailable actions:\n" + "\n".join(lines)
            + f"\n\n{FORMAT_INSTRUCTION}")


def to_conversation(script, trajectory, id: str) -> dict:  # noqa: A002 (the schema's field name)
    """Convert a (verified) trajectory to a chat record in the released schema.

    Args:
        script: the script (dict or raw JSON text).
        trajectory: its turns (list or raw JSON text), in the contract's Player/DM format.
        id: the record id.

    Returns:
        ``{"id": id, "conversations": [{"from", "loss", "value"}, ...]}``.

    Raises:
        RecordError: naming the record id and the turn/field, when a turn lacks what conversion reads.
    """
    script_obj, why = parse_json(script, dict)
    if why or not isinstance(script_obj, Mapping):
        what = why or type(script_obj).__name__
        raise RecordError(f"record {id!r}: the script is not a JSON object ({what})")
    turns, why = parse_json(trajectory, list)
    if why or not isinstance(turns, list):
        raise RecordError(f"record {id!r}: the trajectory is not a JSON list ({why or type(turns).__name__})")
    for i, turn in enumerate(turns):
        role = turn.get("role") if isinstance(turn, Mapping) else None
        need = {"Player": ("Thought", "Action"), "DM": ("Observation",)}.get(role)
        if need is None:
            raise RecordError(f"record {id!r}: trajectory[{i}].role is {role!r}; expected 'Player' or 'DM'")
        for key in need:
            if not isinstance(turn.get(key), str):
                raise RecordError(f"record {id!r}: trajectory[{i}].{key} must be a string")

    erroneous = set(erroneous_player_turns(turns))
    conversations = [{"from": "human", "loss": False, "value": instruction(script_obj)}]
    for i, turn in enumerate(turns):
        if turn["role"] == "DM":
            text = f"Observation: {turn['Observation']}"
            if conversations[-1]["from"] == "human":  # the initial observation, or DM turns in a row
                conversations[-1]["value"] += f"\n\n{text}"
            else:
                conversations.append({"from": "human", "loss": False, "value": text})
            continue
        conversations.append({"from": "gpt", "loss": i not in erroneous,
                              "value": f"Thought: {turn['Thought']}\nAction: {turn['Action']}"})
    return {"id": id, "conversations": conversations}
