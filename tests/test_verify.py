"""Trajectory verification (method.md §6): Algorithm 1, our extra checks, and verdicts instead of crashes."""

import copy
import json
import random

import pytest

from refinelib.synth.parse import parse_json
from refinelib.synth.verify import (
    EXTRA_REASONS,
    REASONS,
    SCRIPT_REASONS,
    Verdict,
    check_script,
    rule_check,
    verdict_counts,
    verify,
)

# A file-system world like the paper's Fig. 4 example.
SCRIPT = {
    "Environment": {"home": {"user": {"documents": {"info.txt": {"content": "hello"},
                                                    "config.cfg": {"content": "mode=off"}}}},
                    "player": {"location": "/home/user"}},
    "Goal": "Navigate to and edit the config.cfg file to set 'mode=on'.",
    "Completion Conditions": ["config.cfg contains mode=on"],
    "Available Actions": {
        "cd {path}": {"verification code": r"^\s*cd\s+(.*?)\s*$",
                      "parameters": {"path": ["home", "user", "documents", ".."]},
                      "description": "change directory"},
        "ls": {"verification code": r"^\s*ls\s*$", "parameters": {}},
        "cat {file}": {"verification code": r"^\s*cat\s+(.+?)\s*$",
                       "parameters": {"file": ["info.txt", "config.cfg"]}},
        "edit {file} set {setting}": {"verification code": r"^\s*edit\s+(.+?)\s+set\s+(.+?)\s*$",
                                      "parameters": {"file": ["config.cfg"],
                                                     "setting": ["mode=on", "mode=off"]}},
    },
    "Engine": {"goal": [["content", "config.cfg", "mode=on"]]},  # unknown keys are ignored
}

P, L = "parameter", "place"  # shorthand for the flag a DM turn sets


def trajectory(*steps, start="You are in /home/user. You see: documents/."):
    """Turns from (action, observation, flag) steps, after the DM's initial observation."""
    turns = [{"turn": 0, "role": "DM", "Thought": "Start.", "Observation": start,
              "parameter_error": False, "place_error": False, "logic_error": False}]
    for action, observation, flag in steps:
        turns.append({"turn": len(turns), "role": "Player", "Thought": f"I will try {action}.",
                      "Action": action})
        turns.append({"turn": len(turns), "role": "DM", "Thought": "Judging.", "Observation": observation,
                      "parameter_error": flag == P, "place_error": flag == L, "logic_error": flag == "logic"})
    return turns


STEPS = [
    ("ls config.cfg", "Error: Invalid command format.", P),       # 1-2 erroneous (no template matches)
    ("ls", "documents/", None),                                   # 3-4 refinement
    ("cat config.cfg", "No such file here.", L),                  # 5-6 erroneous (place)
    ("cd documents", "You are in /home/user/documents.", None),   # 7-8 refinement
    ("edit config.cfg set mode=on", "config.cfg now reads mode=on.", None),
]
GOOD = trajectory(*STEPS)


def test_good_trajectory_is_accepted():
    v = verify(SCRIPT, GOOD)
    assert v == Verdict(True, "ok", v.detail, verified_prefix=11, error_episodes=2, stage="trajectory",
                        error_turns=2)
    assert verify(SCRIPT, GOOD, strict=False).ok


@pytest.mark.parametrize("wrap", [
    lambda t: t,
    lambda t: f"```json\n{t}\n```",
    lambda t: f"Here is the trajectory you asked for:\n```\n{t}\n```\nLet me know [if] anything is off.",
    lambda t: f"Sure! {t} Hope this helps (see [1]).",
    lambda t: json.dumps({"trajectory": json.loads(t)}),
])
def test_raw_text_is_extracted(wrap):
    text = wrap(json.dumps(GOOD, indent=1))
    assert verify(json.dumps(SCRIPT), text).ok
    assert verify(f"```json\n{json.dumps(SCRIPT)}\n```", text).ok


def test_parse_json_prefers_the_longest_value_of_the_wanted_type():
    assert parse_json("see [1] then [2, 3] then {\"a\": [4, 5, 6]}", list) == ([4, 5, 6], None)
    assert parse_json('x {"a": 1} y {"b": {"c": 2}}', dict) == ({"b": {"c": 2}}, None)
    value, why = parse_json("[1, 2", list)
    assert value is None and "no JSON list" in why
    assert parse_json(b'[1]', list) == ([1], None)
    assert parse_json([1], list) == ([1], None)
    assert parse_json("   ", dict)[1] == "the text is empty"


# ---------------------------------------------------------------------- every reason, one case each


def with_turn(i, **changes):
    turns = copy.deepcopy(GOOD)
    turns[i].update(changes)
    return turns


def without_key(i, key):
    turns = copy.deepcopy(GOOD)
    del turns[i][key]
    return turns


