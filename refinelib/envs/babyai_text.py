"""BabyAI-text: what the agent sees in a BabyAI level and what it can do, in AgentBoard's words.

Pure functions over minigrid's unwrapped environment ``u`` (no import of minigrid here, so the
module loads without the backend). :func:`visible_things` lists the objects in the agent's 7x7
view, numbered per name by distance ("red ball 1" is the nearest visible red ball);
:func:`describe` renders them as AgentBoard does ("There is a red ball 1 right in front of you
5 steps away."); :func:`expand` maps every valid high-level action (``go to red ball 1``,
``pickup red ball 1``, ``go through red open door 1``, ...) to minigrid's primitive actions
and gives each recognisable but invalid action a specific message.

Paths are shortest in primitive actions over the cells the agent has *seen* so far (the
``seen`` mask the environment keeps), never through unseen cells, so the agent cannot use the
map it has not explored. Objects never move on their own in BabyAI, so a planned path always
executes.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import Any

# minigrid's action ids (minigrid.core.actions.Actions)
LEFT, RIGHT, FORWARD, PICKUP, DROP, TOGGLE, DONE = range(7)
PRIMITIVE_TEXT = {LEFT: "turn left", RIGHT: "turn right", FORWARD: "move forward",
                  DROP: "drop", TOGGLE: "toggle"}
DIR_TO_VEC = ((1, 0), (0, 1), (-1, 0), (0, -1))  # minigrid: 0 = east, then clockwise
PICKABLE = ("key", "ball", "box")
LISTED = ("key", "ball", "box", "door", "goal", "lava")  # walls and floors are not "objects"
_TARGETED = re.compile(r"^(go to|pickup|pick up|go through|toggle and go through) (.+?)(?: (\d+))?$")


@dataclass(frozen=True)
class Thing:
    """A visible object with its name, number, absolute cell and offset from the agent."""

    name: str  # "red ball", "yellow locked door"
    number: int  # 1 = the nearest visible thing of that name
    pos: tuple[int, int]
    forward: int  # steps ahead of the agent
    right: int  # steps to the agent's right (negative: left)
    obj: Any  # the minigrid WorldObj

    @property
    def label(self) -> str:
        return f"{self.name} {self.number}"


def thing_name(obj: Any) -> str:
    """AgentBoard's names: colour + type, doors with their state ("blue locked door")."""
    if obj.type == "door":
        state = "open" if obj.is_open else "locked" if obj.is_locked else "closed"
        return f"{obj.color} {state} door"
    return f"{obj.color} {obj.type}"


def visible_cells(u: Any) -> list[tuple[int, int, tuple[int, int]]]:
    """(forward, right, absolute cell) for every cell the agent sees now."""
    cells = []
    view, vis_mask = u.gen_obs_grid()  # egocentric: the agent at (size // 2, size - 1), facing up
    size = view.width
    (fx, fy), (rx, ry) = u.dir_vec, u.right_vec
    ax, ay = u.agent_pos
    for j in range(size):
        for i in range(size):
            forward, right = size - 1 - j, i - size // 2
            x, y = ax + fx * forward + rx * right, ay + fy * forward + ry * right
            if vis_mask[i, j] and 0 <= x < u.width and 0 <= y < u.height:
                cells.append((forward, int(right), (int(x), int(y))))
    return cells


def visible_things(u: Any, cells: list) -> list[Thing]:
    """The objects in view, nearest first, numbered per name (ties: ahead, then left, then right)."""
    found = []
    for forward, right, cell in cells:
        obj = u.grid.get(*cell)
        if (forward, right) != (0, 0) and obj is not None and obj.type in LISTED:
            found.append((forward + abs(right), abs(right), right, forward, cell, obj))
    found.sort(key=lambda f: f[:3])
    counts: dict[str, int] = {}
    things = []
    for _, _, right, forward, cell, obj in found:
        name = thing_name(obj)
        counts[name] = counts.get(name, 0) + 1
        things.append(Thing(name, counts[name], cell, forward, right, obj))
    return things


def _steps(n: int) -> str:
    return f"{n} step" if n == 1 else f"{n} steps"


