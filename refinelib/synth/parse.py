"""JSON out of an LLM's reply: a fenced block, a bare object, or one found inside prose.

Teachers answer in JSON "only", and often do not: :func:`parse_json` finds the value of the wanted type in
whatever came back and says why when there is none, so a reply becomes a verdict, never a crash.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass


class _Object(dict):
    """A parsed JSON object that remembers keys it saw twice (json.loads keeps the last silently)."""

    duplicates: tuple = ()


def _object_hook(pairs):
    obj = _Object(pairs)
    if len(obj) != len(pairs):
        seen, dups = set(), []
        for key, _ in pairs:
            if key in seen:
                dups.append(key)
            seen.add(key)
        obj.duplicates = tuple(dups)
    return obj


_DECODER = json.JSONDecoder(object_pairs_hook=_object_hook)


_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\r?\n?(.*?)```", re.S)


_MAX_STARTS = 2000  # bracket positions tried in prose before giving up (bounds the work on garbage)


def parse_json(text, want: type = object):
    """Extract a JSON value of type ``want`` (``list``, ``dict`` or ``object``) from model text.

    Tries, in order: the whole text; each fenced block (```json ... ```); the longest JSON value of the
    wanted type that starts at some ``[`` or ``{`` in the text (prose around it is ignored). Parsed
    objects (anything not ``str``/``bytes``) are returned as they are.

    Returns:
        ``(value, None)`` or ``(None, why)``; never raises.

    >>> parse_json('Here it is:\\n```json\\n[{"a": 1}]\\n```\\nDone.', list)
    ([{'a': 1}], None)
    >>> parse_json('Sure! {"Goal": "x"} Hope this helps.', dict)
    ({'Goal': 'x'}, None)
    """
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8", errors="replace")
    if not isinstance(text, str):
        return text, None
    wanted = (want,) if want is not object else (list, dict)

    def whole(candidate: str):
        try:
            value = _DECODER.decode(candidate.strip())
        except (ValueError, RecursionError):
            return None
        return value if isinstance(value, wanted) else None

    for candidate in (text, *(m.group(1) for m in _FENCE.finditer(text))):
        value = whole(candidate)
        if value is not None:
            return value, None
    best, best_len, pos, tries = None, -1, 0, 0
    openers = "[" if wanted == (list,) else "{" if wanted == (dict,) else "[{"
    while tries < _MAX_STARTS:
        starts = [i for i in (text.find(c, pos) for c in openers) if i >= 0]
        if not starts:
            break
        start, tries = min(starts), tries + 1
        try:
            value, end = _DECODER.raw_decode(text, start)
        except (ValueError, RecursionError):
            pos = start + 1
            continue
        if isinstance(value, wanted):
            if end - start > best_len:
                best, best_len = value, end - start
            pos = end  # values nested inside this one are shorter
        else:
            pos = start + 1
    if best is not None:
        return best, None
    kind = {list: "JSON list", dict: "JSON object"}.get(want, "JSON value")
    if not text.strip():
        return None, "the text is empty"
    return None, f"no {kind} could be parsed from the text ({len(text)} characters)"
