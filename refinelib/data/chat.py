"""Chat records in the released schema ``{id, conversations: [{from, loss, value}]}`` (method.md §7).

The schema is the released AgentRefine one (Hugging Face ``fudayuan/AgentRefine-*``) and exactly what
:func:`refinelib.tune.masking.render` consumes: ``from`` is ``"human"``, ``"gpt"`` or (first turn only)
``"system"``; ``loss`` is true on trained ``gpt`` turns, false on erroneous ``gpt`` turns and on every other
turn (:mod:`refinelib.schema`). Synthesis makes such records
(:func:`refinelib.synth.conversation.to_conversation`);
this module reads, converts and writes them.

Loaders (:func:`normalize_record`, :func:`load_jsonl`) accept the released schema, AgentInstruct's layout
(``loss`` optional: gpt turns default to trained), OpenAI ``messages`` lists (assistant ``weight`` 0/1 is
the loss flag) and Agent-FLAN's ``conversation`` lists (role/content/loss), and raise one
:class:`~refinelib.tune.masking.RecordError` naming the record and field.

>>> record = {"id": "demo", "conversations": [
...     {"from": "human", "loss": False, "value": "Goal: read notes.txt"},
...     {"from": "gpt", "loss": False, "value": "Thought: Read it.\\nAction: open notes.txt"},
...     {"from": "human", "loss": False, "value": "Observation: Error: unknown command."},
...     {"from": "gpt", "loss": True, "value": "Thought: Use cat.\\nAction: cat notes.txt"},
...     {"from": "human", "loss": False, "value": "Observation: hello"}]}
>>> [t["value"] for t in strip_errors(record)["conversations"][1:]]
['Thought: Use cat.\\nAction: cat notes.txt', 'Observation: hello']
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from refinelib import jsonl
from refinelib.schema import RecordError, is_erroneous

OPENAI_ROLES = {"system": "system", "user": "human", "assistant": "gpt"}
RELEASED_ROLES = {"system": "system", "human": "human", "gpt": "gpt", "user": "human", "assistant": "gpt"}


def strip_errors(record: Mapping) -> dict:
    """The "w/o refinement data" variant: drop each erroneous gpt turn and the feedback human turn after it.

    An erroneous turn is a ``gpt`` turn with ``loss`` false (AgentRefine records; not meant for
    AgentInstruct records, whose untrained gpt turns are not errors). The id is kept.
    """
    out, skip_feedback = [], False
    for turn in record["conversations"]:
        if is_erroneous(turn):
            skip_feedback = True
            continue
        if skip_feedback and turn["from"] == "human":
            skip_feedback = False
            continue
        skip_feedback = False
        out.append(dict(turn))
    return {**record, "conversations": out}


# ------------------------------------------------------------------------------------------- loaders


def normalize_record(obj, id: str | None = None) -> dict:  # noqa: A002
    """Normalise one record (released AgentRefine, AgentInstruct or OpenAI messages) to the released schema.

    Args:
        obj: ``{id, conversations: [{from, value, loss?}]}``, ``{id?, messages: [{role, content, weight?}]}``,
            ``{id, conversation: [{role, content, loss?}]}`` or a bare list of OpenAI messages.
        id: the id to use when the record has none (required for a bare messages list).

    Returns:
        A new ``{"id", "conversations": [{"from", "loss", "value"}]}`` dict; a record already in the
        released schema comes back equal (a lossless round trip). Other top-level keys are dropped.

    Raises:
        RecordError: one error naming the record id and the offending field.
    """
    if isinstance(obj, list):
        obj = {"messages": obj}
    if not isinstance(obj, Mapping):
        raise RecordError(f"record {id!r}: must be an object or a list of messages, got {type(obj).__name__}")
    rid = obj.get("id", id)
    if isinstance(rid, int) and not isinstance(rid, bool):
        rid = str(rid)
    if not isinstance(rid, str) or not rid:
        raise RecordError(f"record {rid!r}: field 'id' must be a non-empty string")

    def bad(where: str, what: str) -> RecordError:
        return RecordError(f"record {rid!r}: {where} {what}" if where else f"record {rid!r} {what}")

    layouts = {"conversations": ("from", "value", RELEASED_ROLES, "loss"),  # AgentRefine, AgentInstruct
               "messages": ("role", "content", OPENAI_ROLES, "weight"),     # OpenAI fine-tuning
               "conversation": ("role", "content", OPENAI_ROLES, "loss")}   # Agent-FLAN
    field = next((f for f in layouts if f in obj), None)
    if field is None:
        raise bad("", f"has none of the fields {sorted(layouts)}")
    role_key, text_key, roles, flag_key = layouts[field]
    turns = obj[field]
    if not isinstance(turns, list) or not turns:
        raise bad(f"field {field!r}", "must be a non-empty list")
    out = []
    for i, turn in enumerate(turns):
        where = f"{field}[{i}]"
        if not isinstance(turn, Mapping):
            raise bad(where, f"must be an object with {role_key!r} and {text_key!r}")
        role = roles.get(turn.get(role_key))
        if role is None:
            raise bad(f"{where}.{role_key}", f"is {turn.get(role_key)!r}; expected one of {sorted(roles)}")
        if role == "system" and i != 0:
            raise bad(f"{where}.{role_key}", "is 'system'; only the first turn may be a system turn")
        text = turn.get(text_key)
        if isinstance(text, list) and text_key == "content":  # content parts: [{"type": "text", "text": ...}]
            if not all(isinstance(p, Mapping) and isinstance(p.get("text"), str) for p in text):
                raise bad(f"{where}.content", "has a part that is not text")
            text = "".join(p["text"] for p in text)
        if not isinstance(text, str):
            raise bad(f"{where}.{text_key}", f"must be a string, got {type(text).__name__}")
        flag = turn.get(flag_key)
        if flag is None:
            loss = role == "gpt"  # AgentInstruct / OpenAI default: assistant turns are trained
        elif isinstance(flag, bool) or (flag_key == "weight" and flag in (0, 1)):
            loss = bool(flag)
        else:
            allowed = "true or false" if flag_key == "loss" else "0 or 1"
            raise bad(f"{where}.{flag_key}", f"must be {allowed}, got {flag!r}")
        out.append({"from": role, "loss": loss, "value": text})
    if not any(t["from"] == "gpt" for t in out):
        raise bad(f"field {field!r}", "has no assistant turn")
    return {"id": rid, "conversations": out}


def to_openai(record: Mapping) -> dict:
    """A released-schema record as OpenAI fine-tuning ``messages`` (assistant ``weight`` = loss flag)."""
    messages = []
    for turn in record["conversations"]:
        role = {"system": "system", "human": "user", "gpt": "assistant"}[turn["from"]]
        message = {"role": role, "content": turn["value"]}
        if role == "assistant":
            message["weight"] = int(bool(turn["loss"]))
        messages.append(message)
    return {"id": record["id"], "messages": messages}


def load_jsonl(path: str | Path, loader=None) -> list[dict]:
    """Read and normalise a JSONL file of records in any accepted layout (errors name the line and id).

    ``loader(obj, id=...)`` turns one line into a released record (default :func:`normalize_record`;
    :mod:`refinelib.data.export` passes the loader of a trainer's format)."""
    loader = loader or normalize_record
    records = []
    for number, obj in jsonl.numbered(path, RecordError):
        try:
            records.append(loader(obj, id=f"{Path(path).stem}-{number}"))
        except RecordError as error:
            raise RecordError(f"{path}:{number}: {error}") from error
    return records


def write_jsonl(records: Iterable[Mapping], path: str | Path) -> int:
    """Write records in the released schema, one JSON object per line (UTF-8, key order kept)."""
    count = 0
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps({"id": record["id"], "conversations": record["conversations"]},
                                    ensure_ascii=False) + "\n")
            count += 1
    return count
