"""Chat conversion (method.md §7): trajectory -> released schema, loss flags, ablation variant, loaders."""

import copy
import json

import pytest
from test_verify import GOOD, SCRIPT, STEPS, trajectory
from tiny_model import tiny_tokenizer

from refinelib.data.chat import load_jsonl, normalize_record, strip_errors, to_openai, write_jsonl
from refinelib.schema import RecordError
from refinelib.synth.conversation import FORMAT_INSTRUCTION, to_conversation
from refinelib.synth.verify import verify
from refinelib.tune.masking import IGNORE_INDEX, render


@pytest.fixture(scope="module")
def record():
    return to_conversation(SCRIPT, GOOD, "fs-0001")


def test_conversion_layout_and_loss_flags(record):
    turns = record["conversations"]
    assert record["id"] == "fs-0001" and set(record) == {"id", "conversations"}
    assert [t["from"] for t in turns] == ["human", "gpt"] * 5 + ["human"]
    assert [t["loss"] for t in turns if t["from"] == "gpt"] == [False, True, False, True, True]
    assert not any(t["loss"] for t in turns if t["from"] == "human")
    assert all(set(t) == {"from", "loss", "value"} for t in turns)
    first = turns[0]["value"]
    for text in (SCRIPT["Goal"], "config.cfg", "- cd {path}: change directory", "- ls",
                 "- edit {file} set {setting}", FORMAT_INSTRUCTION, "Observation: You are in /home/user."):
        assert text in first
    assert first.index(FORMAT_INSTRUCTION) < first.index("Observation:")  # initial observation last
    assert "mode=on" not in first.split("Available actions")[1]  # parameter lists are not given away
    assert turns[1]["value"] == "Thought: I will try ls config.cfg.\nAction: ls config.cfg"
    assert turns[2]["value"] == "Observation: Error: Invalid command format."
    assert turns[-1]["value"] == "Observation: config.cfg now reads mode=on."
    assert "Judging." not in json.dumps(record)  # the DM's thoughts are not shown


def test_conversion_accepts_raw_text_and_merges_dm_turns(record):
    text = f"```json\n{json.dumps(GOOD)}\n```"
    assert to_conversation(json.dumps(SCRIPT), text, "fs-0001") == record
    dm_twice = GOOD[:1] + [dict(GOOD[0], Observation="A bell rings.")] + GOOD[1:]
    turns = to_conversation(SCRIPT, dm_twice, "x")["conversations"]
    assert turns[0]["value"].endswith("Observation: You are in /home/user. You see: documents/.\n\n"
                                      "Observation: A bell rings.")
    assert [t["from"] for t in turns] == [t["from"] for t in record["conversations"]]


@pytest.mark.parametrize("script, turns, field", [
    (SCRIPT, GOOD[:3] + [{"role": "Player", "Thought": "x"}] + GOOD[4:], "trajectory[3].Action"),
    (SCRIPT, GOOD[:3] + [{"role": "player"}] + GOOD[4:], "trajectory[3].role"),
    (SCRIPT, "not json", "trajectory is not a JSON list"),
    ("[1, 2]", GOOD, "script is not a JSON object"),
])
def test_conversion_errors_name_record_and_field(script, turns, field):
    with pytest.raises(RecordError, match="record 'bad-1'") as error:
        to_conversation(script, turns, "bad-1")
    assert field in str(error.value)


def test_strip_errors(record):
    stripped = strip_errors(record)
    turns = stripped["conversations"]
    assert stripped["id"] == record["id"]
    assert [t["from"] for t in turns] == ["human", "gpt"] * 3 + ["human"]
    assert all(t["loss"] for t in turns if t["from"] == "gpt")
    assert [t["value"].split("Action: ")[1] for t in turns if t["from"] == "gpt"] == \
        ["ls", "cd documents", "edit config.cfg set mode=on"]
    assert "Invalid command format" not in json.dumps(stripped)
    assert record["conversations"][1]["loss"] is False  # the input is not modified
    # consecutive errors go together with their feedback
    errors = [("ls -l", "Error.", "parameter"), ("ls -a", "Error.", "parameter")]
    two = to_conversation(SCRIPT, trajectory(*errors, *STEPS[1:]), "two")
    assert [t["value"] for t in strip_errors(two)["conversations"][1:3]] == \
        ["Thought: I will try ls.\nAction: ls", "Observation: documents/"]
    assert strip_errors(strip_errors(record)) == stripped


def test_a_converted_record_renders_with_the_loss_mask(record):
    tok = tiny_tokenizer()
    rendered = render(record, tok)
    supervised = tok.decode([t for t, label in zip(rendered.input_ids, rendered.labels, strict=True)
                             if label != IGNORE_INDEX])
    trained = [t["value"] for t in record["conversations"] if t["from"] == "gpt" and t["loss"]]
    assert supervised == "".join(f"{text}<|im_end|>" for text in trained)
    assert rendered.n_supervised_turns == 3
    assert render(strip_errors(record), tok).n_supervised_turns == 3
    assert render(record, tok, policy="no_refinement_loss").n_supervised_turns == 1


def test_verified_then_converted_pipeline():
    """Verify, then convert: every accepted trajectory becomes a record with erroneous turns masked."""
    v = verify(SCRIPT, GOOD)
    assert v.ok
    rec = to_conversation(SCRIPT, GOOD, "x")
    assert sum(not t["loss"] for t in rec["conversations"] if t["from"] == "gpt") == v.error_turns


# ------------------------------------------------------------------------------------------ loaders

