"""Command line for :func:`refinelib.train.train`, so ``accelerate launch`` can start a tuning run.

``python -m refinelib.train_cli [--config run.yaml] [--<field> <value> ...]``: the YAML file and the
flags both name :class:`~refinelib.train.TrainConfig` fields (flags win); values are read as YAML, so
``--learning_rate 2e-5``, ``--bf16 true`` and ``--lora_target_modules '[q_proj, v_proj]'`` work. On GPUs::

    accelerate launch --config_file configs/accelerate/deepspeed_zero3.yaml -m refinelib.train_cli \\
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

from refinelib.train import TrainConfig, train

IN_MEMORY = {"train_records", "validation_records"}  # not settable from a file or a command line
FIELDS = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in IN_MEMORY]


def parser() -> argparse.ArgumentParser:
    # no abbreviations: a mistyped field must fail, not silently set a field with the same prefix
    p = argparse.ArgumentParser(prog="python -m refinelib.train_cli", allow_abbrev=False,
                                description="Refinement tuning (loss-masked SFT) from YAML and flags.")
    p.add_argument("--config", type=Path, help="YAML mapping of TrainConfig fields")
    for name in FIELDS:
        p.add_argument(f"--{name}", dest=name, metavar="VALUE", default=argparse.SUPPRESS,
                       help=f"TrainConfig.{name} (default {getattr(TrainConfig, name, None)!r})")
    return p


def load_config(argv: Sequence[str] | None = None) -> TrainConfig:
    """The TrainConfig that a command line describes.

    Raises:
        SystemExit: with one message naming the file and key, or the flag, that is wrong.
    """
    args = vars(parser().parse_args(argv))
    source = args.pop("config")
    values = {}
    if source is not None:
        try:
            values = yaml.safe_load(source.read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise SystemExit(f"{source}: cannot read the config: {error}") from None
        if not isinstance(values, dict):
            kind = type(values).__name__
            raise SystemExit(f"{source}: expected a mapping of TrainConfig fields, got {kind}")
        unknown = sorted(set(values) - set(FIELDS))
        if unknown:
            raise SystemExit(f"{source}: unknown key(s) {unknown}; TrainConfig fields are {FIELDS}")
    for name, text in args.items():
        try:
            values[name] = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise SystemExit(f"--{name}: cannot read {text!r}: {error}") from None
    for name in ("train_file", "validation_file", "output_dir", "base_model"):  # `--x 1` stays a path
        if values.get(name) is not None:
            values[name] = str(values[name])
    try:
        return TrainConfig(**values)
    except (TypeError, ValueError) as error:
        where = f"{source}: " if source is not None else ""
        raise SystemExit(f"{where}{error}") from None


def main(argv: Sequence[str] | None = None) -> int:
    config = load_config(argv)
    result = train(config)
    if result.manifest_path is not None:  # only the main process writes (and reports) a finished run
        summary = {"output_dir": str(result.output_dir), "model_dir": str(result.model_dir),
                   "global_step": result.global_step, "train_loss": result.train_loss,
                   "eval_loss": result.eval_loss, "counts": result.counts}
        print(json.dumps(summary, indent=1))
    return 0 if result.completed else 1


if __name__ == "__main__":
    sys.exit(main())
