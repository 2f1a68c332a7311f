"""A small world engine that runs executable scripts (the grounded teacher's simulator).

A script is the paper's dict (Environment, Goal, Completion Conditions, Available Actions) plus an
``Engine`` key with the executable spec, all JSON-able:

* ``locations``, ``start``: rooms; the player is always in exactly one (fact ``at(player, L)``).
* ``init``: facts as lists, e.g. ``["in", "memo.txt", "drafts"]`` (a container or place in a location),
  ``["holding", "key"]``, ``["state", "drawer", "locked"]``.
* ``actions``: one per template, ``{"template", "parameters", "here", "pre", "add", "del", "say"}``.
  ``here`` names the placeholders that must be reachable (at the player's location or held);
  ``pre`` are fact patterns (``["not", ...]`` negates); ``add``/``del`` are effects (``"*"`` matches any
  value in ``del``); ``say`` is the observation on success.
* ``goal``: facts that must all hold.

``World.step(text)`` returns ``(observation, flags)``; the three flags are decided in order
(parameter, place, logic) and an invalid action leaves the state unchanged, so the flags are true by
construction. ``World.plan()`` is a breadth-first search for a shortest plan.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Any

from refinelib.schema import FLAGS
from refinelib.synth.codes import compile_code, full_match

PLACEHOLDER = re.compile(r"\{(\w+)\}")
FORMAT_ERROR = "Error: invalid command format."
GOAL_DONE = "Goal reached: all completion conditions are met."


def template_regex(template: str) -> str:
    """The paper's verification code for a template: a full-match regex, one group per placeholder."""
    parts = PLACEHOLDER.split(template)  # literal, name, literal, name, ...
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append("(.+?)")
        else:  # literals: any run of spaces matches any run of spaces
            out += [r"\s+" if c.isspace() else re.escape(c) for c in re.split(r"(\s+)", part) if c]
    return r"^\s*" + "".join(out) + r"\s*$"


def norm(value: str) -> str:
    """How a captured value is compared with its list (as refinelib.synth.verify does): spaces and case
    folded."""
    return " ".join(value.split()).casefold()


def _fill(pattern: list[str], values: dict[str, str]) -> tuple[str, ...]:
    return tuple(values[p[1:-1]] if p[:1] == "{" else p for p in pattern)


