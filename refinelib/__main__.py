"""The pipeline from one command line, for users who reuse the library without the book.

``python -m refinelib <stage> ...``, each stage in the vocabulary of its config dataclass
(:mod:`refinelib.options`: ``--config FILE.yaml`` and ``--<field> VALUE`` flags, ``--help`` shows every
field's help)::

    python -m refinelib synth runs/grounded --teacher grounded --n 200 --seed 0
    python -m refinelib synth runs/gpt4o --teacher openai --n 50 --llm llm.yaml    # key from the environment
    python -m refinelib train --config configs/paper/train_refine.yaml \
        --train_file runs/grounded/dataset/train.jsonl
    python -m refinelib eval --model base --model refine=runs/model --suites babyai pddl --max_steps 15
    python -m refinelib export runs/grounded/dataset/train.jsonl train.axolotl.jsonl --format axolotl

``synth`` runs a resumable synthesis (:func:`refinelib.synth.synthesis.synthesize`) into the folder and
saves its accepted trajectories as a dataset in ``<folder>/dataset`` (:func:`refinelib.data.dataset.save`);
``train`` is :mod:`refinelib.tune.train_cli`; ``eval`` plays models on suites into their resumable
episode logs (:func:`refinelib.eval.experiment.evaluate_models`, the episode settings of
:class:`refinelib.config.EpisodeSettings`; ``--config configs/<profile>/episodes.yaml`` gives a profile's)
and prints the main table; ``export`` writes records in a trainer's format
(:mod:`refinelib.data.export`). A bad flag, file or value stops with one line naming it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from refinelib import options, paths


def _synth(args: dict) -> int:
    from refinelib.data import dataset
    from refinelib.synth.llm import LLMClient
    from refinelib.synth.llm_types import LLMConfig
    from refinelib.synth.synthesis import SynthesisConfig, summary, synthesize

    out, llm = Path(args.pop("out_dir")), args.pop("llm")
    config = options.from_args(SynthesisConfig, args)
    client = LLMClient(options.from_args(LLMConfig, {"config": llm})) if llm is not None else None
    try:
        run = synthesize(config, out, client=client)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    records, meta = run.records()
    if records:
        dataset.save(records, out / "dataset", meta=meta, seed=config.seed, name=out.name,
                     description=f"refinement trajectories ({config.teacher} teacher)")
    print(json.dumps(summary(run), indent=1, default=str))
    return 0 if len(records) >= config.n else 1


def _train(args: dict) -> int:
    from refinelib.tune import train_cli
    from refinelib.tune.train_config import TrainConfig, check_field

    config = options.from_args(TrainConfig, args, skip=train_cli.IN_MEMORY, paths=train_cli.PATHS,
                               check=check_field)
    return train_cli.run(config)


def _models(entries: Sequence[str]) -> dict:
    """``name=folder`` entries as ``{name: folder}``; a bare ``base`` is the base model (folder None)."""
    models = {}
    for entry in entries:
        name, sep, folder = entry.partition("=")
        if not name or (sep and not folder) or (not sep and name != "base"):
            raise SystemExit(f"--model {entry!r}: give name=folder (a trained folder, oracle or random), "
                             "or base")
        models[name] = folder or None
    return models


def _eval(args: dict) -> int:
    from refinelib.analysis import metrics, tables
    from refinelib.config import EpisodeSettings
    from refinelib.eval import experiment

    models, suites = _models(args.pop("model")), args.pop("suites")
    run_id, base_model = args.pop("eval_run_id"), args.pop("base_model")
    settings = options.from_args(EpisodeSettings, args)  # checked: a bad value stops naming its flag or file
    try:
        episodes = experiment.evaluate_models(models, suites, run_id, **settings.evaluation(base_model))
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    table = tables.main_table(metrics.episode_table(episodes), n_boot=0)
    print(tables.wide(table, order=list(models)).to_string())
    print(f"{len(episodes)} episodes in {paths.episode_log(run_id, '<model>')}")
    return 0


def _export(args: dict) -> int:
    from refinelib.data import export
    from refinelib.schema import RecordError

    try:
        records = export.load(args["source"], args["source_format"])
        n = export.export(records, args["target"], args["format"])
    except (OSError, ValueError, RecordError) as error:
        raise SystemExit(f"error: {error}") from None
    print(f"{n} records -> {args['target']} ({args['format']})")
    return 0


def parser() -> argparse.ArgumentParser:
    from refinelib.config import EpisodeSettings
    from refinelib.data.export import FORMATS, LOADERS
    from refinelib.synth.synthesis import SynthesisConfig
    from refinelib.tune import train_cli
    from refinelib.tune.train_config import TrainConfig

    top = argparse.ArgumentParser(prog="python -m refinelib", description=__doc__.split("\n")[0],
                                  allow_abbrev=False)
    stages = top.add_subparsers(dest="stage", required=True)
    synth = stages.add_parser("synth", help="synthesize refinement trajectories", allow_abbrev=False)
    synth.add_argument("out_dir", help="the run folder (a re-run continues it)")
    synth.add_argument("--llm", type=Path, default=None,
                       help="YAML mapping of LLMConfig fields, for the openai teachers and llm_thoughts")
    options.add_fields(synth, SynthesisConfig)
    train = stages.add_parser("train", help=train_cli.DESCRIPTION, allow_abbrev=False)
    options.add_fields(train, TrainConfig, skip=train_cli.IN_MEMORY)
    evaluation = stages.add_parser("eval", help="play models on suites into their episode logs",
                                   allow_abbrev=False)
    evaluation.add_argument("--model", action="append", required=True, metavar="NAME=FOLDER",
                            help="a model to play: name=folder (a trained folder, oracle or random) or "
                                 "base; repeat the flag for several")
    evaluation.add_argument("--suites", nargs="+", required=True, help="suites to play (refinelib.envs)")
    evaluation.add_argument("--eval_run_id", default="cli", help="names the episode logs' folder")
    evaluation.add_argument("--base_model", default="SmolLM2-135M-Instruct",
                            help="the base model (and the one trained folders were tuned from)")
    options.add_fields(evaluation, EpisodeSettings)
    export = stages.add_parser("export", help="write records in a trainer's format", allow_abbrev=False)
    export.add_argument("source", help="a JSONL file of records")
    export.add_argument("target", help="the JSONL file to write")
    export.add_argument("--format", required=True, choices=sorted(FORMATS), help="the format to write")
    export.add_argument("--source_format", default="released", choices=sorted(LOADERS),
                        help="the format of the source (default: released)")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = vars(parser().parse_args(argv))
    stage = args.pop("stage")
    return {"synth": _synth, "train": _train, "eval": _eval, "export": _export}[stage](args)


if __name__ == "__main__":
    sys.exit(main())
