"""Export released-schema records to the formats the major trainers read, per-turn loss flags kept.

AgentRefine's point is the mask: an erroneous ``gpt`` turn (``loss`` false) stays in the context but is
never learnt (:mod:`refinelib.schema`). An export that drops the flag trains the model to make the very
mistakes it should recover from, so every format here carries the flag, and says plainly when the trainer
that reads the format cannot honour it.

* ``released``: our schema and the AgentRefine release, what refinelib trains on; ``loss`` on each
  turn, honoured by :func:`refinelib.tune.masking.render` (policy ``refine``);
* ``openai``: OpenAI fine-tuning ``messages`` (:func:`refinelib.data.chat.to_openai`); the assistant
  ``weight`` 0/1, honoured by OpenAI fine-tuning;
* ``axolotl``: axolotl ``type: chat_template`` datasets; ``training`` on each message, honoured when the
  dataset sets ``message_field_training: training`` (:func:`to_axolotl` has the YAML);
* ``sharegpt``: LLaMA-Factory ``formatting: sharegpt``; ``loss`` on each turn, kept for round trips, but
  LLaMA-Factory ignores it (:func:`to_sharegpt` says what comes closest and what is lost).

:func:`export` writes any of them as JSONL; :func:`load` (or :data:`LOADERS`, one record at a time) reads
each back into the released schema, flags included.

>>> record = {"id": "demo", "conversations": [
...     {"from": "system", "loss": False, "value": "You are an agent."},
...     {"from": "human", "loss": False, "value": "Open the box."},
...     {"from": "gpt", "loss": False, "value": "Action: open door"},       # erroneous turn
...     {"from": "human", "loss": False, "value": "Observation: There is no door."},
...     {"from": "gpt", "loss": True, "value": "Action: open box"}]}       # refinement turn
>>> [(m["role"], m["training"]) for m in to_axolotl(record)["messages"]]
[('system', False), ('user', False), ('assistant', False), ('user', False), ('assistant', True)]
>>> row = to_sharegpt(record)
>>> row["system"], [(t["from"], t["loss"]) for t in row["conversations"]]
('You are an agent.', [('human', False), ('gpt', False), ('human', False), ('gpt', True)])
>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "train.axolotl.jsonl"
>>> export([record], path, "axolotl")
1
>>> load(path, "axolotl") == [record]
True
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from refinelib.data.chat import load_jsonl, normalize_record, to_openai
from refinelib.schema import RecordError

AXOLOTL_ROLES = {"system": "system", "human": "user", "gpt": "assistant"}


def to_released(record: Mapping) -> dict:
    """The record itself in the released schema (``{id, conversations: [{from, loss, value}]}``), copied."""
    return {"id": record["id"], "conversations": [dict(turn) for turn in record["conversations"]]}


def to_axolotl(record: Mapping) -> dict:
    """A record as an axolotl ``chat_template`` row: ``{id, messages: [{role, content, training}]}``.

    ``training`` is set on every message, true exactly on the trained ``gpt`` turns. axolotl reads it
    only when the dataset names the key in ``message_field_training`` (it is off by default); an explicit
    value then overrides ``roles_to_train`` and ``train_on_inputs`` for that message, and
    ``train_on_eos: turn`` (the default) labels the end-of-turn token of trained turns only, as
    :func:`refinelib.tune.masking.render` does. The YAML a user needs::

        datasets:
          - path: train.axolotl.jsonl
            ds_type: json
            type: chat_template
            field_messages: messages            # the default
            message_field_training: training    # honour the per-message flag
            roles_to_train: ["assistant"]       # the default; the flag overrides it per message
            train_on_eos: turn                  # the default

    axolotl does not tokenise the extra ``id`` column. The other per-message key,
    ``message_field_training_detail`` (character ranges inside a turn), is not needed: our flags are whole
    turns.
    """
    messages = [{"role": AXOLOTL_ROLES[t["from"]], "content": t["value"],
                 "training": t["from"] == "gpt" and bool(t["loss"])} for t in record["conversations"]]
    return {"id": record["id"], "messages": messages}


def to_sharegpt(record: Mapping) -> dict:
    """A record as LLaMA-Factory's ShareGPT row: ``{id, system?, conversations: [{from, value, loss}]}``.

    The system turn moves to the top-level ``system`` field; the other turns keep ``from``
    (``human``/``gpt``), ``value`` and their ``loss`` flag, the convention of the AgentRefine and
    AgentInstruct releases (themselves ShareGPT files), so :func:`from_sharegpt` restores the record.
    ``dataset_info.json`` entry::

        "agentrefine": {"file_name": "train.sharegpt.jsonl", "formatting": "sharegpt",
                        "columns": {"messages": "conversations", "system": "system"}}

    **LLaMA-Factory does not read per-turn loss flags**; it ignores the ``loss`` key. What it can do:

    * by default (``mask_history: false``) it trains every ``gpt`` turn, erroneous ones included: the
      paper's "w erroneous loss" ablation, not AgentRefine;
    * ``mask_history: true`` comes closest: it trains the last ``gpt`` turn only, so every erroneous turn
      is masked, but so is every earlier correct turn (refinement turns included);
    * a faithful mask would need one example per trained turn, cut right after it, trained with
      ``mask_history: true``; this module does not make those.

    Also: LLaMA-Factory skips (with a warning) a conversation that does not alternate ``human``/``gpt``
    from a ``human`` turn to a ``gpt`` turn; a record that ends on a ``human`` turn (as synthesised ones
    do) must lose its trailing turns first (they are never trained, so no trained token changes).
    """
    turns = list(record["conversations"])
    row: dict = {"id": record["id"]}
    if turns and turns[0]["from"] == "system":
        row["system"] = turns.pop(0)["value"]
    row["conversations"] = [{"from": t["from"], "value": t["value"], "loss": bool(t["loss"])} for t in turns]
    return row


def from_axolotl(obj, id: str | None = None) -> dict:  # noqa: A002
    """An axolotl ``chat_template`` row (``messages`` with ``training`` flags) as a released record.

    A message without ``training`` follows axolotl's default (assistant turns are trained). A trained
    user or system message is refused: the released schema trains ``gpt`` turns only.
    """
    if not isinstance(obj, Mapping) or not isinstance(obj.get("messages"), list):
        return normalize_record(obj, id=id)  # its error names what is missing
    rid = obj.get("id", id)
    messages = []
    for i, message in enumerate(obj["messages"]):
        if not isinstance(message, Mapping):
            messages.append(message)  # normalize_record names it
            continue
        message = dict(message)
        flag = message.pop("training", None)
        if flag is not None and not isinstance(flag, bool):
            raise RecordError(f"record {rid!r}: messages[{i}].training must be true or false, got {flag!r}")
        if flag is not None and message.get("role") == "assistant":
            message["weight"] = int(flag)  # the OpenAI layout's flag, which normalize_record reads
        elif flag:
            raise RecordError(f"record {rid!r}: messages[{i}].training is true on a {message.get('role')!r} "
                              "message; the released schema trains assistant turns only")
        messages.append(message)
    return normalize_record({**obj, "messages": messages}, id=id)


def from_sharegpt(obj, id: str | None = None) -> dict:  # noqa: A002
    """A ShareGPT row as a released record: the ``system`` field becomes the first turn again.

    Turns without ``loss`` follow the ShareGPT default (``gpt`` turns are trained).
    """
    if isinstance(obj, Mapping) and "system" in obj and isinstance(obj.get("conversations"), list):
        if not isinstance(obj["system"], str):
            raise RecordError(f"record {obj.get('id', id)!r}: field 'system' must be a string, "
                              f"got {type(obj['system']).__name__}")
        system = {"from": "system", "loss": False, "value": obj["system"]}
        obj = {**obj, "conversations": [system, *obj["conversations"]]}
    return normalize_record(obj, id=id)


FORMATS: dict[str, Callable[[Mapping], dict]] = {
    "released": to_released, "openai": to_openai, "axolotl": to_axolotl, "sharegpt": to_sharegpt}
LOADERS: dict[str, Callable[..., dict]] = {
    "released": normalize_record, "openai": normalize_record, "axolotl": from_axolotl,
    "sharegpt": from_sharegpt}


def _pick(table: Mapping, format: str):  # noqa: A002
    if format not in table:
        raise ValueError(f"unknown format {format!r}; expected one of {sorted(table)}")
    return table[format]


def export(records: Iterable[Mapping], path: str | Path, format: str = "released") -> int:  # noqa: A002
    """Write records as JSONL in ``format`` (a key of :data:`FORMATS`); return how many were written.

    Each record is first normalised (:func:`~refinelib.data.chat.normalize_record`: the released schema,
    or any layout it reads), so the flags written are the ones the loaders see. Nothing is written unless
    every record is valid: an unknown format raises one ``ValueError`` naming it, a bad record one
    :class:`~refinelib.schema.RecordError` naming its position and id.
    """
    exporter = _pick(FORMATS, format)
    lines = []
    for i, record in enumerate(records):
        try:
            lines.append(json.dumps(exporter(normalize_record(record)), ensure_ascii=False) + "\n")
        except RecordError as error:
            raise RecordError(f"records[{i}]: {error}") from error
    # chat.write_jsonl writes only ``id`` and ``conversations``, which would drop ``messages`` and
    # ``system``; these lines are serialised the same way (UTF-8, key order kept), whatever the keys.
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(lines)
    return len(lines)


def load(path: str | Path, format: str = "released") -> list[dict]:  # noqa: A002
    """Read a JSONL file written in ``format`` back into released records (errors name the line)."""
    return load_jsonl(path, _pick(LOADERS, format))
