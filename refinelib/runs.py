"""Run folders that stay honest: atomic small files, one writer at a time, and a recorded run identity.

Every resumable artifact (an episode log, a synthesis run, an ablation folder) is re-used only when it was
made by the same run. Three tools make that hold the same way everywhere:

- :func:`write_atomic` / :func:`write_json_atomic`: a small file is written to a unique temporary name in
  the same folder and renamed over the target, so a reader or a killed writer never leaves half a file
  (and two writers never share a temporary file).
- :class:`RunLock`: ``with RunLock(folder):`` holds an exclusive ``flock`` on ``<folder>/.lock``; a second
  writer gets :class:`RunLockedError` naming the holder's pid at once instead of interleaving its records.
  The kernel drops the lock when the holder exits or is killed, so there is no stale lock to clean up.
- :func:`check_identity`: the *identity* of a run (settings, model, prompt / environment / suite
  versions, :func:`code_version` of the code that produced it) is kept in a JSON sidecar. A different
  identity either refuses with one :class:`StaleRunError` naming every changed field, or sets the old
  files aside as ``<name>.stale-<k><suffix>`` (with a warning naming the fields) so the run starts over.

::

    from refinelib import runs
    with runs.RunLock(folder):
        runs.check_identity(folder / "run.json", {"teacher": runs.code_version("refinelib.synth.teacher")},
                            "set_aside", files=[folder / "samples.jsonl"])
        ...
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import json
import os
import socket
import threading
import uuid
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType

__all__ = ["RunLock", "RunLockedError", "StaleRunError", "StaleRunWarning", "changed_fields",
           "check_identity", "code_version", "set_aside", "set_aside_contents", "write_atomic",
           "write_json_atomic"]

LOCK_NAME = ".lock"


# ----- atomic writes ---------------------------------------------------------------------------------
def write_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` via a uniquely named temporary file in the same folder and a rename.

    Readers never see half a file, a killed writer leaves the old file (or none), and two writers (other
    processes or threads) never write into the same temporary file: the last rename wins whole.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # pid + random part: unique across processes and threads; "x" refuses to reuse a leftover name
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("x", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())  # the rename must not land before the data (power loss: empty file)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | Path, obj, indent: int | None = 2, **dumps) -> Path:
    """:func:`write_atomic` of ``obj`` as JSON (UTF-8, a final newline); ``dumps`` go to ``json.dumps``."""
    dumps.setdefault("ensure_ascii", False)
    return write_atomic(path, json.dumps(obj, indent=indent, **dumps) + "\n")


# ----- one writer per run folder ---------------------------------------------------------------------
class RunLockedError(RuntimeError):
    """Another process (or thread) is writing the run folder."""


# flock locks belong to an open file, so a second open() of the same .lock in this process would block
# itself: the same thread may nest RunLock on one folder (evaluate inside experiment); other threads may not.
_held: dict[str, tuple[int, int, int]] = {}  # real path -> (thread id, depth, fd)
_held_guard = threading.Lock()


class RunLock:
    """``with RunLock(folder):`` — hold ``<folder>/.lock`` exclusively (non-blocking ``flock``).

    The file records the holder's pid and host; a second writer gets :class:`RunLockedError` naming the
    folder and that pid. The lock is released on exit and, by the kernel, when the holder dies.
    Nesting in the same thread is allowed (the outermost exit releases).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME

    def __enter__(self) -> RunLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        key = self._key = os.path.realpath(self.path)  # kept: the exit releases what the entry took
        with _held_guard:
            held = _held.get(key)
            if held is not None:
                thread, depth, fd = held
                if thread != threading.get_ident():
                    raise RunLockedError(self._message(f"pid {os.getpid()} (this process, another thread)"))
                _held[key] = (thread, depth + 1, fd)
                return self
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
                os.close(fd)
                raise RunLockedError(self._message(holder or "a process that has not written its pid yet")) \
                    from None
            except BaseException:
                os.close(fd)
                raise
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
            _held[key] = (threading.get_ident(), 1, fd)
        return self

    def __exit__(self, *exc) -> None:
        key = self._key
        with _held_guard:
            thread, depth, fd = _held[key]
            if depth > 1:
                _held[key] = (thread, depth - 1, fd)
                return
            del _held[key]
            os.ftruncate(fd, 0)  # no holder any more: a later reader must not blame this pid
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _message(self, holder: str) -> str:
        return (f"{self.folder} is being written by another run ({holder}); wait for it to finish or stop "
                f"it, or use another run folder")