def _where(t: Thing) -> str:
    side = "right" if t.right > 0 else "left"
    if t.right == 0:
        return f"right in front of you {_steps(t.forward)} away"
    if t.forward == 0:
        return f"{_steps(abs(t.right))} to your {side}"
    return f"{_steps(t.forward)} in front of you and {_steps(abs(t.right))} to your {side}"


def _facing_wall(u: Any, cells: list) -> int | None:
    """Distance to the wall straight ahead if nothing else stands before it in view."""
    (fx, fy), (ax, ay) = u.dir_vec, u.agent_pos
    visible = {(f, r) for f, r, _ in cells}
    for k in range(1, u.agent_view_size):
        x, y = ax + fx * k, ay + fy * k
        if (k, 0) not in visible or not (0 <= x < u.width and 0 <= y < u.height):
            return None
        obj = u.grid.get(x, y)
        if obj is not None and obj.type == "wall":
            return k
        if obj is not None and not obj.can_overlap():
            return None  # an object blocks the view of the wall; it is listed already
    return None


def describe(u: Any, things: list[Thing], cells: list) -> str:
    """The observation text, in AgentBoard's style."""
    if things:
        parts = ["In front of you in this room, you can see several objects:"]
        parts += [f"There is a {t.label} {_where(t)}." for t in things]
    else:
        parts = ["You cannot see any objects within sight."]
    parts.append("The room has walls around you.")
    wall = _facing_wall(u, cells)
    if wall is not None:
        parts.append(f"You are facing a wall {_steps(wall)} away.")
    carrying = u.carrying
    parts.append(f"You are carrying a {carrying.color} {carrying.type}." if carrying
                 else "You are not carrying anything.")
    return " ".join(parts)


def _passable(obj: Any) -> bool:
    return obj is None or (obj.can_overlap() and obj.type != "lava")


