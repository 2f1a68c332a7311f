"""Tuning datasets: seeded stable split, lossless save/load round trip, HF DatasetDict, card statistics."""

import hashlib
import json
import re

import pytest
import yaml
from datasets import load_from_disk

from refinelib.data import chat, dataset
from refinelib.schema import RecordError


def turn(role, loss, value):
    return {"from": role, "loss": loss, "value": value}


def released(n, prefix="r"):
    """n records in the released schema, with a system turn, unicode and newlines in the values."""
    return [{"id": f"{prefix}{i:03d}", "conversations": [
        turn("system", False, "You are a careful agent."),
        turn("human", False, f"Goal: put the mug {i} in the café’s sink.\nObservation: a kitchen"),
        turn("gpt", i % 2 == 1, "Thought: go there.\nAction: go to sink 1"),
        turn("human", False, "Observation: Error: unknown place." if i % 2 == 0 else "Observation: ok"),
        turn("gpt", True, "Thought: fix it.\nAction: go to countertop 1")]} for i in range(n)]


def write_lines(path, objects):
    # exactly the bytes chat.write_jsonl writes: json.dumps defaults, ensure_ascii=False, one per line
    path.write_bytes("".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objects).encode())
    return path


# ------------------------------------------------------------------------------------------- split


def test_split_is_seeded_and_stable_when_records_are_added():
    records = released(200)
    train, validation = dataset.split(records, 0.2, seed=1)
    assert sorted(r["id"] for r in train + validation) == [r["id"] for r in records]
    assert 20 <= len(validation) <= 60  # ~40 expected; a hash threshold, not an exact count
    assert [r["id"] for r in train] == sorted(r["id"] for r in train)  # input order kept
    assert dataset.split(records, 0.2, seed=1) == (train, validation)
    assert dataset.split(records, 0.2, seed=2)[1] != validation
    grown_train, grown_validation = dataset.split(records + released(100, prefix="new"), 0.2, seed=1)
    old_ids = {r["id"] for r in records}
    assert [r for r in grown_validation if r["id"] in old_ids] == validation
    assert [r for r in grown_train if r["id"] in old_ids] == train


def test_split_keeps_both_sides_non_empty_and_checks_input():
    two = released(2)
    assert [len(s) for s in dataset.split(two, 0.001, seed=0)] == [1, 1]
    assert [len(s) for s in dataset.split(two, 0.999, seed=0)] == [1, 1]
    assert dataset.split(two, 0.0, seed=0) == (two, [])
    assert dataset.split(two[:1], 0.5, seed=0)[0] == two[:1]
    with pytest.raises(ValueError, match="val_fraction must be in"):
        dataset.split(two, 1.0, seed=0)
    with pytest.raises(RecordError, match="duplicate record id 'r001'"):
        dataset.split([*two, two[1]], 0.1, seed=0)


# ---------------------------------------------------------------------------------- save and load


def test_released_jsonl_round_trip_is_byte_for_byte(tmp_path):
    source = write_lines(tmp_path / "released.jsonl", released(30))
    records = chat.load_jsonl(source)
    # all in train: the file comes back identical
    dataset.save(records, tmp_path / "all", val_fraction=0.0, name="all")
    chat.write_jsonl(dataset.load(tmp_path / "all"), tmp_path / "back.jsonl")
    assert (tmp_path / "back.jsonl").read_bytes() == source.read_bytes()
    assert (tmp_path / "all" / "train.jsonl").read_bytes() == source.read_bytes()
    # split: each split file holds exactly the source lines of its ids, in source order
    info = dataset.save(records, tmp_path / "split", val_fraction=0.3, seed=4, name="split")
    lines = source.read_bytes().splitlines(keepends=True)
    by_id = {json.loads(line)["id"]: line for line in lines}
    joined = b""
    for name in dataset.SPLITS:
        loaded = dataset.load(tmp_path / "split", name)
        chat.write_jsonl(loaded, tmp_path / f"{name}.jsonl")
        written = (tmp_path / f"{name}.jsonl").read_bytes()
        assert written == b"".join(by_id[r["id"]] for r in loaded) == (tmp_path / "split" / f"{name}.jsonl"
                                                                       ).read_bytes()
        joined += written
    assert sorted(joined.splitlines()) == sorted(source.read_bytes().splitlines())
    assert info.counts == {"train": len(dataset.load(tmp_path / "split")),
                           "validation": len(dataset.load(tmp_path / "split", "validation"))}
    assert min(info.counts.values()) > 0
    assert info.fingerprint == hashlib.sha256(joined).hexdigest()