# ----- what made a run -------------------------------------------------------------------------------
def _source_files(item: ModuleType | str | Path) -> tuple[Path, list[Path]]:
    """(root, files): a module's file, a package's ``*.py`` files, a file, or every file of a folder."""
    if isinstance(item, str) and not os.path.exists(item):
        item = importlib.import_module(item)
    if isinstance(item, ModuleType):
        if item.__file__ is None:
            raise ValueError(f"module {item.__name__} has no source file to version")
        source = Path(item.__file__)
        if source.name == "__init__.py":
            package = source.parent
            return package, sorted(p for p in package.rglob("*.py") if "__pycache__" not in p.parts)
        return source.parent, [source]
    path = Path(item)
    if path.is_dir():
        return path, sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                            and not p.name.startswith("."))
    if not path.is_file():
        raise FileNotFoundError(f"code_version: {path} is neither a module nor an existing file or folder")
    return path.parent, [path]


def code_version(*modules_or_paths: ModuleType | str | Path) -> str:
    """A short hash (12 hex digits) of the source of the given modules, packages, files or folders.

    A module name (``"refinelib.synth.teacher"``) or module object gives its file; a package gives all its
    ``*.py`` files; a folder gives every file under it. Files are named relative to their root, so the
    hash does not change when the checkout moves, only when the code does.
    """
    if not modules_or_paths:
        raise ValueError("code_version needs at least one module or path")
    digest = hashlib.sha256()
    for item in modules_or_paths:
        root, files = _source_files(item)
        for file in files:
            digest.update(file.relative_to(root).as_posix().encode() + b"\0")
            digest.update(file.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


class StaleRunError(ValueError):
    """A run folder holds results made by another run identity."""


class StaleRunWarning(UserWarning):
    """Results made by another run identity were set aside and will be made again."""


def jsonable(value):
    """``value`` as it is stored and read back: tuples become lists, keys strings, other objects ``str``.

    >>> jsonable({"sizes": (1, 2), 3: Path("a")})
    {'sizes': [1, 2], '3': 'a'}
    """
    return json.loads(json.dumps(value, default=str))


def _normalised(identity: Mapping) -> dict:
    # compare what would be stored, exactly as it is read back
    return jsonable(dict(identity))


def changed_fields(old: Mapping, new: Mapping) -> list[str]:
    """The fields whose values differ; a field missing on one side counts as None."""
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def describe_changes(old: Mapping, new: Mapping, fields: Iterable[str] | None = None) -> str:
    """``"field: old -> new, ..."`` for the changed ``fields`` (default: :func:`changed_fields`)."""
    fields = changed_fields(old, new) if fields is None else fields
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in fields)


def _aside_name(path: Path, k: int) -> Path:
    return path.with_name(f"{path.stem}.stale-{k}{path.suffix}")


def set_aside(*paths: str | Path) -> list[Path]:
    """Rename the existing ``paths`` (files or folders) to ``<name>.stale-<k><suffix>``, with the first
    ``k`` free for all of them, and return the new paths: kept for inspection, never re-used."""
    present = [Path(p) for p in paths if Path(p).exists()]
    k = 1
    while any(_aside_name(p, k).exists() for p in present):
        k += 1
    for p in present:
        p.rename(_aside_name(p, k))
    return [_aside_name(p, k) for p in present]


