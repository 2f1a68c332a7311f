"""Append-only JSONL files that survive a kill: each line is written whole, flushed and synced.

A line cut by a kill (the process died mid-write) is skipped when read back and counted, and the next
append starts on a fresh line, so resumable jobs (evaluation logs, synthesis samples) lose at most the
record being written and never duplicate one. Files are read line by line as bytes and each line is
decoded on its own, so a kill in the middle of a multi-byte UTF-8 character tears one line, not the file.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "log.jsonl"
>>> append(path, [{"a": 1}, {"b": "é"}])
>>> with path.open("ab") as f:
...     _ = f.write('{"c": "é'.encode()[:-1])   # a kill inside the two bytes of "é"
>>> read(path)
([{'a': 1}, {'b': 'é'}], 1)
>>> append(path, [{"d": 2}])                    # starts on a fresh line; the torn one stays skipped
>>> read(path)
([{'a': 1}, {'b': 'é'}, {'d': 2}], 1)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path


def read_numbered(path: str | Path) -> tuple[list[tuple[int, object]], int]:
    """``([(line number, object), ...], skipped)`` for a log written with :func:`append`.

    Every line that is not complete UTF-8 JSON (a write cut by a kill, whatever the encoding of the
    character it was cut in) is skipped and counted; a missing file is empty.
    """
    path = Path(path)
    if not path.exists():
        return [], 0
    objects, skipped = [], 0
    with path.open("rb") as handle:  # bytes: one torn character must not make the whole file unreadable
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                objects.append((number, json.loads(raw.decode("utf-8"))))
            except (UnicodeDecodeError, json.JSONDecodeError):
                skipped += 1
    return objects, skipped


def read(path: str | Path) -> tuple[list, int]:
    """``(objects, skipped)``: every complete JSON line in the order written, and the unreadable ones."""
    numbered_objects, skipped = read_numbered(path)
    return [obj for _, obj in numbered_objects], skipped


def numbered(path: str | Path, error: type[ValueError] = ValueError) -> Iterator[tuple[int, object]]:
    """``(line number, object)`` for every non-blank line of a JSONL input file; a line that is not JSON
    (or not UTF-8) raises one ``error`` naming ``file:line`` (input data is never skipped silently)."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as why:
                raise error(f"{path}:{number}: not UTF-8 text ({why})") from None
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as why:
                raise error(f"{path}:{number}: not valid JSON ({why})") from None


def append(path: str | Path, objects: Iterable) -> None:
    """Append each object as one flushed, fsynced line (a kill loses at most the line being written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        if f.tell() and not _ends_with_newline(path):
            f.write("\n")  # a previous run died mid-line: start clean, that fragment is skipped
        for obj in objects:
            f.write((obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"