class Action:
    """One compiled action template."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.template = spec["template"]
        self.slots = PLACEHOLDER.findall(self.template)
        # an executable script's codes may come from an LLM: matched under verify's time limit
        self.regex = compile_code(spec.get("verification code") or template_regex(self.template))
        self.parameters = {k: list(v) for k, v in spec["parameters"].items()}
        self.allowed = {k: {norm(v): v for v in vs} for k, vs in self.parameters.items()}

    def parse(self, text: str) -> dict[str, str] | None | bool:
        """The (canonical) slot values, False when the regex fails, None when a value is not allowed."""
        m = full_match(self.regex, text)
        if not m:
            return False
        values = {k: self.allowed[k].get(norm(g)) for k, g in zip(self.slots, m.groups(), strict=True)}
        return values if None not in values.values() else None

    def render(self, values: dict[str, str]) -> str:
        return self.template.format(**values)


class World:
    """An executable script: a state of facts, actions with preconditions and effects, a goal."""

    def __init__(self, engine: dict[str, Any]) -> None:
        self.engine = engine
        self.actions = [Action(a) for a in engine["actions"]]
        if any("*" in p[:-1] for a in self.actions for p in a.spec.get("del", [])):
            raise ValueError("a del pattern may use '*' only as its last element")
        self.goal = frozenset(tuple(f) for f in engine["goal"])
        self.initial = frozenset([("at", "player", engine["start"])] + [tuple(f) for f in engine["init"]])
        self.state = self.initial
        self.locations = set(engine["locations"])
        self._groundings: list[tuple[Action, dict[str, str]]] | None = None
        self._fast: list[tuple] | None = None

    def reset(self) -> str:
        self.state = self.initial
        return self.describe(self.state)

    # ----- reading a state -----------------------------------------------------------------
    @staticmethod
    def where(state: frozenset) -> str:
        return next(f[2] for f in state if f[0] == "at" and f[1] == "player")

    def reachable(self, state: frozenset, name: str, parent: dict[str, str] | None = None) -> bool:
        """Held, a location, or (transitively) inside something at the player's location."""
        if name in self.locations or ("holding", name) in state:
            return True
        here, seen = self.where(state), set()
        parent = {f[1]: f[2] for f in state if f[0] == "in"} if parent is None else parent
        while name in parent and name not in seen:
            seen.add(name)
            name = parent[name]
            if name == here:
                return True
        return False

    def describe(self, state: frozenset) -> str:
        """The player's surroundings in words."""
        here = self.where(state)
        fixed = sorted(f[1] for f in state if f[0] == "in" and f[2] == here)
        parts = [f"You are in the {here}."]
        for thing in fixed:
            st = self.state_of(state, thing)
            inside = sorted(f[1] for f in state if f[0] == "in" and f[2] == thing)
            line = f"There is the {thing}" + (f" ({st})" if st else "")
            if inside and st not in ("closed", "locked"):
                line += ", holding " + ", ".join(inside)
            parts.append(line + ".")
        held = sorted(f[1] for f in state if f[0] == "holding")
        parts.append("You are carrying " + (", ".join(held) if held else "nothing") + ".")
        return " ".join(parts)

    @staticmethod
    def state_of(state: frozenset, name: str) -> str | None:
        return next((f[2] for f in state if f[0] == "state" and f[1] == name), None)

    def goal_reached(self, state: frozenset | None = None) -> bool:
        return self.goal <= (self.state if state is None else state)

    # ----- acting ----------------------------------------------------------------------------
    def check(self, text: str, state: frozenset | None = None) -> tuple[str, dict[str, bool], frozenset]:
        """Judge an action without acting: (observation, flags, next state)."""
        state = self.state if state is None else state
        flags = dict.fromkeys(FLAGS, False)
        matched, values, action = None, None, None
        for action in self.actions:
            values = action.parse(text.strip())
            if isinstance(values, dict):
                break
            matched = matched or (action if values is None else None)
        if not isinstance(values, dict):
            flags["parameter_error"] = True
            if matched is None:
                return FORMAT_ERROR, flags, state
            m = full_match(matched.regex, text.strip())
            slot, value = next((s, v.strip()) for s, v in zip(matched.slots, m.groups(), strict=True)
                               if norm(v) not in matched.allowed[s])
            return f"Error: '{value}' is not a valid {slot} here.", flags, state
        return self.judge(state, action, values)

    def judge(self, state: frozenset, action: Action, values: dict[str, str],
              parent: dict[str, str] | None = None) -> tuple[str, dict[str, bool], frozenset]:
        """Place, then logic checks for a parsed action; apply it when both pass."""
        flags = dict.fromkeys(FLAGS, False)
        for slot in action.spec.get("here", []):
            if not self.reachable(state, values[slot], parent):
                flags["place_error"] = True
                return f"There is no {values[slot]} here.", flags, state
        for pattern in action.spec.get("pre", []):
            neg = pattern[0] == "not"
            fact = _fill(pattern[1:] if neg else pattern, values)
            if (fact in state) == neg:
                flags["logic_error"] = True
                return self._why(state, fact, neg), flags, state
        new = self.apply(state, action, values)
        obs = action.spec.get("say", "Done.").format(**values)
        if self.where(new) != self.where(state):
            obs += " " + self.describe(new)
        return obs, flags, new

    def step(self, text: str) -> tuple[str, dict[str, bool]]:
        """Act: the engine-written observation and the three error flags; invalid means no change."""
        obs, flags, self.state = self.check(text)
        if not any(flags.values()) and self.goal_reached():
            obs += " " + GOAL_DONE
        return obs, flags

    @staticmethod
    def apply(state: frozenset, action: Action, values: dict[str, str]) -> frozenset:
        drop = [_fill(p, values) for p in action.spec.get("del", [])]
        kept = {f for f in state  # "*" (always last) matches any value
                if not any(len(f) == len(d) and f[:-1] == d[:-1] and d[-1] in ("*", f[-1]) for d in drop)}
        return frozenset(kept | {_fill(p, values) for p in action.spec.get("add", [])})

    def _why(self, state: frozenset, fact: tuple, neg: bool) -> str:
        """Engine-written words for a failed precondition."""
        kind, *args = fact
        if kind == "state":
            actual = self.state_of(state, args[0])
            if neg or actual:  # "The drawer is locked." whichever way the check failed
                return f"The {args[0]} is {args[1] if neg else actual}."
            return f"The {args[0]} is not {args[1]}."
        if kind == "holding":
            return f"You are already holding the {args[0]}." if neg else f"You are not holding the {args[0]}."
        if kind == "in":
            return f"The {args[0]} is {'already' if neg else 'not'} in the {args[1]}."
        if kind == "at":
            return f"You are already in the {args[1]}." if neg else f"You are not in the {args[1]}."
        return "Nothing happens: that is not possible right now."

    # ----- planning --------------------------------------------------------------------------
    def groundings(self) -> list[tuple[Action, dict[str, str]]]:
        """Every action with every combination of allowed values."""
        if self._groundings is None:
            out: list[tuple[Action, dict[str, str]]] = [(a, {}) for a in self.actions if not a.slots]
            for a in self.actions:
                combos: list[dict[str, str]] = [{}]
                for slot in a.slots:
                    combos = [{**c, slot: v} for c in combos for v in a.parameters[slot]]
                out += [(a, c) for c in combos if a.slots]
            self._groundings = out
        return self._groundings

    def _compiled(self) -> list[tuple]:
        """Groundings with their facts filled in once: the planner's inner loop is set operations only."""
        if self._fast is None:
            self._fast = []
            for a, v in self.groundings():
                pres = [(_fill(p[1:], v), True) if p[0] == "not" else (_fill(p, v), False)
                        for p in a.spec.get("pre", [])]
                drop = [_fill(p, v) for p in a.spec.get("del", [])]
                self._fast.append((a.render(v), frozenset(v[h] for h in a.spec.get("here", [])),
                                   frozenset(f for f, neg in pres if not neg),
                                   frozenset(f for f, neg in pres if neg),
                                   frozenset(d for d in drop if "*" not in d),
                                   frozenset(d[:-1] for d in drop if "*" in d),  # "*" is always last here
                                   frozenset(_fill(p, v) for p in a.spec.get("add", []))))
        return self._fast

    def successors(self, state: frozenset):
        """(action text, next state) for every valid action that changes the state (same rules as judge)."""
        parent = {f[1]: f[2] for f in state if f[0] == "in"}
        reach = set(self.locations) | {f[1] for f in state if f[0] == "holding"}
        reach |= {name for name in parent if self.reachable(state, name, parent)}
        for text, names, pos, neg, drop, wild, add in self._compiled():
            if not (names <= reach and pos <= state and neg.isdisjoint(state)):
                continue
            new = state - drop
            if wild:
                new = frozenset(f for f in new if f[:-1] not in wild)
            new |= add
            if new != state:
                yield text, new

    def plan(self, max_states: int = 20000) -> list[str] | None:
        """A shortest action sequence from the initial state to the goal (BFS), or None."""
        start = self.initial
        if self.goal <= start:
            return []
        parent: dict[frozenset, tuple[frozenset, str] | None] = {start: None}
        queue = deque([start])
        while queue and len(parent) < max_states:
            state = queue.popleft()
            for text, new in self.successors(state):
                if new in parent:
                    continue
                parent[new] = (state, text)
                if self.goal <= new:
                    steps = []
                    while parent[new] is not None:
                        new, text = parent[new]
                        steps.append(text)
                    return steps[::-1]
                queue.append(new)
        return None

    # ----- the paper's script dict -------------------------------------------------------------
    def to_script(self) -> dict[str, Any]:
        """The paper's script keys plus ``Engine`` (the executable spec), JSON-able."""
        e = self.engine
        actions = {}
        for a in self.actions:
            actions[a.template] = {"verification code": a.regex.pattern, "parameters": a.parameters,
                                   "description": a.spec.get("description", "")}
        # Engine keeps only the semantics; the template side lives once, in Available Actions
        template_side = ("verification code", "parameters", "description")
        semantics = [{k: v for k, v in a.spec.items() if k not in template_side} for a in self.actions]
        return {"Environment": e.get("environment") or environment(e), "Goal": e["goal_text"],
                "Completion Conditions": list(e["conditions"]), "Available Actions": actions,
                "Engine": {**e, "actions": semantics}}

    @classmethod
    def from_script(cls, script: dict[str, Any]) -> World:
        """Load an executable script; the Available Actions' regexes and parameters are authoritative."""
        engine = dict(script["Engine"])
        by_template = {a["template"]: a for a in engine["actions"]}
        engine["actions"] = [{**by_template.get(t, {}), "template": t, "parameters": v["parameters"],
                              "verification code": v["verification code"],
                              "description": v.get("description", "")}
                             for t, v in script["Available Actions"].items()]
        engine.setdefault("goal_text", script["Goal"])
        engine.setdefault("conditions", script["Completion Conditions"])
        return cls(engine)


def environment(engine: dict[str, Any]) -> dict[str, Any]:
    """The script's Environment field: locations with their contents, and the player."""
    init = [tuple(f) for f in engine["init"]]
    states = {f[1]: f[2] for f in init if f[0] == "state"}
    inside: dict[str, list[str]] = {}
    for f in init:
        if f[0] == "in":
            inside.setdefault(f[2], []).append(f[1])

    def node(name: str) -> dict[str, Any]:
        out: dict[str, Any] = {"state": states[name]} if name in states else {}
        for child in sorted(inside.get(name, [])):
            out[child] = node(child)
        return out

    return {"theme": engine.get("theme", ""), "locations": {loc: node(loc) for loc in engine["locations"]},
            "player": {"location": engine["start"],
                       "inventory": sorted(f[1] for f in init if f[0] == "holding")}}