def script_with(**changes):
    script = copy.deepcopy(SCRIPT)
    for key, value in changes.items():
        if value is None:
            del script[key]
        else:
            script[key] = value
    return script


def action(template, code, params):
    actions = copy.deepcopy(SCRIPT["Available Actions"])
    actions[template] = {"verification code": code, "parameters": params}
    return script_with(**{"Available Actions": actions})


def goal_no(script, turns):
    return False, "config.cfg still reads mode=off"


def goal_boom(script, turns):
    raise KeyError("config.cfg")


CASES = {  # reason -> (kwargs of verify, expected verified_prefix)
    "ok": (dict(), 11),
    "json_error": (dict(trajectory='[{"turn": 0, "role": "DM", '), 0),
    "script_not_object": (dict(script=["not", "a", "script"]), 0),
    "script_missing_key": (dict(script=script_with(Goal=None)), 0),
    "script_empty_field": (dict(script=script_with(Goal="  ")), 0),
    "script_bad_action": (dict(script=script_with(**{"Available Actions": {"ls": {"parameters": {}}}})), 0),
    "script_bad_regex": (dict(script=action("rm {file}", r"^rm\s+(.+$", {"file": ["a"]})), 0),
    "script_regex_timeout": (dict(script=action("ls", r"^(?:l|l)*s?$", {}),
                                  trajectory=with_turn(3, Action="l" * 40 + "!")), 0),
    "script_group_mismatch": (dict(script=action("mv {a} {b}", r"^mv\s+(\S+)\s+\S+$",
                                                 {"a": ["x"], "b": ["y"]})), 0),
    "script_bad_parameters": (dict(script=action("rm {file}", r"^rm\s+(.+)$", {"file": []})), 0),
    "script_duplicate_template": (dict(script=action("CAT  {file}", r"^cat (.+)$", {"file": ["x"]})), 0),
    "not_a_list": (dict(trajectory={"turns": 3}), 0),
    "empty_trajectory": (dict(trajectory="[]"), 0),
    "wrong_keys": (dict(trajectory=with_turn(3, Observation="?")), 3),
    "wrong_types": (dict(trajectory=with_turn(4, place_error="false")), 3),
    "dm_turn_missing": (dict(trajectory=GOOD[:-1]), 9),
    "dm_flag_mismatch": (dict(trajectory=with_turn(2, parameter_error=False, place_error=True)), 1),
    "too_few_refinements": (dict(trajectory=trajectory(("ls", "documents/", None))), 0),
    "role_order": (dict(trajectory=GOOD[1:]), 0),
    "turn_numbering": (dict(trajectory=with_turn(5, turn=6)), 5),
    "error_not_refined": (dict(trajectory=trajectory(*STEPS[:-1], ("edit config.cfg set on", "Error.", P))),
                          11),
    "too_few_episodes": (dict(trajectory=trajectory(("ls -l", "Error.", P), ("ls -a", "Error.", P),
                                                    ("ls", "documents/", None))), 0),
    "goal_not_reached": (dict(goal_check=goal_no), 11),
    "goal_check_error": (dict(goal_check=goal_boom), 11),
}


@pytest.mark.parametrize("reason", sorted(CASES))
def test_every_reason_is_reachable(reason):
    kwargs, prefix = CASES[reason]
    kwargs = {"script": SCRIPT, "trajectory": GOOD, **kwargs}
    v = verify(**kwargs)
    assert (v.ok, v.reason, v.verified_prefix) == (reason == "ok", reason, prefix), v
    assert v.stage == ("script" if reason in SCRIPT_REASONS else "trajectory")
    assert reason in REASONS and v.detail


def test_the_table_covers_every_reason():
    assert set(CASES) == set(REASONS)


def test_details_name_the_turn_and_field():
    v = verify(SCRIPT, with_turn(2, parameter_error=False, place_error=True))
    assert "turn 1" in v.detail and "'ls config.cfg'" in v.detail and "turn 2" in v.detail
    assert "parameter_error=false" in v.detail
    v = verify(SCRIPT, with_turn(4, place_error="false"))
    assert "turn 4" in v.detail and "'place_error'" in v.detail
    v = verify(SCRIPT, without_key(7, "Thought"))
    assert v.reason == "wrong_keys" and "turn 7" in v.detail and "Thought" in v.detail
    assert verify(SCRIPT, GOOD, goal_check=goal_no).detail.endswith("mode=off")
    assert "KeyError" in verify(SCRIPT, GOOD, goal_check=goal_boom).detail


@pytest.mark.parametrize("turns, reason", [
    (with_turn(3, role="player"), "wrong_keys"),             # role names are exact
    (with_turn(3, Extra=1), "wrong_keys"),                   # exactly the role's keys
    (GOOD[:3] + ["not a turn"] + GOOD[4:], "wrong_keys"),
    (with_turn(3, Action=None), "wrong_types"),
    (with_turn(3, turn="3"), "wrong_types"),
    (with_turn(3, turn=True), "wrong_types"),
])
def test_schema_failures(turns, reason):
    assert verify(SCRIPT, turns).reason == reason


