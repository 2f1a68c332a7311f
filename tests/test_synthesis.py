"""Grounded-teacher synthesis runs: verified, replayable, resumable after a kill; expert-only data."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from refinelib import jsonl, runs
from refinelib.data import chat
from refinelib.eval import agent, expert
from refinelib.schema import FLAGS
from refinelib.synth.synthesis import SAMPLES_FILE, SynthesisConfig, digest, load_run, summary, synthesize
from refinelib.synth.teacher import replay_check
from refinelib.synth.verify import verify


def test_grounded_run_accepts_verified_replayable_trajectories(tmp_path):
    run = synthesize(SynthesisConfig(n=12, seed=3), tmp_path, progress=False)
    assert len(run.accepted) == 12
    for sample in run.accepted:
        assert verify(sample.script, sample.trajectory).ok
        assert replay_check(sample.script, sample.trajectory)[0]  # same observations and flags in the engine
        errors = sample.error_kinds()
        assert len(errors) >= 2 and set(errors) <= set(FLAGS)
        record = sample.record()
        untrained = [t for t in record["conversations"] if t["from"] == "gpt" and not t["loss"]]
        assert len(untrained) == len(errors)  # exactly the erroneous turns are masked
    records, meta = run.records()
    assert [r["id"] for r in records] == [s.id for s in run.accepted]
    assert meta[records[0]["id"]]["templates"]
    assert summary(run)["accepted"] == 12


def test_rerun_makes_nothing_new_and_n_can_grow(tmp_path):
    first = synthesize(SynthesisConfig(n=5), tmp_path, progress=False)
    lines = (tmp_path / SAMPLES_FILE).read_text().splitlines()
    again = synthesize(SynthesisConfig(n=5), tmp_path, progress=False)
    assert (tmp_path / SAMPLES_FILE).read_text().splitlines() == lines
    assert digest(again.records()[0]) == digest(first.records()[0])
    more = synthesize(SynthesisConfig(n=8), tmp_path, progress=False)
    assert [s.id for s in more.accepted][:5] == [s.id for s in first.accepted]
    assert len(more.accepted) == 8
    assert len(load_run(tmp_path).accepted) == 8


def test_changed_settings_in_the_same_folder_is_one_clear_error(tmp_path):
    synthesize(SynthesisConfig(n=2), tmp_path, progress=False)
    with pytest.raises(ValueError, match="error_rate"):
        synthesize(SynthesisConfig(n=2, error_rate=0.5), tmp_path, progress=False)


@pytest.mark.parametrize("field,value", [("teacher", "gpt"), ("n", 0), ("error_rate", 1.5)])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SynthesisConfig(**{field: value})


SCRIPT = textwrap.dedent("""
    import sys
    from refinelib.synth.synthesis import SynthesisConfig, synthesize
    synthesize(SynthesisConfig(n=int(sys.argv[2]), seed=1), sys.argv[1], progress=False)
