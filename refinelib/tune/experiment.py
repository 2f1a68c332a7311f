"""The book's tuning run (chapter 03): the expert-only baseline and the refinement variants, trained on one
synthesis run's datasets.

::

    from refinelib.tune import experiment as tuning
    data = tuning.load_datasets(tuning.dataset_dirs("default"), max_train=48, max_validation=6)
    results, seconds = tuning.train_models(data, ["refine"], "artifacts/tuning/default", base_model=...)

Each model is one folder, ``artifacts/tuning/<run_id>/<name>`` (:func:`refinelib.paths.model_dir`), the
name the evaluation chapters read: ``expert_only`` (the expert data, the ``refine`` mask) and each
variant of :data:`refinelib.tune.ablation.VARIANTS` asked for (the refinement data as the variant takes
it). An interrupted training resumes from its last checkpoint when called again.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from refinelib import paths
from refinelib.data import chat
from refinelib.schema import erroneous_turns
from refinelib.tune import ablation

DATASETS = ("refinement", "expert")  # what chapter 03 trains on, of chapter 02's datasets
SPLITS = ("train", "validation")
BASELINE = "expert_only"  # the memorising baseline's folder name


# ----- the data -------------------------------------------------------------------------------------------
def dataset_dirs(data_run_id: str) -> dict[str, Path]:
    """``{"refinement": folder, "expert": folder}`` of synthesis run ``data_run_id``."""
    return {name: paths.dataset_dir(data_run_id, name) for name in DATASETS}


def write_datasets(folder: str | Path, **records: Sequence[Mapping]) -> dict[str, Path]:
    """Write each ``name=records`` as a dataset folder under ``folder``, its last record the validation
    split (smoke runs: :func:`refinelib.synth.smoke.grounded_records` and a few expert episodes); return
    ``{name: folder}``."""
    dirs = {}
    for name, rows in records.items():
        dirs[name] = Path(folder) / name
        dirs[name].mkdir(parents=True, exist_ok=True)
        chat.write_jsonl(rows[:-1], dirs[name] / "train.jsonl")
        chat.write_jsonl(rows[-1:], dirs[name] / "validation.jsonl")
    return dirs


def load_datasets(dirs: Mapping[str, str | Path], max_train: int = 0, max_validation: int = 0,
                  data_run_id: str = "default") -> dict[str, dict[str, list[dict]]]:
    """``{dataset: {split: records}}`` of each dataset folder's JSONL splits, the first ``max_train`` /
    ``max_validation`` records (0: all).

    Raises:
        FileNotFoundError: naming every missing file and the chapter that writes it (02).
    """
    from refinelib.tune.train import load_records

    files = {name: {split: Path(d) / f"{split}.jsonl" for split in SPLITS} for name, d in dirs.items()}
    missing = [str(path) for splits in files.values() for path in splits.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"no training data for data_run_id={data_run_id!r}: missing {', '.join(missing)}. "
            "Run notebook 02 (data synthesis) first, e.g. `python -m refinelib.report.runbook "
            "notebooks/02_refinement_synthesis.ipynb book/executed/02_refinement_synthesis.ipynb`, "
            "or pass the data_run_id of a run that has its datasets.")
    limits = {"train": max_train, "validation": max_validation}
    return {name: {split: _first(load_records(path), limits[split]) for split, path in splits.items()}
            for name, splits in files.items()}


def _first(records: list, n: int) -> list:
    return records[:n] if n else records


def dataset_table(data: Mapping[str, Mapping[str, Sequence[Mapping]]]) -> pd.DataFrame:
    """Records, assistant turns and erroneous turns per dataset and split."""
    def row(name: str, split: str, records: Sequence[Mapping]) -> dict:
        turns = [t for r in records for t in r["conversations"]]
        return {"dataset": name, "split": split, "records": len(records),
                "assistant turns": sum(t["from"] == "gpt" for t in turns),
                "erroneous turns": sum(len(erroneous_turns(r)) for r in records)}

    return pd.DataFrame([row(name, split, records) for name, splits in data.items()
                         for split, records in splits.items()])


def mask_example(records: Sequence[Mapping]) -> dict:
    """The first record with an erroneous turn (to show the mask on).

    Raises:
        ValueError: no record has one.
    """
    example = next((r for r in records if erroneous_turns(r)), None)
    if example is None:
        raise ValueError("no refinement record with an erroneous turn to show")
    return example


# ----- the models -----------------------------------------------------------------------------------------
def chapter_models(policies: Sequence[str]) -> dict[str, tuple[str, str]]:
    """``{folder name: (dataset, variant)}``: the expert-only baseline on the expert data with the
    ``refine`` mask, then each variant of ``policies`` (:data:`refinelib.tune.ablation.VARIANTS`: its mask,
    and for ``strip_errors`` its data) on the refinement data."""
    return {BASELINE: ("expert", "refine"), **{name: ("refinement", name) for name in policies}}


def train_models(data: Mapping[str, Mapping[str, Sequence[Mapping]]], policies: Sequence[str],
                 out_dir: str | Path, *, base_model: str, method: str = "lora", max_length: int = 1536,
                 batch_size: int = 4, epochs: float = 2.0, learning_rate: float = 1e-3, smoke: bool = False,
                 verbose: bool = True) -> tuple[dict, dict[str, float]]:
    """Train every model of :func:`chapter_models` into ``out_dir/<name>``, one after the other.

    Cosine schedule without warmup (a handful of CPU steps: a 3 % warmup would spend the first one at
    learning rate 0), validation loss at the start and at the end, a checkpoint every 10 steps. Smoke
    runs take one step of batch 1. The validation records are each dataset's, as they are (a variant
    changes only what it trains on).

    Returns:
        ``({name: TrainResult}, {name: seconds})``; with ``verbose``, one line per model as it finishes.
    """
    from refinelib.tune.train import train
    from refinelib.tune.train_config import TrainConfig

    results, seconds = {}, {}
    for name, (dataset, variant) in chapter_models(policies).items():
        config = TrainConfig(
            base_model=base_model, method=method, mask_policy=ablation.variant(variant).mask_policy,
            train_records=ablation.variant_records(data[dataset]["train"], variant),
            validation_records=data[dataset]["validation"], max_length=max_length,
            batch_size=1 if smoke else batch_size, epochs=epochs, learning_rate=learning_rate,
            max_steps=1 if smoke else -1, output_dir=str(Path(out_dir) / name), warmup_ratio=0.0,
            save_steps=1000 if smoke else 10, eval_steps=1000)  # evaluate at the start and at the end
        started = time.time()
        results[name] = result = train(config)
        seconds[name] = round(time.time() - started, 1)
        if verbose:
            print(f"{name}: {result.global_step} steps in {seconds[name]} s, "
                  f"{result.counts['train']['kept']} training examples "
                  f"({result.counts['train']['supervised_tokens']} supervised tokens), "
                  f"validation loss {result.eval_loss:.3f}")
    return results, seconds


def loss_history(results: Mapping) -> pd.DataFrame:
    """Every model's ``loss_history.csv`` (step, epoch, split, loss) with a ``model`` column."""
    return pd.concat([pd.read_csv(r.loss_csv).assign(model=name) for name, r in results.items()])


def models_manifest(results: Mapping, seconds: Mapping[str, float]) -> dict[str, dict]:
    """Per model, what the chapter's manifest records: folders, steps, seconds, final losses, the data's
    fingerprint and the rendering counts."""
    return {name: {"output_dir": str(r.output_dir), "model_dir": str(r.model_dir), "steps": r.global_step,
                   "seconds": seconds[name], "train_loss": r.train_loss, "eval_loss": r.eval_loss,
                   "dataset_fingerprint": r.dataset_fingerprint, "counts": r.counts}
            for name, r in results.items()}