def test_duplicate_keys_in_raw_json_are_caught():
    text = json.dumps(GOOD)
    text = text.replace('"Action": "ls"', '"Action": "ls", "Action": "ls"', 1)
    v = verify(SCRIPT, text)
    assert (v.reason, v.verified_prefix) == ("wrong_keys", 3) and "twice" in v.detail
    raw = json.dumps(SCRIPT).replace('"ls": {', '"cat {file}": {"verification code": "^cat (.+)$", '
                                     '"parameters": {"file": ["x"]}}, "ls": {', 1)
    assert check_script(raw).reason == "script_duplicate_template"


def test_dm_flag_mismatch_both_ways():
    # a valid action the DM calls a parameter error
    v = verify(SCRIPT, with_turn(4, parameter_error=True))
    assert (v.reason, v.verified_prefix) == ("dm_flag_mismatch", 3) and "valid" in v.detail
    # a value outside the parameter list the DM lets through
    turns = copy.deepcopy(GOOD)
    turns[3]["Action"] = "cat secrets.txt"
    v = verify(SCRIPT, turns)
    assert (v.reason, v.verified_prefix) == ("dm_flag_mismatch", 3)
    assert "outside its parameter list" in v.detail
    # place/logic errors are the DM's call, not the rule check's
    assert verify(SCRIPT, with_turn(8, logic_error=True, Observation="x"), strict=False).ok


def test_too_few_errors_restart_from_zero():
    one = trajectory(("ls config.cfg", "Error.", P), ("ls", "documents/", None))
    v = verify(SCRIPT, one)
    assert (v.reason, v.verified_prefix, v.error_turns, v.error_episodes) == ("too_few_refinements", 0, 1, 1)
    assert verify(SCRIPT, one, min_error_episodes=1).ok
    assert verify(SCRIPT, GOOD, min_error_episodes=3).reason == "too_few_refinements"


def test_strict_checks_do_not_tighten_the_paper_filter():
    """Every extra reason is rejected under strict and accepted by the paper's checks alone."""
    for reason in sorted(EXTRA_REASONS):
        kwargs, _ = CASES[reason]
        strict = verify(SCRIPT, kwargs["trajectory"])
        paper = verify(SCRIPT, kwargs["trajectory"], strict=False)
        assert strict.reason == reason
        assert paper.ok, (reason, paper)
    # DM turns in a row, or a first Player turn: the paper does not check the order
    dm_twice = GOOD[:1] + [dict(GOOD[0], turn=1)] + [dict(t, turn=t["turn"] + 1) for t in GOOD[1:]]
    assert verify(SCRIPT, dm_twice).reason == "role_order"
    assert verify(SCRIPT, dm_twice, strict=False).ok
    # a Player turn after a Player turn: our role order, or the paper's missing DM judgement
    player_twice = GOOD[:2] + GOOD[1:]
    v = verify(SCRIPT, player_twice)
    assert (v.reason, v.verified_prefix) == ("role_order", 1)
    assert verify(SCRIPT, player_twice, strict=False).reason == "dm_turn_missing"
    # numbering from 1 is fine, from 5 is not
    from_one = [dict(t, turn=t["turn"] + 1) for t in GOOD]
    assert verify(SCRIPT, from_one).ok
    assert verify(SCRIPT, [dict(t, turn=t["turn"] + 5) for t in GOOD]).reason == "turn_numbering"


def test_error_counts():
    v = verify(SCRIPT, CASES["too_few_episodes"][0]["trajectory"], strict=False)
    assert v.ok and (v.error_turns, v.error_episodes) == (2, 1)
    v = verify(SCRIPT, CASES["error_not_refined"][0]["trajectory"])
    assert (v.error_turns, v.error_episodes) == (3, 2)


def test_goal_check_hook():
    seen = []

    def reached(script, turns):
        seen.append((script["Engine"], len(turns)))
        return True

    assert verify(json.dumps(SCRIPT), json.dumps(GOOD), goal_check=reached).ok
    assert seen == [(SCRIPT["Engine"], 11)]
    assert verify(SCRIPT, GOOD, strict=False, goal_check=goal_no).reason == "goal_not_reached"
    assert verify(SCRIPT, GOOD, goal_check=lambda s, t: False).detail == \
        "goal_check: the goal is not reached at the end"


# ------------------------------------------------------------------------------------- script checks