def test_agentinstruct_and_openai_inputs_load_and_save(tmp_path):
    agentinstruct = write_lines(tmp_path / "agentinstruct.jsonl", [
        {"id": "os_0", "conversations": [{"from": "human", "value": "List files."},
                                         {"from": "gpt", "value": "Act: ls"}]},
        {"id": "os_1", "conversations": [{"from": "human", "value": "Count lines."},
                                         {"from": "gpt", "value": "Act: wc -l", "loss": False},
                                         {"from": "human", "value": "Output: 3"},
                                         {"from": "gpt", "value": "Act: answer(3)"}]}])
    openai = write_lines(tmp_path / "openai.jsonl", [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Thought: a\nAction: b", "weight": 0},
                      {"role": "user", "content": "Observation: no"},
                      {"role": "assistant", "content": [{"type": "text", "text": "Action: c"}]}]}])
    records = chat.load_jsonl(agentinstruct) + chat.load_jsonl(openai)
    dataset.save(records, tmp_path / "mixed", val_fraction=0.0, name="mixed")
    back = dataset.load(tmp_path / "mixed")
    assert back == records
    assert [r["id"] for r in back] == ["os_0", "os_1", "openai-1"]
    assert [[t["loss"] for t in r["conversations"] if t["from"] == "gpt"] for r in back] == [
        [True], [False, True], [False, True]]
    assert back[2]["conversations"][0] == turn("system", False, "Be brief.")
    # save normalises raw layouts itself, too
    raw = json.loads(openai.read_text())
    dataset.save([{"id": "x", **raw}], tmp_path / "raw", val_fraction=0.0, name="raw")
    assert dataset.load(tmp_path / "raw")[0]["conversations"] == records[2]["conversations"]


def test_hf_dataset_loads_back_with_the_same_records_and_metadata(tmp_path):
    records = released(12)
    meta = {r["id"]: {"theme": f"theme{i % 3}", "source": "grounded",
                      "error_kinds": ["parameter_error"] * (i % 2), "templates": ["go to {place}", "look"],
                      "attempts": i + 1} for i, r in enumerate(records)}
    meta.pop("r005")  # a record without metadata gets empty columns
    dataset.save(records, tmp_path / "d", val_fraction=0.25, seed=0, meta=meta, name="d")
    hf = load_from_disk(str(tmp_path / "d" / "hf"))
    assert dataset.load_hf(tmp_path / "d")["train"].to_list() == hf["train"].to_list()
    for name in dataset.SPLITS:
        rows, expected = hf[name].to_list(), dataset.load(tmp_path / "d", name)
        assert [{"id": r["id"], "conversations": r["conversations"]} for r in rows] == expected
        for row in rows:
            want = meta.get(row["id"], {})
            assert {k: row[k] for k in ("theme", "source", "error_kinds", "templates", "attempts")} == {
                k: want.get(k) for k in ("theme", "source", "error_kinds", "templates", "attempts")}
    assert hf.num_rows == dataset.info(tmp_path / "d").counts
    features = hf["train"].features
    assert features["conversations"].feature["loss"].dtype == "bool"
    assert features["error_kinds"].feature.dtype == "string" and features["attempts"].dtype == "int64"


def test_mixed_type_metadata_is_kept_not_an_error(tmp_path):
    records = released(3)
    meta = {"r000": {"note": 3}, "r001": {"note": "three"}, "r002": {"note": {"n": 3}}}
    dataset.save(records, tmp_path / "d", val_fraction=0.0, meta=meta, name="d")
    hf = dataset.load_hf(tmp_path / "d")  # also: an empty validation split loads back
    assert [row["note"] for row in hf["train"]] == [3, "three", {"n": 3}] and hf["validation"].num_rows == 0


def test_bad_input_gives_one_clear_error(tmp_path):
    records = released(3)
    with pytest.raises(RecordError, match="duplicate record id 'r001'"):
        dataset.save([*records, records[1]], tmp_path / "d", name="d")
    with pytest.raises(RecordError, match=re.escape("record 'r9': conversations[0].from")):
        dataset.save([{"id": "r9", "conversations": [{"from": "robot", "value": "x"}]}], tmp_path / "d",
                     name="d")
    with pytest.raises(ValueError, match="no records"):
        dataset.save([], tmp_path / "d", name="d")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="refusing to replace .*notes"):
        dataset.save(records, tmp_path / "notes", name="d")
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


