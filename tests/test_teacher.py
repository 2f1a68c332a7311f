"""The grounded teacher: contract format, error->refinement episodes, flags that replay in the engine."""

import copy
import json
import os
import re
import subprocess
import sys
from collections import Counter

import pytest

from refinelib.schema import FLAGS
from refinelib.synth.teacher import grounded_trajectory, replay_check, replay_record
from refinelib.synth.themes import generate_script
from refinelib.synth.world import GOAL_DONE, World

PLAYER_KEYS = {"turn", "role", "Thought", "Action"}
DM_KEYS = {"turn", "role", "Thought", "Observation", *FLAGS}


@pytest.fixture(scope="module")
def cases():
    scripts = [generate_script(seed) for seed in range(60)]
    return [(s, grounded_trajectory(s, seed)) for seed, s in enumerate(scripts)]


def rule_check(script, action):
    """The contract's parameter rule, written independently of the engine."""
    for template, spec in script["Available Actions"].items():
        m = re.fullmatch(spec["verification code"], action)
        slots = re.findall(r"\{(\w+)\}", template)
        fold = lambda v: " ".join(v.split()).casefold()  # noqa: E731
        if m and all(fold(v) in map(fold, spec["parameters"][s])
                     for s, v in zip(slots, m.groups(), strict=True)):
            return True
    return False


def episodes(trajectory):
    """Count error->refinement episodes with the contract's definitions."""
    count, pending = 0, False
    for i, turn in enumerate(trajectory):
        if turn["role"] != "Player":
            continue
        dm = trajectory[i + 1]
        if any(dm[f] for f in FLAGS):
            pending = True
        elif pending:
            count, pending = count + 1, False
    return count, pending


def test_format_per_contract(cases):
    for _, trajectory in cases:
        json.dumps(trajectory)
        assert trajectory[0]["role"] == "DM" and not any(trajectory[0][f] for f in FLAGS)
        for i, turn in enumerate(trajectory):
            assert turn["turn"] == i
            assert turn["role"] == ("DM" if i % 2 == 0 else "Player")
            assert set(turn) == (DM_KEYS if turn["role"] == "DM" else PLAYER_KEYS)
            assert all(isinstance(turn[k], str) and turn[k] for k in turn if k not in ("turn", *FLAGS))
            if turn["role"] == "DM":
                assert all(isinstance(turn[f], bool) for f in FLAGS) and sum(turn[f] for f in FLAGS) <= 1
        assert trajectory[-1]["role"] == "DM" and trajectory[-1]["Observation"].endswith(GOAL_DONE)


def test_error_refinement_episodes(cases):
    kinds = Counter()
    for _, trajectory in cases:
        count, dangling = episodes(trajectory)
        assert count >= 2 and not dangling
        kinds.update(f for t in trajectory if t["role"] == "DM" for f in FLAGS if t[f])
    assert all(kinds[k] >= 10 for k in FLAGS), kinds


def test_flags_match_engine_and_rule_on_replay(cases):
    for script, trajectory in cases:
        world = World.from_script(json.loads(json.dumps(script)))
        for player, dm in zip(trajectory[1::2], trajectory[2::2], strict=True):
            obs, flags = world.step(player["Action"])
            assert obs == dm["Observation"] and flags == {f: dm[f] for f in FLAGS}
            assert dm["parameter_error"] == (not rule_check(script, player["Action"]))
        assert world.goal_reached()


def test_refinement_thought_mentions_the_feedback(cases):
    for _, trajectory in cases:
        for i in range(1, len(trajectory) - 2, 2):
            if any(trajectory[i + 1][f] for f in FLAGS) and not any(trajectory[i + 3][f] for f in FLAGS):
                refine = trajectory[i + 2]["Thought"]
                assert trajectory[i + 2]["Action"] in refine
                assert trajectory[i + 1]["Observation"] in refine or trajectory[i]["Action"] in refine


def test_error_rate_and_min_errors():
    script = generate_script(3)
    plan = script["Engine"]["plan"]
    assert episodes(grounded_trajectory(script, 0, error_rate=0.0))[0] == 2
    assert episodes(grounded_trajectory(script, 0, error_rate=1.0, min_errors=0))[0] == len(plan)
    with pytest.raises(ValueError):
        grounded_trajectory(script, 0, min_errors=len(plan) + 1)


def test_deterministic_across_processes():
    script = generate_script(5)
    assert grounded_trajectory(script, 1) == grounded_trajectory(script, 1)
    assert grounded_trajectory(script, 1) != grounded_trajectory(script, 2)
    code = ("import json, hashlib; from refinelib.synth.themes import generate_script as g; "
            "from refinelib.synth.teacher import grounded_trajectory as t; "
            "print(hashlib.sha256(json.dumps([t(g(s), s) for s in range(10)]).encode()).hexdigest())")
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": h}).stdout for h in ("1", "2")}
    assert len(digests) == 1


def test_verifier_accepts_grounded_trajectories(cases):
    verify = pytest.importorskip("refinelib.synth.verify")
    for script, trajectory in cases:
        verdict = verify.verify(script, trajectory, goal_check=replay_check)
        assert verdict.ok and verdict.error_episodes >= 2, verdict
    script, trajectory = cases[0]
    tampered = [dict(t) for t in trajectory]
    tampered[-1]["Observation"] = "Nothing happens."
    assert verify.verify(script, tampered, goal_check=replay_check).reason == "goal_not_reached"


def test_replay_record_checks_the_converted_record_not_the_teacher():
    from refinelib.synth.conversation import to_conversation

    script = generate_script(11)
    record = to_conversation(script, grounded_trajectory(script, seed=11), "r11")
    assert replay_record(script, record) == (True, "replayed in the engine")
    gpt = [i for i, t in enumerate(record["conversations"]) if t["from"] == "gpt"]
    erroneous = [i for i in gpt if not record["conversations"][i]["loss"]]
    assert erroneous, "the grounded teacher makes mistakes"
    unmasked = copy.deepcopy(record)  # a conversion that forgot to mask an erroneous turn
    unmasked["conversations"][erroneous[0]]["loss"] = True
    assert replay_record(script, unmasked)[0] is False
    wrong_obs = copy.deepcopy(record)  # an observation lost or altered on the way to the record
    wrong_obs["conversations"][gpt[0] + 1]["value"] = "Observation: nothing happens."
    ok, why = replay_record(script, wrong_obs)
    assert not ok and "the engine" in why