def set_aside_contents(folder: str | Path) -> Path:
    """Move everything in ``folder`` but its lock into a new sibling ``<name>.stale-<k>`` (first ``k``
    free) and return it: the folder stays, and so does the :class:`RunLock` held on it."""
    folder = Path(folder)
    k = 1
    while _aside_name(folder, k).exists():
        k += 1
    aside = _aside_name(folder, k)
    aside.mkdir()
    for child in folder.iterdir():
        if child.name != LOCK_NAME:
            child.rename(aside / child.name)
    return aside


def check_identity(sidecar_path: str | Path, identity: Mapping, on_mismatch: str = "refuse",
                   files: Iterable[str | Path] = (), *, partial: bool = False,
                   whole_folder: bool = False) -> None:
    """Make sure the results next to ``sidecar_path`` were made by ``identity``; then record it there.

    - No sidecar and none of ``files``: a fresh run, the identity is written.
    - Same identity (fields None or missing on both sides count as equal): nothing happens.
    - Another identity, an unreadable sidecar, or ``files`` present without a sidecar (made before
      identities were recorded):

      - ``"refuse"`` raises :class:`StaleRunError` naming the folder and each field ``old -> new``;
      - ``"set_aside"`` renames the sidecar and ``files`` to ``<name>.stale-<k><suffix>`` (the first
        ``k`` free for all of them), warns (:class:`StaleRunWarning`) naming the fields, and writes
        the new identity, so the run starts over with no silent mix.

    ``partial=True`` compares only the fields both sides have: a record grows field by field as calls
    add to the same artifact (the versions of a suite first played by a later call into the same episode
    log, a caller's model settings next to the policy's), and the recorded fields of other writers are
    kept. After a set aside only the given fields are recorded.

    ``whole_folder=True`` is for a folder that is one result (a trained model: checkpoints, adapter,
    manifest): everything in the sidecar's folder counts as ``files``, and a set aside moves it all (but
    the folder's lock) into a sibling ``<folder>.stale-<k>/``.
    """
    if on_mismatch not in ("refuse", "set_aside"):
        raise ValueError(f"on_mismatch must be 'refuse' or 'set_aside', not {on_mismatch!r}")
    sidecar = Path(sidecar_path)
    files = [Path(f) for f in files]
    if whole_folder and sidecar.parent.is_dir():
        files += [p for p in sidecar.parent.iterdir() if p.name != LOCK_NAME and p != sidecar]
    new = _normalised(identity)
    if sidecar.is_file():
        try:
            old = json.loads(sidecar.read_text(encoding="utf-8"))
            if not isinstance(old, dict):
                raise ValueError("not a JSON object")
        except ValueError as why:
            diff = f"the recorded identity is unreadable ({why})"
        else:
            compared = {k: v for k, v in new.items() if k in old} if partial else new
            changed = changed_fields({k: old[k] for k in compared} if partial else old, compared)
            if not changed:
                merged = {**old, **new} if partial else new
                if old != merged:  # new fields, or None/missing differences: keep the record complete
                    write_json_atomic(sidecar, merged)
                return
            diff = describe_changes(old, new, changed)
    elif any(f.exists() for f in files):
        diff = f"no identity recorded (no {sidecar.name}; made by an older refinelib)"
    else:
        write_json_atomic(sidecar, new)
        return
    present = [p for p in [sidecar, *files] if p.exists()]
    if on_mismatch == "refuse":
        raise StaleRunError(f"{sidecar.parent} holds results of another run: {diff}. Use another run folder, "
                            f"or delete {', '.join(p.name for p in present)} there to start over")
    kept = [set_aside_contents(sidecar.parent)] if whole_folder else set_aside(*present)
    warnings.warn(f"{sidecar.parent}: {', '.join(p.name for p in present)} came from another run ({diff}); "
                  f"kept as {', '.join(p.name for p in kept)}, and the run starts over", StaleRunWarning,
                  stacklevel=2)
    write_json_atomic(sidecar, new)