@pytest.mark.parametrize("script, reason", [
    ("not json at all", "json_error"),
    (script_with(Environment={}), "script_empty_field"),
    (script_with(**{"Completion Conditions": []}), "script_empty_field"),
    (script_with(**{"Available Actions": {}}), "script_empty_field"),
    (script_with(**{"Available Actions": []}), "script_empty_field"),
    (action("look", 12, {}), "script_bad_action"),
    (action("rm {file}", r"^rm\s+(.+)$", {}), "script_bad_parameters"),
    (action("rm {file}", r"^rm\s+(.+)$", {"file": [""]}), "script_bad_parameters"),
    (action("rm {file}", r"^rm\s+(.+)$", None), "script_bad_parameters"),
    (action("look", r"^look (.+)$", {}), "script_group_mismatch"),
    (action("look", r"^\s*look\s*$", None), "ok"),                     # no placeholder, no parameters
    (action("rm {file}", r"^rm\s+(.+)$", {"file": "notes"}), "ok"),    # a single value without a list
    (script_with(Environment="a small flat"), "ok"),
])
def test_check_script(script, reason):
    v = check_script(script)
    assert (v.ok, v.reason, v.stage) == (reason == "ok", reason, "script")


def test_rule_check():
    assert rule_check(SCRIPT, "cd documents") == (True, "cd {path}", "ok")
    assert rule_check(SCRIPT, " edit Config.CFG  set  MODE=ON ") == (True, "edit {file} set {setting}", "ok")
    assert rule_check(SCRIPT, "cd  ") == (False, "cd {path}", "bad_parameter")
    assert rule_check(SCRIPT, "cat /etc/passwd") == (False, "cat {file}", "bad_parameter")
    assert rule_check(SCRIPT, "ls -la") == (False, None, "no_match")
    assert rule_check(SCRIPT, "LS") == (False, None, "no_match")  # the regex applies as written
    assert rule_check(SCRIPT, "cd documents\nrm -rf /") == (False, None, "no_match")  # a full match
    assert rule_check(SCRIPT, None) == (False, None, "not_a_string")
    assert rule_check({"Goal": "x"}, "ls") == (False, None, "script_invalid")
    # a later template accepts what an earlier one matched with a value outside its list
    both = copy.deepcopy(SCRIPT)
    both["Available Actions"]["go {where}"] = {"verification code": r"^(?:cd|go)\s+(.+)$",
                                               "parameters": {"where": ["garden"]}}
    assert rule_check(both, "cd garden") == (True, "go {where}", "ok")


# ------------------------------------------------------------------------------ robustness and counts


def _mutate(value, rng):
    choice = rng.randrange(8)
    if choice == 0:
        return None
    if choice == 1:
        return rng.choice([0, -1, 3.5, True, "", "x" * 5, [], {}, [None], {"role": "DM"}])
    if isinstance(value, dict) and value:
        value = dict(value)
        key = rng.choice(list(value))
        if choice == 2:
            del value[key]
        else:
            value[key] = _mutate(value[key], rng)
        return value
    if isinstance(value, list) and value:
        value = list(value)
        i = rng.randrange(len(value))
        if choice == 2:
            del value[i]
        elif choice == 3:
            value.insert(i, value[i])
        else:
            value[i] = _mutate(value[i], rng)
        return value
    if isinstance(value, str):
        return value[: rng.randrange(len(value) + 1)] + rng.choice(["", "(", "[", "\\", "{x}"])
    return value


def test_never_raises_on_mutated_input():
    rng = random.Random(0)
    reasons = set()
    for _ in range(400):
        script, turns = SCRIPT, GOOD
        for _ in range(rng.randrange(1, 4)):
            if rng.random() < 0.3:
                script = _mutate(script, rng)
            else:
                turns = _mutate(turns, rng)
        for trajectory_input in (turns, json.dumps(turns)[: rng.randrange(400)]):
            v = verify(script, trajectory_input, strict=rng.random() < 0.5)
            assert isinstance(v, Verdict) and v.reason in REASONS
            reasons.add(v.reason)
    assert len(reasons) >= 8


def test_verdicts_are_frozen_and_serialisable():
    v = verify(SCRIPT, GOOD)
    with pytest.raises(AttributeError):
        v.ok = False
    line = json.dumps(v.to_dict())
    assert Verdict.from_dict(json.loads(line)) == v


def test_verdict_counts():
    verdicts = [verify(SCRIPT, GOOD)] * 3 + [verify(SCRIPT, "[]")] + [{"reason": "json_error"}] * 2
    frame = verdict_counts(verdicts)
    assert list(frame.columns) == ["reason", "count", "share"]
    assert frame.to_dict("records") == [{"reason": "ok", "count": 3, "share": 0.5},
                                        {"reason": "json_error", "count": 2, "share": 2 / 6},
                                        {"reason": "empty_trajectory", "count": 1, "share": 1 / 6}]
    empty = verdict_counts([])
    assert list(empty.columns) == ["reason", "count", "share"] and empty.empty

