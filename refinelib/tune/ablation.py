"""The variants of the paper's ablation (Table 2), data scaling and held-out losses (method.md §9, §14).

The paper's ablation changes one thing at a time in the refinement data or its loss mask; here each row
is a :class:`Variant` (which data, which mask policy) trained with :mod:`refinelib.tune.train`::

    from refinelib.tune import ablation
    records = dataset.load("artifacts/synthesis/default/datasets/refinement", "train")
    for name in ablation.VARIANTS:                               # refine, no_refinement_loss, ...
        folder, trained = ablation.train_variant(name, records, out / name, max_steps=20)
    subsets = ablation.nested_subsets(records, [8, 16, 32])    # 8 ⊂ 16 ⊂ 32, seeded (data scaling)
    losses = ablation.heldout_losses(model, tokenizer, validation)   # all correct turns, refinement turns
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from refinelib import runs
from refinelib.data.chat import strip_errors
from refinelib.synth.synthesis import digest

DATA_FILE = "ablation.json"  # next to a trained variant: its config and the digest of the records it saw


# ----- the variants of the paper's Table 2 ------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """One row of the paper's ablation: which data and which loss mask."""

    name: str
    strip_errors: bool  # train on the trajectories with each error and its feedback removed
    mask_policy: str    # refinelib.tune.masking.POLICIES
    paper_row: str      # the row's label in the paper's Table 2


VARIANTS = {v.name: v for v in (
    Variant("refine", False, "refine", "AgentRefine"),
    Variant("no_refinement_loss", False, "no_refinement_loss", "w/o refinement loss"),
    Variant("strip_errors", True, "refine", "w/o refinement data"),
    Variant("erroneous_loss", False, "erroneous_loss", "w erroneous loss"),
)}


def variant(name: str) -> Variant:
    """The variant called ``name`` (one of ``VARIANTS``)."""
    if name not in VARIANTS:
        raise ValueError(f"unknown ablation variant {name!r}; use one of {list(VARIANTS)}")
    return VARIANTS[name]


def variant_records(records: Sequence[Mapping], name: str) -> list[dict]:
    """The refinement records as variant ``name`` trains on them (stripped of errors for strip_errors)."""
    chosen = variant(name)
    return [strip_errors(r) if chosen.strip_errors else dict(r) for r in records]


def nested_subsets(records: Sequence[Mapping], sizes: Sequence[int], seed: int = 0) -> dict[int, list]:
    """Seeded nested subsets for the data-scaling curve: every smaller subset is a prefix of every larger
    one (method.md §14: 4k ⊂ 8k ⊂ ...), drawn from one seeded shuffle of ``records``.

    >>> subsets = nested_subsets([{"id": str(i)} for i in range(10)], [2, 5])
    >>> subsets[2] == subsets[5][:2], len(subsets[5])
    (True, 5)
    """
    bad = [s for s in sizes if not isinstance(s, int) or not 1 <= s <= len(records)]
    if bad:
        raise ValueError(f"nested_subsets: sizes {bad} are not between 1 and the {len(records)} records")
    order = list(records)
    random.Random(seed).shuffle(order)
    return {s: order[:s] for s in sorted(set(sizes))}


def train_variant(name: str, records: Sequence[Mapping], output_dir: str | Path,
                  validation_records: Sequence[Mapping] | None = None, **config) -> tuple[Path, bool]:
    """Train variant ``name`` on the refinement ``records`` into ``output_dir``; reuse a finished model.

    A model is reused when ``output_dir`` holds a finished training with the same config and the same
    records (their digest is kept in ``ablation.json``); an interrupted identical training resumes; a
    different earlier training of this function in the folder is set aside (moved to
    ``<output_dir>.stale-<k>/``, with a warning naming what changed) and the variant trains afresh.
    A second training into the same folder while one runs raises :class:`refinelib.runs.RunLockedError`.

    Args:
        name: a key of ``VARIANTS``.
        records: refinement records in the released schema (the errors are stripped here when the variant
            asks for it, so every variant sees the same trajectories).
        output_dir: the model's folder (``adapter/``, ``manifest.json``, ``loss_history.csv``).
        validation_records: held-out records (transformed like ``records``); None: no validation loss.
        **config: further :class:`refinelib.tune.train_config.TrainConfig` fields (``max_steps``,
        ``learning_rate``...).

    Returns:
        ``(output_dir, trained)``: ``trained`` is False when an earlier identical training was reused.
    """
    from refinelib.tune.train import train
    from refinelib.tune.train_config import TrainConfig

    chosen = variant(name)
    out = Path(output_dir)
    train_records = variant_records(records, name)
    val_records = variant_records(validation_records, name) if validation_records else None
    cfg = TrainConfig(train_records=train_records, validation_records=val_records,
                      eval_fraction=0.0, mask_policy=chosen.mask_policy, output_dir=str(out), **config)
    identity = {"variant": name, "config": runs.jsonable(cfg.to_dict()), "train": digest(train_records),
                "validation": digest(val_records or [])}
    with runs.RunLock(out):  # a second training into the same folder fails at once, naming this one's pid
        # another training in the folder (other records, config or variant) is set aside whole, naming
        # each changed field; the same one resumes from its newest checkpoint, or is reused when finished
        runs.check_identity(out / DATA_FILE, _flat(identity), "set_aside", whole_folder=True)
        if (out / "manifest.json").is_file():  # train() writes the manifest last: a finished training
            return out, False
        train(cfg)
    return out, True


