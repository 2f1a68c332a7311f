"""Command line for :func:`refinelib.tune.train.train`, so ``accelerate launch`` can start a tuning run.

``python -m refinelib.tune.train_cli [--config run.yaml] [--<field> <value> ...]``: the YAML file and the
flags both name :class:`~refinelib.tune.train.TrainConfig` fields (flags win); values are read as YAML, so
``--learning_rate 2e-5``, ``--bf16 true`` and ``--lora_target_modules '[q_proj, v_proj]'`` work, and a
number YAML leaves as a string (``learning_rate: 2e-5``) is converted. ``--help`` lists every field with
its help text. A bad value stops with one message naming the file or flag and the field, before any
model loads. On GPUs::

    accelerate launch --config_file configs/accelerate/deepspeed_zero3.yaml -m refinelib.tune.train_cli \\
        --base_model meta-llama/Meta-Llama-3-8B-Instruct --method full --train_file data/train.jsonl ...

Every process runs the same command; the main process writes the outputs and prints a JSON summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from refinelib import runs
from refinelib.tune.train import TrainConfig, check_field, train

IN_MEMORY = {"train_records", "validation_records"}  # not settable from a file or a command line
FIELDS = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in IN_MEMORY]
PATHS = ("train_file", "validation_file", "output_dir", "base_model")  # `--output_dir 1` stays a path


def parser() -> argparse.ArgumentParser:
    # no abbreviations: a mistyped field must fail, not silently set a field with the same prefix
    p = argparse.ArgumentParser(prog="python -m refinelib.tune.train_cli", allow_abbrev=False,
                                description="Refinement tuning (loss-masked SFT) from YAML and flags.")
    p.add_argument("--config", type=Path, help="YAML mapping of TrainConfig fields")
    for f in dataclasses.fields(TrainConfig):
        if f.name in IN_MEMORY:
            continue
        text = f.metadata["help"].replace("%", "%%")  # argparse formats help with %
        p.add_argument(f"--{f.name}", dest=f.name, metavar="VALUE", default=argparse.SUPPRESS,
                       help=f"{text} (default: {f.default!r})")
    return p


def load_config(argv: Sequence[str] | None = None) -> TrainConfig:
    """The TrainConfig that a command line describes.

    Raises:
        SystemExit: with one message naming the file and key, or the flag, that is wrong.
    """
    args = vars(parser().parse_args(argv))
    source = args.pop("config")
    values, origin = {}, {}
    if source is not None:
        try:
            values = yaml.safe_load(source.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise SystemExit(f"{source}: cannot read the config: {error}") from None
        if not isinstance(values, dict):
            kind = type(values).__name__
            raise SystemExit(f"{source}: expected a mapping of TrainConfig fields, got {kind}")
        unknown = sorted(set(map(str, values)) - set(FIELDS))
        if unknown:
            raise SystemExit(f"{source}: unknown key(s) {unknown}; TrainConfig fields are {FIELDS}")
        origin = {name: f"{source}: {name}" for name in values}
    for name, text in args.items():
        try:
            values[name] = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise SystemExit(f"--{name}: cannot read {text!r}: {error}") from None
        origin[name] = f"--{name}"
    for name in PATHS:
        if values.get(name) is not None:
            values[name] = str(values[name])
    for name, value in values.items():  # each value alone first: the error names where it came from
        try:
            values[name] = check_field(name, value)
        except ValueError as error:
            raise SystemExit(f"{origin[name]}: {error}") from None
    try:
        return TrainConfig(**values)
    except (TypeError, ValueError) as error:
        where = f"{source}: " if source is not None else ""
        raise SystemExit(f"{where}{error}") from None


def main(argv: Sequence[str] | None = None) -> int:
    config = load_config(argv)
    try:
        result = train(config)
    except (FileNotFoundError, NotADirectoryError, runs.RunLockedError, runs.StaleRunError) as error:
        raise SystemExit(f"error: {error}") from None  # bad input or a busy folder: one line, no traceback
    if result.manifest_path is not None:  # only the main process writes (and reports) a finished run
        summary = {"output_dir": str(result.output_dir), "model_dir": str(result.model_dir),
                   "global_step": result.global_step, "train_loss": result.train_loss,
                   "eval_loss": result.eval_loss, "counts": result.counts}
        print(json.dumps(summary, indent=1))
    return 0 if result.completed else 1


if __name__ == "__main__":
    sys.exit(main())
