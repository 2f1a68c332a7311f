"""Trainer-format exporters (refinelib.data.export): round trips, the mask each trainer sees, bad input."""

import copy
import json

import pytest
from test_verify import GOOD, SCRIPT
from tiny_model import tiny_tokenizer

from refinelib.data.chat import write_jsonl
from refinelib.data.export import FORMATS, LOADERS, export, from_axolotl, from_sharegpt, load
from refinelib.schema import RecordError, erroneous_turns, refinement_turns
from refinelib.synth.conversation import to_conversation
from refinelib.tune.masking import IGNORE_INDEX, render


def turn(role, text, loss=False):
    return {"from": role, "loss": loss, "value": text}


RECORDS = [
    {"id": "sys-error-refine", "conversations": [
        turn("system", "You are an agent in a household."),
        turn("human", "Your goal is to put a clean mug on the table. ☕ \"quoted\"\ttab"),
        turn("gpt", "Thought: I should look around first.\nAction: open drawer 1"),           # erroneous
        turn("human", "Observation: Error: Invalid command format."),
        turn("gpt", "Thought: The key is in the drawer.\nAction: look", loss=True),           # refinement
        turn("human", "Observation: You see a table, a drawer and a lamp."),
        turn("gpt", "Thought: ok\nAction: take mug from table", loss=True)]},
    {"id": "two-errors", "conversations": [
        turn("human", "Goal: look."),
        turn("gpt", "Action: lok"), turn("human", "Observation: Error."),
        turn("gpt", "Action: loook"), turn("human", "Observation: Error."),
        turn("gpt", "Action: look", loss=True), turn("human", "")]},                           # ends on human
]


@pytest.fixture(scope="module")
def records():
    out = copy.deepcopy(RECORDS) + [to_conversation(SCRIPT, GOOD, "fs-0001")]
    # the fixtures hold what the tests are about: a system turn, errors, refinements after them
    assert out[0]["conversations"][0]["from"] == "system"
    assert all(erroneous_turns(r) and refinement_turns(r) for r in out)
    return out


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def trained_text(record, tok, policy="refine"):
    """The labels ``render`` gives a record, and the text of the tokens they train."""
    r = render(record, tok, policy=policy)
    trained = [t for t, label in zip(r.input_ids, r.labels, strict=True) if label != IGNORE_INDEX]
    return r.labels, tok.decode(trained)


# --------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_round_trip_keeps_every_turn_and_flag(tmp_path, records, fmt):
    path = tmp_path / f"train.{fmt}.jsonl"
    assert export(records, path, fmt) == len(records)
    assert len(rows(path)) == len(records)
    assert load(path, fmt) == records
    assert [LOADERS[fmt](FORMATS[fmt](r)) for r in records] == records  # one record at a time, no file


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_the_mask_survives_the_round_trip(tmp_path, records, tok, fmt):
    path = tmp_path / f"train.{fmt}.jsonl"
    export(records, path, fmt)
    for original, again in zip(records, load(path, fmt), strict=True):
        labels, text = trained_text(again, tok)
        assert (labels, text) == trained_text(original, tok)
        assert "Action: lok" not in text and "open drawer 1" not in text  # erroneous turns stay masked


def test_released_export_is_what_chat_write_jsonl_writes(tmp_path, records):
    export(records, tmp_path / "a.jsonl", "released")
    write_jsonl(records, tmp_path / "b.jsonl")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


# ------------------------------------------------------ what each trainer reads from the file
# Each rule below is the trainer's own (checked against its source), applied to the exported rows
# without going through our loaders: the flags must be where the trainer looks for them.


def as_record(rid, turns):
    return {"id": rid, "conversations": [turn(role, text, loss) for role, text, loss in turns]}


def openai_view(row):  # OpenAI fine-tuning: assistant messages are trained unless weight is 0
    roles = {"system": "system", "user": "human", "assistant": "gpt"}
    return as_record(row["id"], [(roles[m["role"]], m["content"], m.get("weight", 1) == 1)
                                 for m in row["messages"]])


def axolotl_view(row):  # chat_template with message_field_training: training, roles_to_train: [assistant]
    roles = {"system": "system", "user": "human", "assistant": "gpt"}
    return as_record(row["id"], [(roles[m["role"]], m["content"], m.get("training", m["role"] == "assistant"))
                                 for m in row["messages"]])


def llamafactory_view(row, mask_history=False):  # sharegpt: every gpt turn, or the last one only
    system = [("system", row["system"], False)] if "system" in row else []
    gpt = [i for i, t in enumerate(row["conversations"]) if t["from"] == "gpt"]
    trained = gpt[-1:] if mask_history else gpt
    return as_record(row["id"], system + [(t["from"], t["value"], i in trained)
                                          for i, t in enumerate(row["conversations"])])


