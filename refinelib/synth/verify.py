"""Trajectory verification (method.md §6, Algorithm 1): every sample gets a :class:`Verdict`, never a crash.

Usable on any script/trajectory from any source (the grounded teacher, an LLM, released data): inputs may
be parsed objects or raw model text (a JSON list/object, optionally inside a ```json fence or with prose
around it). The data contract is the paper's: a *script* is a dict with ``Environment``, ``Goal``,
``Completion Conditions`` and ``Available Actions`` (template -> ``verification code`` regex +
``parameters``); a *trajectory* is a list of Player turns ``{turn, role, Thought, Action}`` and DM turns
``{turn, role, Thought, Observation, parameter_error, place_error, logic_error}``.

Checks, in order (the first failure is the verdict):

1. the script (:func:`check_script`; stage ``"script"``: regenerate the script);
2. the trajectory parses as a JSON list (``json_error``);
3. per turn: exact keys per role (``wrong_keys``) and value types (``wrong_types``: flags are booleans,
   texts are strings, ``turn`` an int); **strict only**: roles alternate starting with a DM turn
   (``role_order``) and ``turn`` counts up by one from 0 or 1 (``turn_numbering``);
4. per Player turn: the next turn is the DM turn judging it (``dm_turn_missing``) and the rule check
   (:func:`rule_check`) agrees with its ``parameter_error`` (``dm_flag_mismatch``); a Player turn whose DM
   turn sets any flag is an *erroneous turn*;
5. fewer than ``min_error_episodes`` erroneous turns: ``too_few_refinements`` with ``verified_prefix=0``
   (the paper restarts the trajectory);
6. **strict only**: every run of erroneous turns is followed by a refinement turn (``error_not_refined``;
   given the Player/DM pairing this is the same as "the last Player turn is not erroneous", i.e. the
   trajectory ends with an unflagged DM turn after a non-erroneous Player turn), and at least
   ``min_error_episodes`` error->refinement *episodes* (``too_few_episodes``: two erroneous turns in a row
   fixed once count as two errors for the paper but one episode);
7. ``goal_check`` (a callable, e.g. an engine replay of a grounded script's goal facts), when given:
   ``goal_not_reached`` / ``goal_check_error``.

``strict=False`` runs the paper's checks only (1-5, 7 when a ``goal_check`` is passed explicitly). The
extra checks are separate reasons, so the paper's filter is never tightened silently: the yield per reason
shows what each one costs.

``verified_prefix`` is the number of leading turns that passed, for incremental regeneration: a Player
turn passes together with the DM turn that judges it, so on ``dm_flag_mismatch`` at Player turn *i* the
prefix is *i*. Failures after the loop that a continuation can fix (``error_not_refined``,
``goal_not_reached``) keep the whole trajectory; too few errors restart from 0.

>>> script = {"Environment": {"home": {"notes.txt": "hi"}}, "Goal": "Read notes.txt.",
...           "Completion Conditions": ["notes.txt was read"],
...           "Available Actions": {"cat {file}": {"verification code": r"^\\s*cat\\s+(.+?)\\s*$",
...                                                "parameters": {"file": ["notes.txt"]}}}}
>>> rule_check(script, "cat NOTES.txt")
(True, 'cat {file}', 'ok')
>>> rule_check(script, "cat todo.txt")
(False, 'cat {file}', 'bad_parameter')
>>> verify(script, "[]").reason
'empty_trajectory'
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import regex

from refinelib.schema import FLAGS, error_episodes, flags_set
from refinelib.synth.codes import REGEX_TIMEOUT, RegexTimeout, compile_code, full_match
from refinelib.synth.parse import parse_json

if TYPE_CHECKING:
    import pandas as pd

SCRIPT_KEYS = ("Environment", "Goal", "Completion Conditions", "Available Actions")
TURN_KEYS = {"Player": ("turn", "role", "Thought", "Action"),
             "DM": ("turn", "role", "Thought", "Observation", *FLAGS)}

# Every reason a verdict can carry (stable codes: they are counted, plotted and stored in verdicts.jsonl).
REASONS = {
    "ok": "accepted",
    # stage "script": the script is at fault (regenerate the script)
    "json_error": "no JSON object/list could be extracted from the text (either stage)",
    "script_not_object": "the script is not a JSON object",
    "script_missing_key": "a required script key is missing",
    "script_empty_field": "Environment, Goal, Completion Conditions or Available Actions empty or mistyped",
    "script_bad_action": "an Available Action is not an object with 'verification code' and 'parameters'",
    "script_bad_regex": "a verification code does not compile",
    "script_regex_timeout": "a verification code took longer than the time limit to match an action",
    "script_group_mismatch": "a verification code has not one capture group per template placeholder",
    "script_bad_parameters": "a placeholder has no non-empty list of allowed values",
    "script_duplicate_template": "two Available Actions have the same template",
    # stage "trajectory", the paper's checks (Algorithm 1)
    "not_a_list": "the trajectory is not a list of turns",
    "empty_trajectory": "the trajectory has no turns",
    "wrong_keys": "a turn is not an object with exactly its role's keys (or has an unknown role)",
    "wrong_types": "a turn's values have the wrong type (flags must be true/false, texts strings)",
    "dm_turn_missing": "a Player turn is not followed by the DM turn that judges it",
    "dm_flag_mismatch": "the rule check of a Player action disagrees with the DM's parameter_error",
    "too_few_refinements": "fewer erroneous turns than required (the paper restarts the trajectory)",
    # stage "trajectory", our extra checks (strict=True)
    "role_order": "roles do not alternate starting with a DM turn",
    "turn_numbering": "turn numbers are not consecutive from 0 (or 1)",
    "error_not_refined": "an erroneous turn is never followed by a refinement turn (it ends on an error)",
    "too_few_episodes": "fewer error->refinement episodes than required",
    # the optional grounded goal check
    "goal_not_reached": "goal_check says the goal is not reached at the end",
    "goal_check_error": "goal_check raised an exception",
}
SCRIPT_REASONS = frozenset(r for r in REASONS if r.startswith("script_"))
EXTRA_REASONS = frozenset({"role_order", "turn_numbering", "error_not_refined", "too_few_episodes"})


@dataclass(frozen=True)
class Verdict:
    """The outcome of verifying one script or trajectory."""

    ok: bool
    reason: str                 # a stable code from REASONS ("ok" when accepted)
    detail: str = ""            # human words: the turn index and field at fault
    verified_prefix: int = 0    # leading turns that passed (keep them when regenerating)
    error_episodes: int = 0     # error->refinement episodes (runs of erroneous turns followed by a fix)
    stage: str = "trajectory"   # "script" (regenerate the script) or "trajectory"
    error_turns: int = 0        # erroneous Player turns (what Algorithm 1 counts)

    def to_dict(self) -> dict:
        """A JSON-able dict (one line of verdicts.jsonl)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> Verdict:
        """The inverse of :meth:`to_dict`; unknown keys are ignored."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


# ---------------------------------------------------------------------------------------------- JSON


# -------------------------------------------------------------------------------------------- script

_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


@dataclass(frozen=True)
class _Action:
    template: str
    regex: regex.Pattern
    slots: tuple[str, ...]                  # placeholder names in template order (a group each)
    allowed: dict[str, frozenset[str]]      # placeholder -> normalised allowed values


def _norm(value) -> str:
    """How captured and allowed values are compared: stripped, inner whitespace collapsed, case-folded."""
    return " ".join(str(value).split()).casefold()


def _compile(script) -> tuple[list[_Action] | None, Verdict]:
    """Validate a script and compile its actions; a failing Verdict (stage "script") when it is bad."""

    def bad(reason: str, detail: str) -> tuple[None, Verdict]:
        return None, Verdict(False, reason, detail, stage="script")

    script, why = parse_json(script, dict)
    if why is not None:
        return bad("json_error", f"script: {why}")
    if not isinstance(script, Mapping):
        return bad("script_not_object", f"the script is a {type(script).__name__}, not an object")
    missing = [k for k in SCRIPT_KEYS if k not in script]
    if missing:
        return bad("script_missing_key", f"script lacks key(s) {missing}")
    env, goal, conds, actions = (script[k] for k in SCRIPT_KEYS)
    if not isinstance(env, Mapping | str) or not env or (isinstance(env, str) and not env.strip()):
        return bad("script_empty_field", "'Environment' must be a non-empty object")
    if not isinstance(goal, str) or not goal.strip():
        return bad("script_empty_field", "'Goal' must be a non-empty string")
    if isinstance(conds, str):
        conds = [conds]
    if not isinstance(conds, list) or not any(isinstance(c, str) and c.strip() for c in conds):
        return bad("script_empty_field", "'Completion Conditions' must be a non-empty list of strings")
    if not isinstance(actions, Mapping) or not actions:
        return bad("script_empty_field", "'Available Actions' must be a non-empty object keyed by template")
    if getattr(actions, "duplicates", ()):
        return bad("script_duplicate_template",
                   f"'Available Actions' lists template {actions.duplicates[0]!r} twice")
    compiled, seen = [], {}
    for template, spec in actions.items():
        action, why = _compile_action(template, spec, seen)
        if action is None:
            return bad(*why)
        compiled.append(action)
    return compiled, Verdict(True, "ok", f"{len(compiled)} available action(s)", stage="script")


def _compile_action(template, spec, seen: dict) -> tuple[_Action | None, tuple[str, str] | None]:
    """One entry of 'Available Actions' compiled, or ``(None, (reason, detail))``; ``seen`` holds the
    normalised templates before it (a duplicate is refused) and gains this one."""
    where = f"'Available Actions'[{template!r}]"
    if not isinstance(template, str) or not template.strip():
        return None, ("script_bad_action", f"{where}: the template must be a non-empty string")
    key = _norm(template)
    if key in seen:
        return None, ("script_duplicate_template", f"{where} duplicates template {seen[key]!r}")
    seen[key] = template
    if not isinstance(spec, Mapping) or not isinstance(spec.get("verification code"), str):
        return None, ("script_bad_action", f"{where}: needs a string 'verification code'")
    try:
        code = compile_code(spec["verification code"])
    except (regex.error, re.error, RecursionError, OverflowError, ValueError) as error:
        return None, ("script_bad_regex", f"{where}['verification code'] does not compile: {error}")
    slots = tuple(s.strip() for s in _PLACEHOLDER.findall(template))
    if code.groups != len(slots):
        return None, ("script_group_mismatch", f"{where}['verification code'] has {code.groups} capture "
                      f"group(s) but the template has {len(slots)} placeholder(s) {list(slots)}")
    params = spec.get("parameters")
    if not slots:
        params = {}  # nothing to list ("ls", "look"): missing, null or {} parameters are all fine
    if not isinstance(params, Mapping):
        return None, ("script_bad_parameters", f"{where}['parameters'] must be an object of allowed values")
    allowed = {}
    for slot in dict.fromkeys(slots):
        values = params.get(slot)
        if isinstance(values, str | int | float) and not isinstance(values, bool):
            values = [values]  # a single allowed value written without a list
        if not isinstance(values, list) or not values \
                or not all(isinstance(v, str | int | float) and _norm(v) for v in values):
            return None, ("script_bad_parameters",
                          f"{where}['parameters'][{slot!r}] must be a non-empty list of non-empty values")
        allowed[slot] = frozenset(_norm(v) for v in values)
    return _Action(template, code, slots, allowed), None


def check_script(script) -> Verdict:
    """Check a script (parsed or raw text) against method.md §4; ``stage="script"``.

    Required keys; non-empty Environment, Goal and Completion Conditions; for every Available Action the
    verification code compiles, has exactly one capture group per ``{placeholder}`` of the template (in
    order), and every placeholder has a non-empty list of allowed values; templates are unique (also
    after case/whitespace normalisation, and a key written twice in raw JSON is caught). Unknown keys
    (``Engine``, ``description``) are ignored.
    """
    return _compile(script)[1]


def _rule_check(actions: list[_Action], action: str) -> tuple[bool, str | None, str]:
    if not isinstance(action, str):
        return False, None, "not_a_string"
    first = None
    for spec in actions:
        try:
            match = full_match(spec.regex, action)
        except RegexTimeout:
            return False, spec.template, "regex_timeout"
        if match is None:
            continue
        values = [_norm(g if g is not None else "") for g in match.groups()]
        if all(v in spec.allowed[slot] for slot, v in zip(spec.slots, values, strict=True)):
            return True, spec.template, "ok"
        first = first or spec.template
    return (False, first, "bad_parameter") if first else (False, None, "no_match")


def rule_check(script, action) -> tuple[bool, str | None, str]:
    """The paper's rule-based action check of one Player action (method.md §5, ``parameter_error``).

    The action passes when some Available Action's verification code matches it *fully*
    (``re.fullmatch``) and every captured group is in its placeholder's allowed list. Comparison is
    forgiving in form only: both sides are stripped, runs of whitespace collapsed and case-folded
    (``"Notes.TXT "`` == ``"notes.txt"``), so a DM that judges by meaning and a regex with ``(.+?)`` agree.
    The regex itself is applied as written (case-sensitive unless it says ``(?i)``): the comparison rule
    concerns captured values only. Templates are tried in script order; a later template can accept what
    an earlier one matched.

    Returns:
        ``(ok, template, reason)``: ``reason`` is ``"ok"``, ``"bad_parameter"`` (``template`` = the first
        template whose regex matched), ``"no_match"``, ``"not_a_string"``, ``"regex_timeout"`` (the
        template whose verification code ran past :data:`REGEX_TIMEOUT`) or ``"script_invalid"``
        (the script fails :func:`check_script`; ``template`` is None).
    """
    actions, verdict = _compile(script)
    if actions is None:
        return False, None, "script_invalid"
    return _rule_check(actions, action)


# ---------------------------------------------------------------------------------------- trajectory


def _schema(turn, i: int) -> tuple[str, str] | None:
    """``(reason, detail)`` when turn ``i`` does not have exactly its role's keys and value types."""
    if not isinstance(turn, Mapping):
        return "wrong_keys", f"turn {i} is a {type(turn).__name__}, not an object"
    role = turn.get("role")
    if not isinstance(role, str) or role not in TURN_KEYS:
        return "wrong_keys", f"turn {i}: 'role' is {role!r}; expected 'Player' or 'DM'"
    want = set(TURN_KEYS[role])
    if getattr(turn, "duplicates", ()):
        return "wrong_keys", f"turn {i} ({role}): key {turn.duplicates[0]!r} written twice"
    if set(turn) != want:
        missing, extra = sorted(want - set(turn)), sorted(set(turn) - want, key=str)
        return "wrong_keys", f"turn {i} ({role}): missing {missing}, unexpected {extra}"
    if not isinstance(turn["turn"], int) or isinstance(turn["turn"], bool):
        return "wrong_types", f"turn {i} ({role}): 'turn' is {turn['turn']!r}, not an integer"
    for key in TURN_KEYS[role][2:]:
        kind = bool if key in FLAGS else str
        if not isinstance(turn[key], kind):
            return "wrong_types", (f"turn {i} ({role}): {key!r} is {type(turn[key]).__name__} "
                                   f"{turn[key]!r:.60}, not {kind.__name__}")
    return None