""")


def test_killed_run_resumes_to_the_uninterrupted_dataset(tmp_path):
    n = 400
    reference = synthesize(SynthesisConfig(n=n, seed=1), tmp_path / "whole", progress=False).records()[0]

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(out), str(n)], env=os.environ.copy())
    deadline = time.time() + 120
    while time.time() < deadline and len(jsonl.read(out / SAMPLES_FILE)[0]) < 20:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(jsonl.read(out / SAMPLES_FILE)[0])
    assert 20 <= done < n, "the kill must land midway"
    with open(out / SAMPLES_FILE, "a") as f:  # a line cut by the kill
        f.write('{"index": 999, "id": "grounded-s1-0')

    resumed = synthesize(SynthesisConfig(n=n, seed=1), out, progress=False)
    assert digest(resumed.records()[0]) == digest(reference)
    indices = [o["index"] for o in jsonl.read(out / SAMPLES_FILE)[0]]
    assert len(indices) == len(set(indices))  # nothing made twice
    assert resumed.skipped_lines == 1


def test_expert_data_is_the_agents_own_chat_with_every_turn_trained(tmp_path):
    log = tmp_path / "expert.jsonl"
    records, meta = expert.expert_data(4, log, progress=False)
    assert len(records) == 4 and len({r["id"] for r in records}) == 4
    tasks = {m["theme"] for m in meta.values()}
    assert len(tasks) == 4  # round-robin over the held-in task types
    for r in records:
        assert chat.normalize_record(r) == r
        convo = r["conversations"]
        assert convo[0]["from"] == "system" and "Available actions" in convo[0]["value"]
        gpt = [t for t in convo if t["from"] == "gpt"]
        assert gpt and all(t["loss"] for t in gpt)
        assert all(agent.parse(t["value"]).action for t in gpt)
        assert convo[-1]["from"] == "gpt"
    lines = log.read_text().splitlines()
    expert.expert_data(4, log, progress=False)  # resumable: nothing re-played
    assert log.read_text().splitlines() == lines
    assert json.loads(lines[0])["policy"] == "expert"


def test_the_expert_searches_for_the_object_instead_of_walking_to_where_the_planner_knows_it_is(tmp_path):
    """Before it holds the task's object the expert acts only on what the agent has seen: receptacles in
    SEARCH_ORDER, opening the closed ones, and it takes the object at the first place it is seen."""
    records, _ = expert.expert_data(8, tmp_path / "expert.jsonl", progress=False)
    rank = {kind: i for i, kind in enumerate(expert.SEARCH_ORDER)}
    searched = 0
    for r in records:
        turns = r["conversations"][1:]  # the goal and first observation, then gpt / human in turn
        actions = [agent.parse(t["value"]).action for t in turns[1::2]]
        take = next(i for i, a in enumerate(actions) if a.startswith("take "))
        kind = actions[take].split()[1]
        # no earlier observation showed an object of that type: it is taken where it is first seen
        assert not any(re.search(rf"\b{kind} \d", t["value"]) for t in turns[0:2 * take:2]), r["id"]
        assert re.search(rf"\b{kind} \d", turns[2 * take]["value"])
        visits = [a.removeprefix("go to ") for a in actions[:take] if a.startswith("go to ")]
        kinds = [rank.get(v.rsplit(" ", 1)[0], len(rank)) for v in visits]
        assert kinds == sorted(kinds), visits  # likely places first, never a jump to the hidden one
        searched += len(visits) > 1
    assert searched  # in some games the object was not at the first place looked at


def test_the_planner_expert_walks_straight_to_the_object(tmp_path):
    from refinelib.eval.evaluate import run

    searching, planner = (run(expert.ExpertPolicy(search=s), [expert.training_suite(4)], progress_bar=False)
                          for s in (True, False))
    assert all(e.success for e in planner)
    assert sum(len(e.turns) for e in planner) < sum(len(e.turns) for e in searching)


def test_expert_training_games_never_use_evaluation_seeds():
    suite = expert.training_suite(40)
    assert max(i.seed for i in suite.instances) < 100000
    with pytest.raises(ValueError, match="below"):
        expert.training_suite(10, first_seed=99995)


def test_samples_file_round_trips(tmp_path):
    run = synthesize(SynthesisConfig(n=3), tmp_path, progress=False)
    back = load_run(Path(tmp_path))
    assert [s.id for s in back.samples] == [s.id for s in run.samples]
    assert back.samples[0].trajectory == run.samples[0].trajectory


def test_samples_made_by_other_code_or_prompts_are_set_aside_and_made_again(tmp_path):
    first = synthesize(SynthesisConfig(n=3), tmp_path, progress=False)
    config_file = tmp_path / "config.json"
    saved = json.loads(config_file.read_text())
    assert saved["code"] == runs.code_version("refinelib.synth.teacher", "refinelib.synth.themes",
                                              "refinelib.synth.world", "refinelib.synth.verify")
    assert saved["prompts"] == {}  # the grounded teacher uses no prompt; an LLM teacher records its own
    assert set(SynthesisConfig(teacher="openai").identity({})["prompts"]) == {
        "synth_script", "synth_trajectory", "synth_continue"}
    config_file.write_text(json.dumps({**saved, "code": "older-code"}))  # as if teacher.py had changed
    with pytest.warns(runs.StaleRunWarning, match="code"):
        again = synthesize(SynthesisConfig(n=3), tmp_path, progress=False)
    assert (tmp_path / "samples.stale-1.jsonl").exists()
    assert [s.record() for s in again.accepted] == [s.record() for s in first.accepted]
    assert json.loads(config_file.read_text())["code"] == saved["code"]


def test_a_second_writer_of_the_same_folder_is_refused_naming_the_holder(tmp_path):
    with runs.RunLock(tmp_path), pytest.raises(runs.RunLockedError, match=f"pid {os.getpid()}"):
        with ThreadPoolExecutor(1) as pool:  # another thread, as a second run would be
            pool.submit(synthesize, SynthesisConfig(n=1), tmp_path, progress=False).result()
    assert not (tmp_path / SAMPLES_FILE).exists()