@pytest.mark.parametrize("fmt, view", [("openai", openai_view), ("axolotl", axolotl_view)])
def test_trainers_that_read_the_flag_train_exactly_the_refine_mask(tmp_path, records, tok, fmt, view):
    export(records, tmp_path / "out.jsonl", fmt)
    for original, row in zip(records, rows(tmp_path / "out.jsonl"), strict=True):
        assert trained_text(view(row), tok) == trained_text(original, tok)


def test_axolotl_rows_carry_the_flag_on_every_message(tmp_path, records):
    export(records, tmp_path / "out.jsonl", "axolotl")
    first = rows(tmp_path / "out.jsonl")[0]
    assert set(first) == {"id", "messages"}
    assert [(m["role"], m["training"]) for m in first["messages"]] == [
        ("system", False), ("user", False), ("assistant", False), ("user", False), ("assistant", True),
        ("user", False), ("assistant", True)]


def test_sharegpt_rows_keep_the_flag_that_llamafactory_ignores(tmp_path, records, tok):
    export(records, tmp_path / "out.jsonl", "sharegpt")
    first = rows(tmp_path / "out.jsonl")[0]
    assert first["system"] == "You are an agent in a household."
    assert [t["from"] for t in first["conversations"]] == ["human", "gpt"] * 3  # the system turn moved
    assert [t["loss"] for t in first["conversations"] if t["from"] == "gpt"] == [False, True, True]
    # what the docstring says is lost: LLaMA-Factory's default trains the erroneous turns, and
    # mask_history also drops the refinement turn; neither is the refine mask
    original = trained_text(records[0], tok)
    assert trained_text(llamafactory_view(first), tok) == trained_text(records[0], tok, "erroneous_loss")
    _, last_only = trained_text(llamafactory_view(first, mask_history=True), tok)
    assert last_only == "Thought: ok\nAction: take mug from table<|im_end|>" != original[1]


# ----------------------------------------------------------------------------------- bad input


def test_unknown_format_is_one_error_and_no_file(tmp_path, records):
    path = tmp_path / "out.jsonl"
    with pytest.raises(ValueError, match=r"unknown format 'alpaca'.*'axolotl'") as error:
        export(records, path, "alpaca")
    assert not isinstance(error.value, RecordError)
    assert not path.exists()
    with pytest.raises(ValueError, match="unknown format 'alpaca'"):
        load(path, "alpaca")


def test_bad_record_is_one_error_naming_it_and_nothing_is_written(tmp_path, records):
    path = tmp_path / "out.jsonl"
    bad = records[:2] + [{"id": "no-turns", "turns": []}] + records[2:]
    for fmt in FORMATS:
        with pytest.raises(RecordError, match=r"records\[2\]: record 'no-turns'.*'conversations'"):
            export(bad, path, fmt)
        assert not path.exists()
    path.write_text("kept\n", encoding="utf-8")  # an existing file is not touched either
    with pytest.raises(RecordError, match=r"conversations\[0\]\.loss"):
        export([{"id": "x", "conversations": [{"from": "gpt", "loss": "no", "value": "a"}]}], path, "axolotl")
    assert path.read_text(encoding="utf-8") == "kept\n"


def test_loaders_refuse_what_the_released_schema_cannot_say(tmp_path):
    user_trained = {"id": "u", "messages": [{"role": "user", "content": "hi", "training": True},
                                            {"role": "assistant", "content": "yo", "training": True}]}
    with pytest.raises(RecordError, match=r"record 'u': messages\[0\]\.training is true on a 'user'"):
        from_axolotl(user_trained)
    with pytest.raises(RecordError, match=r"messages\[1\]\.training must be true or false"):
        from_axolotl({"id": "w", "messages": [{"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": "yo", "training": "yes"}]})
    with pytest.raises(RecordError, match="field 'system' must be a string"):
        from_sharegpt({"id": "s", "system": 3, "conversations": [{"from": "gpt", "value": "x"}]})
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"id": "ok", "messages": [{"role": "assistant", "content": "x"}]}) + "\n"
                    + json.dumps({"id": "r9", "messages": [{"role": "tool", "content": "x"}]}) + "\n")
    with pytest.raises(RecordError, match=r"bad.jsonl:2: record 'r9': messages\[0\]\.role"):
        load(path, "axolotl")


def test_plain_files_without_flags_load_with_the_trainers_defaults():
    """A flagless axolotl or ShareGPT row trains every assistant turn, as those trainers do by default."""
    assert from_axolotl({"id": "a", "messages": [{"role": "user", "content": "hi"},
                                                 {"role": "assistant", "content": "yo"}]})["conversations"] \
        == [turn("human", "hi"), turn("gpt", "yo", True)]
    assert from_sharegpt({"id": "s", "system": "", "conversations": [{"from": "human", "value": "hi"},
                                                                     {"from": "gpt", "value": "yo"}]}) \
        == {"id": "s", "conversations": [turn("system", ""), turn("human", "hi"), turn("gpt", "yo", True)]}