def _search(u: Any, seen: Any, targets: set) -> tuple[dict, dict, dict]:
    """BFS over agent poses on seen, passable cells; first pose facing / standing on each target.

    Stops once every target cell is both faced and stood on (or cannot be).
    """
    width = u.width
    free = {(i % width, i // width) for i, obj in enumerate(u.grid.grid)
            if _passable(obj) and seen[i % width, i // width]}
    start = (*map(int, u.agent_pos), int(u.agent_dir))
    parent: dict = {start: None}
    facing: dict = {}
    standing: dict = {}
    queue = deque([start])
    left = set(targets)
    while queue and left:
        x, y, d = state = queue.popleft()
        dx, dy = DIR_TO_VEC[d]
        ahead = (x + dx, y + dy)
        if ahead not in facing:
            facing[ahead] = state
            if ahead not in free or ahead in standing:
                left.discard(ahead)
        if (x, y) not in standing:
            standing[(x, y)] = state
            if (x, y) in facing:
                left.discard((x, y))
        turns = ((LEFT, (x, y, (d - 1) % 4)), (RIGHT, (x, y, (d + 1) % 4)))
        for action, nxt in ((FORWARD, (*ahead, d)), *turns):
            if nxt not in parent and (action != FORWARD or ahead in free):
                parent[nxt] = (state, action)
                queue.append(nxt)
    return parent, facing, standing


def _path(parent: dict, state: tuple | None) -> list[int] | None:
    if state is None:
        return None
    path = []
    while parent[state] is not None:
        state, action = parent[state]
        path.append(action)
    return path[::-1]


# Long on purpose: one table of what can be said in the current state, action by action, each entry a few
# lines (the valid command, or the feedback for a recognisable invalid one).
def expand(u: Any, seen: Any, things: list[Thing]) -> tuple[dict[str, list[int]], dict[str, str]]:
    """Valid actions -> primitive actions, and recognisable invalid actions -> feedback."""
    actions: dict[str, list[int]] = {"turn left": [LEFT], "turn right": [RIGHT]}
    errors: dict[str, str] = {}
    front = tuple(int(v) for v in u.front_pos)
    ahead = u.grid.get(*front)
    carrying = u.carrying
    held = f"{carrying.color} {carrying.type}" if carrying else None

    if _passable(ahead):
        actions["move forward"] = [FORWARD]
    else:
        errors["move forward"] = f"You cannot move forward: {_blocker(ahead)}."
    if carrying is None:
        errors["drop"] = "You cannot drop anything: you are not carrying anything."
    elif ahead is not None:
        errors["drop"] = f"You cannot drop the {held} here: {_blocker(ahead)}."
    else:
        actions["drop"] = [DROP]
    if ahead is not None and ahead.type == "door" and _can_open(ahead, carrying):
        actions["toggle"] = [TOGGLE]
    elif ahead is not None and ahead.type == "door":
        errors["toggle"] = f"You cannot toggle: the {ahead.color} door in front of you is locked " \
                           f"and you are not carrying the {ahead.color} key."
    else:
        errors["toggle"] = "You cannot toggle: there is no door in front of you."

    parent, facing, standing = _search(u, seen, {t.pos for t in things})
    for t in things:
        to_face = _path(parent, facing.get(t.pos))
        no_path = "there is no known path leading to it"
        go_to = f"go to {t.label}"
        if to_face is None:
            errors[go_to] = f"You cannot go to {t.label}: {no_path}."
        else:  # already facing it: "done" is minigrid's no-op that still runs the verifier
            actions[go_to] = to_face or [DONE]
        pickup = f"pickup {t.label}"
        if t.obj.type not in PICKABLE:
            errors[pickup] = f"You cannot pick up {t.label}: only keys, balls and boxes can be picked up."
        elif carrying is not None:
            errors[pickup] = f"You cannot pick up {t.label}: you are already carrying a {held}."
        elif to_face is None:
            errors[pickup] = f"You cannot pick up {t.label}: {no_path}."
        else:
            actions[pickup] = to_face + [PICKUP]
        through, toggle_through = f"go through {t.label}", f"toggle and go through {t.label}"
        if t.obj.type != "door":
            errors[through] = errors[toggle_through] = f"You cannot go through {t.label}: it is not a door."
            continue
        if t.obj.is_open:
            arrive = _path(parent, standing.get(t.pos))
            if arrive is None:
                errors[through] = f"You cannot go through {t.label}: {no_path}."
            else:
                actions[through] = arrive
            errors[toggle_through] = f'The {t.label} is already open: use "go through {t.label}".'
            continue
        state = "locked" if t.obj.is_locked else "closed"
        errors[through] = f'You cannot go through {t.label}: it is {state}. Try "toggle and go through".'
        if not _can_open(t.obj, carrying):
            errors[toggle_through] = f"You cannot open {t.label}: it is locked and you are not " \
                                     f"carrying the {t.obj.color} key."
        elif to_face is None:
            errors[toggle_through] = f"You cannot toggle and go through {t.label}: {no_path}."
        else:
            actions[toggle_through] = to_face + [TOGGLE, FORWARD]
    return actions, errors


def _can_open(door: Any, carrying: Any) -> bool:
    if not door.is_locked:
        return True
    return carrying is not None and carrying.type == "key" and carrying.color == door.color


def _blocker(obj: Any) -> str:
    if obj.type == "wall":
        return "there is a wall in front of you"
    if obj.type == "door":
        state = "locked" if obj.is_locked else "closed"
        return f"the {obj.color} door in front of you is {state}"
    return f"there is a {obj.color} {obj.type} in front of you"


def feedback(action: str, errors: dict[str, str]) -> str:
    """The environment's message for an invalid action (AgentBoard-like, but specific)."""
    if action in errors:
        return errors[action]
    match = _TARGETED.match(action)
    if match:
        verb, name, number = match.groups()
        if verb == "pick up":
            return 'To pick something up, say "pickup <color> <type> <number>", e.g. "pickup red ball 1".'
        if number is None:
            return f'Name the object with its colour, type and number, e.g. "{verb} red ball 1".'
        return f"There is no {name} {number} in sight."
    return f'The action "{action}" is not recognized. Say "check valid actions" to list the valid actions.'