def _flat(identity: Mapping) -> dict:
    """The identity with its ``config`` spread out (``config.learning_rate``): a diff names the field."""
    config = identity.get("config") if isinstance(identity.get("config"), Mapping) else {}
    flat = {k: v for k, v in identity.items() if k != "config"}
    return {**flat, **{f"config.{k}": v for k, v in config.items()}}


# ----- held-out losses ----------------------------------------------------------------------------------
def heldout_losses(model, tokenizer, records: Sequence[Mapping], max_length: int | None = 1024) -> dict:
    """Mean token loss of ``model`` on held-out refinement ``records``, the same measure for every variant.

    ``loss`` is over every correct assistant turn (the ``refine`` mask: what AgentRefine trains);
    ``refinement_turn_loss`` over the refinement turns only (the first correct turn after an error: the
    recovery the paper's ablation is about). Returns both with their supervised token counts
    (``tokens``, ``refinement_tokens``); a loss is NaN when it has no token.
    """
    import torch

    from refinelib.tune.masking import IGNORE_INDEX, NoSupervisedTokens, render

    sums = {"loss": [0.0, 0], "refinement_turn_loss": [0.0, 0]}
    device = next(model.parameters()).device
    model.eval()
    for record in records:
        trained = render(record, tokenizer, policy="refine", max_length=max_length)
        try:
            without = render(record, tokenizer, policy="no_refinement_loss", max_length=max_length).labels
        except NoSupervisedTokens:  # every trained turn is a refinement turn
            without = [IGNORE_INDEX] * len(trained.labels)
        if len(without) != len(trained.labels):  # truncation kept other turns: no refinement split
            without = None
        ids = torch.tensor([trained.input_ids], device=device)
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1].float()
        targets = torch.tensor(trained.labels[1:], device=device)
        nll = torch.nn.functional.cross_entropy(logits, targets.clamp(min=0), reduction="none")
        keep = targets != IGNORE_INDEX
        sums["loss"][0] += float(nll[keep].sum())
        sums["loss"][1] += int(keep.sum())
        if without is not None:
            refinement = keep & (torch.tensor(without[1:], device=device) == IGNORE_INDEX)
            sums["refinement_turn_loss"][0] += float(nll[refinement].sum())
            sums["refinement_turn_loss"][1] += int(refinement.sum())
    return {"loss": sums["loss"][0] / sums["loss"][1] if sums["loss"][1] else float("nan"),
            "tokens": sums["loss"][1],
            "refinement_turn_loss": (sums["refinement_turn_loss"][0] / sums["refinement_turn_loss"][1]
                                     if sums["refinement_turn_loss"][1] else float("nan")),
            "refinement_tokens": sums["refinement_turn_loss"][1]}


# ----- chapter 07: the data, the models ------------------------------------------------------------------
def load_refinement(data_run_id: str, validation_records: int) -> tuple[list[dict], list[dict]]:
    """Synthesis run ``data_run_id``'s refinement dataset: its train split, and the first
    ``validation_records`` of its validation split (the held-out trajectories of the losses).

    Raises:
        FileNotFoundError: the run has no refinement dataset (naming the chapter that writes it).
    """
    from refinelib.data import dataset
    from refinelib.paths import dataset_dir

    folder = dataset_dir(data_run_id, "refinement")
    if not (folder / "train.jsonl").is_file():
        raise FileNotFoundError(f"no refinement dataset at {folder}; run notebook 02_refinement_synthesis "
                                f"first (or pass data_run_id of a run that has one)")
    return dataset.load(folder, "train"), dataset.load(folder, "validation")[:validation_records]


