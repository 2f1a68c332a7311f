"""Append-only JSONL files that survive a kill: each line is written whole, flushed and synced.

A line cut by a kill (the process died mid-write) is skipped when read back and counted, and the next
append starts on a fresh line, so resumable jobs (evaluation logs, synthesis samples) lose at most the
record being written and never duplicate one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path


def read(path: str | Path) -> tuple[list, int]:
    """``(objects, skipped)``: every complete JSON line in the order written, and the unreadable ones."""
    path = Path(path)
    if not path.exists():
        return [], 0
    objects, skipped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            objects.append(json.loads(line))
        except json.JSONDecodeError:
            skipped += 1
    return objects, skipped


def numbered(path: str | Path, error: type[ValueError] = ValueError) -> Iterator[tuple[int, object]]:
    """``(line number, object)`` for every non-blank line of a JSONL input file; a line that is not JSON
    raises one ``error`` naming ``file:line`` (input data is never skipped silently)."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
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