RELEASED = [
    {"id": "agentrefine-0", "conversations": [
        {"from": "human", "loss": False, "value": "Environment: a café ☕ with \"quotes\" and\ttabs\n"},
        {"from": "gpt", "loss": False, "value": "Thought: hmm\nAction: order tea"},
        {"from": "human", "loss": False, "value": "Observation: Error: Invalid command format."},
        {"from": "gpt", "loss": True, "value": "Thought: fix\nAction: order coffee"},
        {"from": "human", "loss": False, "value": ""}]},
    {"id": "agentrefine-1", "conversations": [
        {"from": "system", "loss": False, "value": "You are an agent."},
        {"from": "human", "loss": False, "value": "Go."},
        {"from": "gpt", "loss": True, "value": "Thought: ok\nAction: go"}]},
]


def test_released_schema_round_trip_is_lossless(tmp_path, record):
    records = copy.deepcopy(RELEASED) + [record]
    assert [normalize_record(r) for r in records] == records
    path = tmp_path / "released.jsonl"
    write_jsonl(records, path)
    again = load_jsonl(path)
    assert again == records
    write_jsonl(again, tmp_path / "again.jsonl")
    assert (tmp_path / "again.jsonl").read_bytes() == path.read_bytes()
    assert [list(r) for r in again] == [["id", "conversations"]] * 3
    assert all(list(t) == ["from", "loss", "value"] for r in again for t in r["conversations"])


def test_round_trip_through_a_datasets_dataset(record):
    datasets = pytest.importorskip("datasets")
    records = copy.deepcopy(RELEASED) + [record]
    dataset = datasets.Dataset.from_list(records)
    assert [normalize_record(row) for row in dataset] == records


def test_agentinstruct_layout():
    rec = {"id": "os_0", "conversations": [
        {"from": "human", "value": "You are an OS agent."},
        {"from": "gpt", "loss": False, "value": "OK."},
        {"from": "human", "value": "List files."},
        {"from": "gpt", "value": "Think: ls\n\nAct: bash"}]}
    out = normalize_record(rec)
    assert [(t["from"], t["loss"]) for t in out["conversations"]] == \
        [("human", False), ("gpt", False), ("human", False), ("gpt", True)]


def test_openai_messages():
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi "},
                                             {"type": "text", "text": "there"}]},
                {"role": "assistant", "content": "Thought: a\nAction: b", "weight": 0},
                {"role": "user", "content": "Observation: no"},
                {"role": "assistant", "content": "Thought: c\nAction: d"}]
    out = normalize_record(messages, id="chat-7")
    assert out == {"id": "chat-7", "conversations": [
        {"from": "system", "loss": False, "value": "Be brief."},
        {"from": "human", "loss": False, "value": "Hi there"},
        {"from": "gpt", "loss": False, "value": "Thought: a\nAction: b"},
        {"from": "human", "loss": False, "value": "Observation: no"},
        {"from": "gpt", "loss": True, "value": "Thought: c\nAction: d"}]}
    assert normalize_record({"id": "chat-7", "messages": messages}) == out
    assert normalize_record(to_openai(out)) == out
    for rec in RELEASED:
        assert normalize_record(to_openai(rec)) == rec


def test_agent_flan_layout():
    rec = {"id": "flan-1", "conversation": [{"role": "user", "content": "Go.", "loss": False},
                                           {"role": "assistant", "content": "Action: go", "loss": True}]}
    assert normalize_record(rec)["conversations"][1] == {"from": "gpt", "loss": True, "value": "Action: go"}


@pytest.mark.parametrize("obj, message", [
    ({"conversations": RELEASED[0]["conversations"]}, "record None: field 'id'"),
    ({"id": "r1"}, "record 'r1' has none of the fields"),
    ({"id": "r1", "conversations": []}, "record 'r1': field 'conversations' must be a non-empty list"),
    ({"id": "r1", "conversations": [{"from": "bot", "value": "x"}]}, "conversations[0].from is 'bot'"),
    ({"id": "r1", "conversations": [{"from": "gpt", "value": 3}]}, "conversations[0].value must be a string"),
    ({"id": "r1", "conversations": [{"from": "gpt", "value": "x", "loss": "yes"}]},
     "conversations[0].loss must be true or false"),
    ({"id": "r1", "conversations": [{"from": "human", "value": "x"}, {"from": "system", "value": "s"}]},
     "conversations[1].from is 'system'"),
    ({"id": "r1", "conversations": [{"from": "human", "value": "x"}]}, "has no assistant turn"),
    ({"id": "r1", "messages": [{"role": "tool", "content": "x"}]}, "messages[0].role is 'tool'"),
    ({"id": "r1", "messages": [{"role": "assistant", "content": "x", "weight": 2}]},
     "messages[0].weight must be 0 or 1"),
    ("text", "must be an object or a list of messages"),
])
def test_malformed_records_raise_one_clear_error(obj, message):
    with pytest.raises(RecordError) as error:
        normalize_record(obj)
    assert message in str(error.value)


def test_load_jsonl_names_the_line(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [json.dumps(RELEASED[0]), "", json.dumps([{"role": "user", "content": "hi"},
                                                       {"role": "assistant", "content": "yo"}])]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    records = load_jsonl(path)
    assert [r["id"] for r in records] == ["agentrefine-0", "mixed-3"]
    path.write_text(lines[0] + "\n" + '{"id": "r9", "conversations": [{"from": "gpt"}]}\n', encoding="utf-8")
    with pytest.raises(RecordError, match=r"mixed.jsonl:2: record 'r9': conversations\[0\].value"):
        load_jsonl(path)
    path.write_text("{oops\n", encoding="utf-8")
    with pytest.raises(RecordError, match=r"mixed.jsonl:1: not valid JSON"):
        load_jsonl(path)