def resolve_sizes(sizes: Sequence[int | str], available: int) -> list[int]:
    """The data-scaling sizes as counts: ``"all"`` is the whole training split of ``available`` records.

    Raises:
        ValueError: a size that is not between 1 and ``available`` (before any training).
    """
    resolved = [available if size == "all" else size for size in sizes]
    too_many = [size for size in resolved if not isinstance(size, int) or not 1 <= size <= available]
    if too_many:
        raise ValueError(f"sizes {too_many}: the training split holds {available} trajectories; "
                         'use sizes from 1 to that, or "all" for the whole split')
    return resolved


def subset_table(subsets: Mapping[int, Sequence[Mapping]], heldout: Sequence[Mapping]):
    """Trajectories and erroneous turns of every training subset and of the held-out set."""
    import pandas as pd

    from refinelib.schema import erroneous_turns

    named = [*((f"train subset {n}", r) for n, r in subsets.items()), ("held-out", heldout)]
    return pd.DataFrame([{"set": name, "trajectories": len(r),
                          "erroneous turns": sum(len(erroneous_turns(x)) for x in r)} for name, r in named])


@dataclass
class AblationModels:
    """The models of the ablation chapter: ``{label: folder}`` with where each came from."""

    folders: dict[str, str]
    origin: dict[str, str]
    seconds: dict[str, float]    # training time of the models trained (or reused) here
    scaling: dict[int, str]      # data-scaling curve: {trajectories: label}
    from_tuning: bool            # the variants are chapter 03's models
    settings: dict               # the training settings of the models trained here

    def describe(self) -> str:
        """Where the models come from, and how the ones trained here were trained."""
        if self.from_tuning:
            return "notebook 03's models are used for the variants, the scaling models are trained here"
        steps, batch = self.settings["max_steps"], self.settings["batch_size"]
        return (f"every model trained here: {steps} steps of batch {batch} (at most {steps * batch} "
                f"trajectories seen), lr {self.settings['learning_rate']}, "
                f"LoRA on the top {self.settings.get('lora_top_layers') or 'all'} layers")

    def table(self):
        """One row per model: label, origin, training seconds, folder."""
        import pandas as pd

        return pd.DataFrame([{"model": k, "origin": self.origin[k], "seconds": self.seconds.get(k),
                              "folder": f} for k, f in self.folders.items()])


def ablation_models(variants: Sequence[str], subsets: Mapping[int, Sequence[Mapping]], out_dir: str | Path,
                    tuning_run_id: str | None = None, **settings) -> AblationModels:
    """Every variant on the largest subset and the ``refine`` data-scaling models on every subset.

    The variants are chapter 03's models (run ``tuning_run_id``) when it trained every one of them, so the
    rows share one training setup; otherwise every model is trained here (:func:`train_variant` into
    ``out_dir/<label>``, reusing an identical earlier training) with ``settings``
    (:class:`refinelib.tune.train_config.TrainConfig` fields). The scaling models are always trained here
    (the largest is the ``refine`` variant when that is trained here too), so one curve never mixes two
    training setups.

    Raises:
        ValueError: the scaling models would not share one base model.
    """
    from refinelib.paths import model_dir

    from_tuning = tuning_run_id is not None and all(
        (model_dir(tuning_run_id, v) / "manifest.json").is_file() for v in variants)
    largest = max(subsets)
    scaling = {n: "refine" if n == largest and not from_tuning else f"refine@{n}" for n in sorted(subsets)}
    jobs = [(v, largest, v) for v in variants] + [("refine", n, label) for n, label in scaling.items()
                                                   if label != "refine"]
    models = AblationModels({}, {}, {}, scaling, from_tuning, dict(settings))
    for name, size, label in jobs:
        if from_tuning and label == name:
            models.folders[label] = str(model_dir(tuning_run_id, name))
            models.origin[label] = f"notebook 03 ({tuning_run_id})"
            continue
        started = time.time()
        folder, trained = train_variant(name, subsets[size], Path(out_dir) / label, **settings)
        models.folders[label], models.seconds[label] = str(folder), round(time.time() - started, 1)
        models.origin[label] = "trained here" if trained else "trained here (reused)"
    bases = {label: _base_model(models.folders[label]) for label in scaling.values()}
    if len(set(bases.values())) > 1:  # before any episode is played
        raise ValueError(f"the data-scaling curve would mix base models: {bases}")
    return models


def _base_model(folder: str | Path) -> str:
    """The base model a finished training in ``folder`` tuned (its manifest's config)."""
    return json.loads((Path(folder) / "manifest.json").read_text())["config"]["base_model"]