def test_missing_paths_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset directory not found: .*nowhere"):
        dataset.load(tmp_path / "nowhere")
    dataset.save(released(4), tmp_path / "d", val_fraction=0.0, name="d")
    (tmp_path / "d" / "validation.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=r"dataset file not found: .*d/validation\.jsonl"):
        dataset.load(tmp_path / "d", "validation")
    with pytest.raises(FileNotFoundError, match="dataset directory not found: .*nowhere"):
        dataset.load_hf(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="split must be one of"):
        dataset.load(tmp_path / "d", "test")


def test_a_failed_save_leaves_the_previous_dataset_and_no_temporary_files(tmp_path):
    first = dataset.save(released(6), tmp_path / "d", name="d")
    before = {p.name: p.read_bytes() for p in (tmp_path / "d").iterdir() if p.is_file()}
    with pytest.raises(ValueError, match="meta key 'id' would overwrite"):
        dataset.save(released(9), tmp_path / "d", meta={"r000": {"id": "x"}}, name="d")
    assert {p.name: p.read_bytes() for p in (tmp_path / "d").iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    assert dataset.info(tmp_path / "d").fingerprint == first.fingerprint
    # a successful save replaces the old dataset whole
    second = dataset.save(released(3), tmp_path / "d", val_fraction=0.0, name="d2")
    assert len(dataset.load(tmp_path / "d")) == 3 and second.fingerprint != first.fingerprint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [
        "README.md", "hf", "stats.json", "train.jsonl", "validation.jsonl"]


# --------------------------------------------------------------------------------- card statistics


HAND = [
    {"id": "a", "conversations": [turn("system", False, "s" * 12), turn("human", False, "h" * 12),
                                  turn("gpt", False, "g" * 12), turn("human", False, "h" * 12),
                                  turn("gpt", True, "g" * 12)]},
    {"id": "b", "conversations": [turn("human", False, "h" * 12), turn("gpt", True, "g" * 12)]},
    {"id": "c", "conversations": [turn("human", False, "h" * 12), turn("gpt", False, "g" * 12),
                                  turn("human", False, "h" * 12), turn("gpt", False, "g" * 12),
                                  turn("human", False, "h" * 12), turn("gpt", True, "g" * 12)]}]
HAND_META = {"a": {"theme": "kitchen", "error_kinds": ["parameter_error"], "templates": ["go {x}", "look"]},
             "b": {"theme": "lab", "error_kinds": [], "templates": ["look"]},
             "c": {"theme": "kitchen", "error_kinds": ["logic_error", "parameter_error"],
                   "templates": ["open {x}", "go {x}", "take {y}"]}}


def test_stats_on_a_hand_made_set():
    st = dataset.stats(HAND, HAND_META)
    assert st == {
        "records": 3, "turns_mean": pytest.approx(13 / 3), "turns_min": 2, "turns_max": 6,
        "assistant_turns_mean": 2, "assistant_turns_min": 1, "assistant_turns_max": 3,
        "erroneous_turns_mean": 1, "erroneous_turns_min": 0, "erroneous_turns_max": 2,
        "erroneous_turns": 3, "records_with_erroneous_turns": 2,
        "characters": 156, "approx_tokens": 39, "approx_tokens_per_record": 13,
        "errors_per_trajectory_by_kind": {"logic_error": pytest.approx(1 / 3),
                                          "parameter_error": pytest.approx(2 / 3)},
        "themes": {"kitchen": 2, "lab": 1},
        "templates_per_record_mean": 2, "templates_per_record_min": 1, "templates_per_record_max": 3,
        "distinct_templates": 4}
    plain = dataset.stats(HAND)
    assert "themes" not in plain and "distinct_templates" not in plain and plain["erroneous_turns"] == 3
    assert dataset.stats([])["turns_mean"] is None
    only_b = dataset.stats(HAND[1:2], HAND_META)
    table = dataset.stats_table({"all": st, "b": only_b, "none": dataset.stats([])})
    assert list(table.columns) == ["all", "b", "none"]
    assert table.loc["records"].tolist() == [3, 1, 0]
    assert table.loc["themes[kitchen]"].tolist() == [2, 0, None]  # a theme the split lacks counts 0
    assert table.loc["themes[lab]"].tolist() == [1, 1, None]
    assert table.loc["errors_per_trajectory_by_kind[logic_error]", "all"] == pytest.approx(1 / 3)
    assert list(table.index).index("themes[lab]") == list(table.index).index("themes[kitchen]") + 1


def test_card_and_stats_json_show_the_statistics(tmp_path):
    info = dataset.save(HAND, tmp_path / "hand", val_fraction=0.0, meta=HAND_META, name="hand-made",
                        description="Three hand-made trajectories.")
    text = (tmp_path / "hand" / "README.md").read_text()
    _, header, body = text.split("---\n", 2)
    header = yaml.safe_load(header)
    assert header["pretty_name"] == "hand-made" and header["size_categories"] == ["n<1K"]
    assert header["dataset_info"]["splits"] == [{"name": "train", "num_examples": 3},
                                                {"name": "validation", "num_examples": 0}]
    assert [f["path"] for f in header["configs"][0]["data_files"]] == ["train.jsonl", "validation.jsonl"]
    assert "Three hand-made trajectories." in body and info.fingerprint in body
    for row in ("| records | 3 | 0 | 3 |", "| turns_mean | 4.33 |  | 4.33 |", "| turns_max | 6 |  | 6 |",
                "| erroneous_turns | 3 | 0 | 3 |", "| approx_tokens | 39 | 0 | 39 |",
                "| errors_per_trajectory_by_kind[parameter_error] | 0.67 |  | 0.67 |",
                "| themes[kitchen] | 2 |  | 2 |", "| distinct_templates | 4 |  | 4 |"):
        assert row in body.splitlines(), row
    saved = json.loads((tmp_path / "hand" / "stats.json").read_text())
    assert saved["counts"] == {"train": 3, "validation": 0} and saved["splits"]["all"]["characters"] == 156
    assert dataset.info(tmp_path / "hand") == info
