"""The simulator-grounded teacher: oracle plan + injected mistakes + the engine's real feedback.

``grounded_trajectory(script, seed)`` walks the planner's shortest plan. Before some steps the Player
first makes a mistake of one of the three kinds (a bad template or value; something not here; a
precondition that fails), the engine judges it (so the DM flags are true by construction and the state
is unchanged), and the Player then corrects itself with the plan's action. Thoughts are templated from
the goal, the last observation and what went wrong, with several phrasings per situation picked by a
seeded RNG, so a (script, seed) pair always gives the same trajectory.
"""

from __future__ import annotations

import random
import re
from typing import Any

from refinelib.schema import FLAGS, is_erroneous
from refinelib.synth.world import World

KINDS = ("parameter_error", "place_error", "logic_error")
ARTICLES = ("the ", "my ", "that ")  # a common slip: an article makes a value not match its list

TRY = ("To make progress on the goal, I will try {act}.",  # the Player believes a mistake is right
       "I think {act} is the next step.",
       "{act} should bring me closer to this: {cond}.",
       "I am in the {here}. Let me go ahead with {act}.",
       "Next: {act}, then I can continue toward the goal.")
STEP = ("I am in the {here}. To get to the goal ({cond}), the next step is {act}.",
        "The goal says: {goal} Given that, I will {act} now.",
        "The last observation was: \"{obs}\" The next thing to do is {act}.",
        "I still need this: {cond}. Let me {act}.",
        "{why} So: {act}.",
        "Looking at where I am ({here}), {act} should move me toward the goal.")
WHY = {"go": "The next thing I need is in the {0}, so I should go there.",
       "take": "I need to pick up the {0} first.",
       "put": "The {0} has to end up in the {1}.",
       "open": "The {0} is closed and I need what is inside or to put something in.",
       "close": "The {0} should be closed.",
       "unlock": "The {0} is locked, and I carry the {1} that opens it.",
       "make": "The {0} must be processed for the goal."}
REFINE = {
    "parameter_error": ("The DM answered \"{obs}\" My command did not fit any available action; the correct "
                        "form is \"{tpl}\" with a listed value. Corrected: {act}.",
                        "\"{obs}\" I wrote the command wrongly. Checking the action list, it should read "
                        "{act}.",
                        "That was not a valid command (\"{obs}\"). I must use the exact wording "
                        "\"{tpl}\", so I will {act}."),
    "place_error": ("\"{obs}\" I named something that is not where I am. I should stick to what is here: "
                    "{act}.",
                    "The DM says \"{obs}\" That object is in another place, so first things first: {act}.",
                    "My mistake: {bad} refers to something not in the {here}. The right step now is {act}."),
    "logic_error": ("\"{obs}\" That step was out of order; its precondition does not hold yet. "
                    "Instead: {act}.",
                    "The DM replied \"{obs}\" I skipped a step. Following the plan properly, I will {act}.",
                    "{bad} failed because the world is not ready for it (\"{obs}\"). I will {act} instead."),
}
DM_THOUGHT = {
    None: ("The action is valid and succeeds.", "The player's command matches an available action and its "
           "preconditions hold.", "Valid action; I update the world and describe the result."),
    "parameter_error": ("The player's action format is incorrect or names a value not in the parameter list.",
                        "The command matches no available action with allowed values."),
    "place_error": ("The command refers to something that is not at the player's location.",
                    "The player names an object that is not here."),
    "logic_error": ("The command is well-formed and the object is here, but a precondition fails.",
                    "The action contradicts the current state of the world."),
}


def _q(text: str) -> str:
    return f"\"{text}\""


def _role(world: World, text: str) -> tuple[str, list[str]]:
    """The action's role (go, take, ...) and its slot values, for the thought templates."""
    for a in world.actions:
        values = a.parse(text)
        if isinstance(values, dict):
            role = a.spec.get("role", "")
            return ("make" if role.startswith("make") else role), [values[s] for s in a.slots]
    return "", []


def _thought(rng: random.Random, world: World, goal: str, obs: str, act: str, mistaken: bool = False) -> str:
    conds = [c[:1].lower() + c[1:].rstrip(".")
             for c, f in zip(world.engine["conditions"], world.engine["goal"], strict=True)
             if tuple(f) not in world.state]
    role, vals = _role(world, act)
    why = WHY[role].format(*vals) if role in WHY else f"The goal is: {goal}"
    first = obs.split(". ")[0].rstrip(".") + "."
    return rng.choice(TRY if mistaken else STEP).format(
        here=world.where(world.state), cond=" and ".join(conds) or goal.rstrip("."), goal=goal, obs=first,
        act=_q(act), why=why)


def _mistakes(world: World, rng: random.Random, right: str, kind: str) -> list[str]:
    """Candidate wrong actions of ``kind``, the most plausible (sharing the right action's words) first."""
    if kind == "parameter_error":
        cands = []
        for a in world.actions:
            values = a.parse(right)
            if not isinstance(values, dict):
                continue
            words = right.split()
            cands += [re.sub(re.escape(v), rng.choice(ARTICLES) + v, right, count=1) for v in values.values()]
            cands.append(" ".join(words[:-1]) if len(words) > 1 else right + " now")  # truncated command
            cands.append(right.replace(" ", "_", 1))
            for slot in a.slots:  # the right verb with a value that only another action lists
                other = {v for t in world.actions for vs in t.parameters.values() for v in vs}
                cands += [a.render({**values, slot: v}) for v in sorted(other - set(a.parameters[slot]))]
        rng.shuffle(cands)
    else:
        cands = [a.render(v) for a, v in world.groundings()]
        rng.shuffle(cands)
        words = set(right.split())
        cands.sort(key=lambda c: -len(words & set(c.split())))
    return [c for c in dict.fromkeys(cands) if c != right and world.check(c)[1][kind]]


