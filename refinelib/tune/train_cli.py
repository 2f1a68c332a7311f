"""Command line for :func:`refinelib.tune.train.train`, so ``accelerate launch`` can start a tuning run.

``python -m refinelib.tune.train_cli [--config run.yaml] [--<field> <value> ...]``: the YAML file and
the flags both name :class:`~refinelib.tune.train_config.TrainConfig` fields (flags win); values are read
as YAML, so ``--learning_rate 2e-5``, ``--bf16 true`` and ``--lora_target_modules '[q_proj, v_proj]'``
work, and a number YAML leaves as a string (``learning_rate: 2e-5``) is converted. ``--help`` lists every
field with its help text. A bad value stops with one message naming the file or flag and the field, before
any model loads. On GPUs::

    accelerate launch --config_file configs/accelerate/deepspeed_zero3.yaml -m refinelib.tune.train_cli \\
        --base_model meta-llama/Meta-Llama-3-8B-Instruct --method full --train_file data/train.jsonl ...

Every process runs the same command; the main process writes the outputs and prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from refinelib import options, runs
from refinelib.tune.train import train
from refinelib.tune.train_config import TrainConfig, check_field

IN_MEMORY = {"train_records", "validation_records"}  # not settable from a file or a command line
FIELDS = [f.name for f in options.settable(TrainConfig, IN_MEMORY)]
PATHS = ("train_file", "validation_file", "output_dir", "base_model")  # `--output_dir 1` stays a path
PROG = "python -m refinelib.tune.train_cli"
DESCRIPTION = "Refinement tuning (loss-masked SFT) from YAML and flags."


def parser() -> argparse.ArgumentParser:
    return options.parser(TrainConfig, PROG, DESCRIPTION, skip=IN_MEMORY)


def load_config(argv: Sequence[str] | None = None) -> TrainConfig:
    """The TrainConfig that a command line describes (:func:`refinelib.options.parse`).

    Raises:
        SystemExit: with one message naming the file and key, or the flag, that is wrong.
    """
    return options.parse(TrainConfig, argv, PROG, skip=IN_MEMORY, paths=PATHS, check=check_field)


def run(config: TrainConfig) -> int:
    """Train ``config``; print the finished run's summary (main process only); 0 when it completed."""
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


def main(argv: Sequence[str] | None = None) -> int:
    return run(load_config(argv))


if __name__ == "__main__":
    sys.exit(main())