# One long function on purpose: Algorithm 1's checks read top to bottom in the order the module docstring
# lists them, each returning the first failure's verdict; split up, the order would hide in the calls.
def verify(script, trajectory, min_error_episodes: int = 2, strict: bool = True,
           goal_check: Callable | None = None) -> Verdict:
    """Verify a trajectory against its script (Algorithm 1 plus our extra checks; see the module docstring).

    Args:
        script: the script (dict or raw text).
        trajectory: the list of turns (list or raw text: JSON, fenced or with prose around it).
        min_error_episodes: erroneous turns required (the paper: 2); with ``strict`` also the number of
            error->refinement episodes required.
        strict: run our extra checks (role order, turn numbers, every error refined, episodes); False runs
            only the paper's.
        goal_check: optional ``goal_check(script, turns) -> bool | (bool, detail)``, e.g. a replay in the
            world engine of an executable script's goal facts; run last, when given (also with
            ``strict=False``: passing it is an explicit request).

    Returns:
        A :class:`Verdict`; never raises on bad input.
    """
    script = parse_json(script, dict)[0] or script  # parsed once (goal_check gets the object)
    actions, script_verdict = _compile(script)
    if actions is None:
        return script_verdict
    turns, why = parse_json(trajectory, list)
    if why is not None:
        return Verdict(False, "json_error", f"trajectory: {why}")
    if isinstance(turns, Mapping):  # a wrapper object such as {"trajectory": [...]}
        lists = [v for v in turns.values() if isinstance(v, list)]
        turns = lists[0] if len(lists) == 1 else turns
    if not isinstance(turns, list):
        return Verdict(False, "not_a_list", f"the trajectory is a {type(turns).__name__}, not a list")
    if not turns:
        return Verdict(False, "empty_trajectory", "the trajectory has no turns")

    erroneous: list[bool] = []  # per Player turn, in order
    first_number = turns[0].get("turn") if isinstance(turns[0], Mapping) else None

    def fail(reason: str, detail: str, prefix: int) -> Verdict:
        return Verdict(False, reason, detail, prefix, error_episodes(erroneous), error_turns=sum(erroneous))

    for i, turn in enumerate(turns):
        problem = _schema(turn, i)
        if problem:
            return fail(*problem, i)
        role = turn["role"]
        if strict:
            expected = "DM" if i == 0 else ("Player" if turns[i - 1]["role"] == "DM" else "DM")
            if role != expected:
                why = "the first turn must be the DM's initial observation" if i == 0 else \
                    f"it follows a {turns[i - 1]['role']} turn"
                return fail("role_order", f"turn {i} has role {role!r}, expected {expected!r}: {why}", i)
            if first_number not in (0, 1) or turn["turn"] != first_number + i:
                want = f"{first_number + i}" if first_number in (0, 1) else "0 or 1"
                return fail("turn_numbering", f"turn {i}: 'turn' is {turn['turn']!r}, expected {want}", i)
        if role != "Player":
            continue
        if i + 1 == len(turns):
            return fail("dm_turn_missing", f"turn {i} (Player) is the last turn: no DM turn judges its "
                        f"action {turn['Action']!r}", i)
        nxt = turns[i + 1]
        problem = _schema(nxt, i + 1)
        if problem:
            return fail(*problem, i)
        if nxt["role"] != "DM":
            if strict:
                return fail("role_order", f"turn {i + 1} has role 'Player', expected 'DM': it follows a "
                            "Player turn", i)
            return fail("dm_turn_missing", f"turn {i} (Player) is followed by turn {i + 1} (Player), not "
                        "by the DM turn judging it", i)
        ok, template, why = _rule_check(actions, turn["Action"])
        if why == "regex_timeout":  # the script is at fault, not the turn: regenerate the script
            return Verdict(False, "script_regex_timeout", f"'Available Actions'[{template!r}]['verification "
                           f"code'] took over {REGEX_TIMEOUT} s to match turn {i}'s action "
                           f"{turn['Action']!r:.80}", stage="script")
        if ok == nxt["parameter_error"]:
            said = "valid" if ok else {"no_match": "matches no available action",
                                       "bad_parameter": f"matches {template!r} with a value outside its "
                                                        "parameter list"}[why]
            return fail("dm_flag_mismatch", f"turn {i} (Player) action {turn['Action']!r} {said} (rule "
                        f"check: {why}) but turn {i + 1} (DM) has parameter_error="
                        f"{str(nxt['parameter_error']).lower()}", i)
        erroneous.append(bool(flags_set(nxt)))

    n = len(turns)
    if sum(erroneous) < min_error_episodes:
        return Verdict(False, "too_few_refinements", f"{sum(erroneous)} erroneous turn(s); at least "
                       f"{min_error_episodes} needed: restart the trajectory", 0, error_episodes(erroneous),
                       error_turns=sum(erroneous))
    if strict:
        if erroneous and erroneous[-1]:
            last = max(i for i, t in enumerate(turns) if t["role"] == "Player")
            return fail("error_not_refined", f"the last Player turn ({last}) is erroneous: no refinement "
                        "follows it, so the trajectory does not end with the goal reached", n)
        if error_episodes(erroneous) < min_error_episodes:
            return fail("too_few_episodes", f"{sum(erroneous)} erroneous turns form only "
                        f"{error_episodes(erroneous)} error->refinement episode(s); at least "
                        f"{min_error_episodes} needed: restart the trajectory", 0)
    if goal_check is not None:
        try:
            result = goal_check(script, turns)
        except Exception as error:  # noqa: BLE001 (a verdict, never a crash; the reason says it was the hook)
            return fail("goal_check_error", f"goal_check raised {type(error).__name__}: {error}", n)
        reached, detail = result if isinstance(result, tuple) else (result, "")
        if not reached:
            return fail("goal_not_reached", f"goal_check: the goal is not reached at the end"
                        f"{': ' + str(detail) if detail else ''}", n)
    episodes = error_episodes(erroneous)
    return Verdict(True, "ok", f"{n} turns, {sum(erroneous)} erroneous, {episodes} episode(s)",
                   n, episodes, error_turns=sum(erroneous))


def verdict_counts(verdicts: Iterable) -> pd.DataFrame:
    """Count verdicts per reason: a tidy DataFrame ``(reason, count, share)``, most frequent first.

    Accepts :class:`Verdict` objects or their dicts (verdicts.jsonl lines).
    """
    import pandas as pd

    reasons = [v.reason if isinstance(v, Verdict) else v["reason"] for v in verdicts]
    counts = pd.Series(reasons, dtype=object).value_counts()
    frame = pd.DataFrame({"reason": counts.index.astype(str), "count": counts.to_numpy(dtype=int)})
    frame["share"] = frame["count"] / max(len(reasons), 1)
    return frame.sort_values(["count", "reason"], ascending=[False, True], ignore_index=True)