def grounded_trajectory(script: dict[str, Any], seed: int, error_rate: float = 0.3,
                        min_errors: int = 2) -> list[dict[str, Any]]:
    """A Player/DM trajectory (the contract's turn dicts) with >= ``min_errors`` error->refinement episodes.

    Raises ValueError when the plan is too short to hold ``min_errors`` episodes.
    """
    world = World.from_script(script)
    rng = random.Random(f"teacher-{seed}")
    plan = script["Engine"].get("plan") or world.plan()
    if plan is None or len(plan) < min_errors:
        raise ValueError("script has no plan with enough steps for the requested errors")
    goal = script["Goal"]
    steps = [i for i in range(len(plan)) if rng.random() < error_rate]
    spare = [i for i in range(len(plan)) if i not in steps]
    steps = set(steps + rng.sample(spare, max(0, min_errors - len(steps))))

    obs = world.reset()
    start = "The episode starts; I describe the player's surroundings and the task."
    turns: list[dict[str, Any]] = [{"turn": 0, "role": "DM", "Thought": start,
                                    "Observation": f"{obs} Your task: {goal}", **dict.fromkeys(FLAGS, False)}]

    def play(thought: str, action: str) -> tuple[str, dict[str, bool]]:
        seen, flags = world.step(action)
        kind = next((k for k in FLAGS if flags[k]), None)
        turns.append({"turn": len(turns), "role": "Player", "Thought": thought, "Action": action})
        turns.append({"turn": len(turns), "role": "DM", "Thought": rng.choice(DM_THOUGHT[kind]),
                      "Observation": seen, **flags})
        return seen, flags

    episodes = 0
    for i, right in enumerate(plan):
        last = None
        if i in steps:
            kinds = list(KINDS)
            rng.shuffle(kinds)
            for kind in kinds:  # a kind with no candidate here falls through to the next
                cands = _mistakes(world, rng, right, kind)
                if cands:
                    wrong = cands[0] if rng.random() < 0.7 else rng.choice(cands)
                    bad_obs, flags = play(_thought(rng, world, goal, obs, wrong, mistaken=True), wrong)
                    last, episodes = (kind, wrong, bad_obs), episodes + 1
                    break
        if last:
            kind, wrong, bad_obs = last
            tpl = next((a.template for a in world.actions if isinstance(a.parse(right), dict)), right)
            thought = rng.choice(REFINE[kind]).format(obs=bad_obs, tpl=tpl, act=_q(right), bad=_q(wrong),
                                                      here=world.where(world.state))
        else:
            thought = _thought(rng, world, goal, obs, right)
        obs, flags = play(thought, right)
        assert not any(flags.values()), f"oracle step failed: {right!r}: {obs}"
    assert world.goal_reached(), "oracle plan did not reach the goal"
    if episodes < min_errors:
        raise ValueError(f"only {episodes} mistakes could be injected, {min_errors} required")
    turns[-1]["Thought"] = "The action is valid and every completion condition holds: the goal is reached."
    return turns


def replay_check(script: dict[str, Any], trajectory: list[dict[str, Any]]) -> tuple[bool, str]:
    """Replay the Player's actions in the engine: same observations and flags, goal reached at the end.

    Fits ``refinelib.synth.verify.verify(..., goal_check=replay_check)``.
    """
    world = World.from_script(script)
    players = [t for t in trajectory if t.get("role") == "Player"]
    dms = [t for t in trajectory if t.get("role") == "DM"][1:]
    for player, dm in zip(players, dms, strict=False):  # a cut-off trajectory replays its prefix
        obs, flags = world.step(player["Action"])
        if obs != dm["Observation"] or any(flags[f] != dm[f] for f in FLAGS):
            return False, f"turn {dm['turn']}: the engine says {obs!r} {flags}"
    return world.goal_reached(), "replayed in the engine"


def replay_record(script: dict[str, Any], record: dict[str, Any]) -> tuple[bool, str]:
    """Replay a chat record (what tuning reads) in the engine: a check independent of the verifier's.

    :func:`replay_check` replays the teacher's trajectory, which the verifier already did; this replays
    the *converted* record instead: each ``gpt`` turn's ``Action:`` line is played, the next ``human``
    turn must carry the engine's observation, a turn's ``loss`` must be false exactly when the engine
    flags it (erroneous turns are masked), and the goal must be reached. So it catches what conversion
    and masking can break, not only what the teacher can.

    >>> from refinelib.synth.themes import generate_script
    >>> from refinelib.synth.conversation import to_conversation
    >>> script = generate_script(3)
    >>> record = to_conversation(script, grounded_trajectory(script, seed=3), "r3")
    >>> replay_record(script, record)
    (True, 'replayed in the engine')
    >>> record["conversations"][-1]["value"] = "Thought: hm.\\nAction: jump around"
    >>> replay_record(script, record)[0]
    False
    """
    world = World.from_script(script)
    turns = record["conversations"]
    for i, turn in enumerate(turns):
        if turn["from"] != "gpt":
            continue
        action = turn["value"].rsplit("Action:", 1)[-1].strip() if "Action:" in turn["value"] else ""
        obs, flags = world.step(action)
        if is_erroneous(turn) != any(flags.values()):
            return False, f"turn {i}: loss is {turn['loss']} but the engine's flags are {flags}"
        following = turns[i + 1]["value"] if i + 1 < len(turns) else None
        if following is not None and following != f"Observation: {obs}":
            return False, f"turn {i + 1}: the record says {following!r}, the engine {obs!r}"
    return world.goal_reached(), "replayed in the engine"

