"""One vocabulary for configuration: a dataclass whose fields carry their help, read from YAML and flags.

Every config of the package (``TrainConfig``, ``SynthesisConfig``, ``EpisodeSettings``) is a dataclass
whose fields say what they are for in ``field(metadata={"help": ...})`` (TRL's convention). This module
turns any of them into a command line: ``--config run.yaml`` gives a mapping of fields, ``--<field>
<value>`` flags override it (flags win), values are read as YAML (``--learning_rate 2e-5``, ``--strict
false``, ``--suites '[babyai, pddl]'``), and ``--help`` prints every field's help and default. A bad
value, an unknown key or an unreadable file stops with one message naming the file and key, or the flag,
before any work starts::

    config = options.parse(SynthesisConfig, ["--teacher", "grounded", "--n", "20"])

>>> from dataclasses import dataclass, field
>>> @dataclass
... class Demo:
...     n: int = field(default=3, metadata={"help": "how many"})
...     name: str = field(default="x", metadata={"help": "what to call it"})
>>> parse(Demo, ["--n", "5"])
Demo(n=5, name='x')
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml


def settable(cls, skip: Iterable[str] = ()) -> list[dataclasses.Field]:
    """The fields of ``cls`` a file or a flag may set (``init`` fields not in ``skip``)."""
    return [f for f in dataclasses.fields(cls) if f.init and f.name not in set(skip)]


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def add_fields(parser: argparse.ArgumentParser, cls, skip: Iterable[str] = ()) -> None:
    """Add ``--config`` and one ``--<field>`` flag per settable field of ``cls``, with its help."""
    parser.add_argument("--config", type=Path, help=f"YAML mapping of {cls.__name__} fields")
    for f in settable(cls, skip):
        text = f.metadata.get("help", "").replace("%", "%%")  # argparse formats help with %
        default = _default(f)
        shown = "" if default is dataclasses.MISSING else f" (default: {default!r})"
        parser.add_argument(f"--{f.name}", dest=f.name, metavar="VALUE", default=argparse.SUPPRESS,
                            help=f"{text}{shown}")


def parser(cls, prog: str | None = None, description: str | None = None,
           skip: Iterable[str] = ()) -> argparse.ArgumentParser:
    """An argument parser for ``cls`` (no abbreviations: a mistyped flag fails instead of setting a field
    with the same prefix)."""
    p = argparse.ArgumentParser(prog=prog, description=description or (cls.__doc__ or "").split("\n")[0],
                                allow_abbrev=False)
    add_fields(p, cls, skip)
    return p


def read_mapping(path: str | Path, what: str) -> dict:
    """The YAML mapping in ``path`` (an empty file: ``{}``); ``what`` says what its keys are.

    Raises:
        ValueError: naming ``path``: it cannot be read, is not YAML, or is not a mapping.
    """
    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: cannot read the config: {error}") from None
    if not isinstance(values or {}, dict):
        raise ValueError(f"{path}: expected a mapping of {what}, got {type(values).__name__}")
    return values or {}


def from_args(cls, args: dict[str, Any], skip: Iterable[str] = (), paths: Iterable[str] = (),
              check: Callable[[str, Any], Any] | None = None):
    """The ``cls`` instance that parsed arguments describe (``config`` the YAML file, the rest flags).

    ``paths``: fields kept as strings (``--output_dir 1`` stays a path); ``check(name, value)``: a
    per-field check (e.g. ``TrainConfig``'s) whose error is reported with where the value came from.

    Raises:
        SystemExit: one message naming the file and key, or the flag, that is wrong.
    """
    args = dict(args)
    source = args.pop("config", None)
    names = [f.name for f in settable(cls, skip)]
    values, origin = {}, {}
    if source is not None:
        try:
            values = read_mapping(source, f"{cls.__name__} fields")
        except ValueError as error:
            raise SystemExit(str(error)) from None
        unknown = sorted(set(map(str, values)) - set(names))
        if unknown:
            raise SystemExit(f"{source}: unknown key(s) {unknown}; {cls.__name__} fields are {names}")
        origin = {name: f"{source}: {name}" for name in values}
    for name, text in args.items():
        if name not in names:
            continue
        try:
            values[name] = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise SystemExit(f"--{name}: cannot read {text!r}: {error}") from None
        origin[name] = f"--{name}"
    for name in paths:
        if values.get(name) is not None:
            values[name] = str(values[name])
    if check is not None:
        for name, value in values.items():  # each value alone first: the error names where it came from
            try:
                values[name] = check(name, value)
            except ValueError as error:
                raise SystemExit(f"{origin[name]}: {error}") from None
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        where = f"{source}: " if source is not None else ""
        raise SystemExit(f"{where}{error}") from None


def parse(cls, argv: Sequence[str] | None = None, prog: str | None = None, skip: Iterable[str] = (),
          paths: Iterable[str] = (), check: Callable[[str, Any], Any] | None = None):
    """Parse ``argv`` (``--config FILE`` and ``--<field> VALUE`` flags) into a ``cls`` instance."""
    args = vars(parser(cls, prog, skip=skip).parse_args(argv))
    return from_args(cls, args, skip, paths, check)
