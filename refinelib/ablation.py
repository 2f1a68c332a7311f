"""Ablations, data scaling and Best-of-N (method.md §9, §13-§14; the paper's Tables 2 and 4, §15.2-§15.5).

The paper's ablation (Table 2) changes one thing at a time in the refinement data or its loss mask; here
each row is a :class:`Variant` (which data, which mask policy) trained with :mod:`refinelib.train`::

    from refinelib import ablation
    records = dataset.load("artifacts/synthesis/default/datasets/refinement", "train")
    for name in ablation.VARIANTS:                               # refine, no_refinement_loss, ...
        folder, trained = ablation.train_variant(name, records, out / name, max_steps=20)
    subsets = ablation.nested_subsets(records, [8, 16, 32])    # 8 ⊂ 16 ⊂ 32, seeded (data scaling)

    table = ablation.best_of_n_table(greedy_df, sampled_df)   # episode tables -> greedy, BoN, Δ in %

The paper's reference numbers are labelled as the paper's in ``DataFrame.attrs["source"]``.
"""

from __future__ import annotations

import json
import random
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from refinelib import runs
from refinelib.chat import strip_errors
from refinelib.evaluate import check_log
from refinelib.experiment import model_identity  # noqa: F401 (re-exported: notebooks call it here)
from refinelib.synthesis import digest

DATA_FILE = "ablation.json"  # next to a trained variant: its config and the digest of the records it saw


# ----- the variants of the paper's Table 2 ------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """One row of the paper's ablation: which data and which loss mask."""

    name: str
    strip_errors: bool  # train on the trajectories with each error and its feedback removed
    mask_policy: str    # refinelib.masking.POLICIES
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


def _json(value) -> object:
    return json.loads(json.dumps(value, default=str))


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
        **config: further :class:`refinelib.train.TrainConfig` fields (``max_steps``, ``learning_rate``...).

    Returns:
        ``(output_dir, trained)``: ``trained`` is False when an earlier identical training was reused.
    """
    from refinelib.train import TrainConfig, train

    chosen = variant(name)
    out = Path(output_dir)
    train_records = variant_records(records, name)
    val_records = variant_records(validation_records, name) if validation_records else None
    cfg = TrainConfig(train_records=train_records, validation_records=val_records,
                      eval_fraction=0.0, mask_policy=chosen.mask_policy, output_dir=str(out), **config)
    identity = {"variant": name, "config": _json(cfg.to_dict()), "train": digest(train_records),
                "validation": digest(val_records or [])}
    sidecar = out / DATA_FILE
    with runs.RunLock(out):  # a second training into the same folder fails at once, naming this one's pid
        previous = json.loads(sidecar.read_text()) if sidecar.is_file() else None
        if previous is not None and previous.get("identity") == identity:
            if previous.get("finished") and (out / "manifest.json").is_file():
                return out, False
        elif previous is not None:  # another training of ours: neither resumed nor mixed with this one
            diff = runs.describe_changes(_flat(previous.get("identity") or {}), _flat(identity))
            aside = runs.set_aside_contents(out)
            warnings.warn(f"{out} held another training of {name} ({diff}); kept as {aside.name}, training "
                          "again", runs.StaleRunWarning, stacklevel=2)
        runs.write_json_atomic(sidecar, {"identity": identity, "finished": False}, indent=1)
        train(cfg)  # resumes an interrupted identical training from its newest checkpoint
        runs.write_json_atomic(sidecar, {"identity": identity, "finished": True}, indent=1)
    return out, True


def _flat(identity: Mapping) -> dict:
    """The identity with its ``config`` spread out (``config.learning_rate``): a diff names the field."""
    config = identity.get("config") if isinstance(identity.get("config"), Mapping) else {}
    flat = {k: v for k, v in identity.items() if k != "config"}
    return {**flat, **{f"config.{k}": v for k, v in config.items()}}


def fresh_log(log_path: str | Path, settings: Mapping) -> bool:
    """Keep an episode log only while it was played with ``settings`` (a retrained model, other steps):
    they join the log's identity (:func:`refinelib.evaluate.check_log`, with the suite, prompt and
    environment versions :func:`refinelib.evaluate.run` adds), and a log played with other values is set
    aside as ``<log>.stale-<k>.jsonl`` with a warning naming them.

    Returns True when an old log was set aside.
    """
    path = Path(log_path)
    existed = path.exists()
    with runs.RunLock(path.parent):
        check_log(path, _json(dict(settings)))
    return existed and not path.exists()


# ----- held-out losses ----------------------------------------------------------------------------------
def heldout_losses(model, tokenizer, records: Sequence[Mapping], max_length: int | None = 1024) -> dict:
    """Mean token loss of ``model`` on held-out refinement ``records``, the same measure for every variant.

    ``loss`` is over every correct assistant turn (the ``refine`` mask: what AgentRefine trains);
    ``refinement_turn_loss`` over the refinement turns only (the first correct turn after an error: the
    recovery the paper's ablation is about). Returns both with their supervised token counts
    (``tokens``, ``refinement_tokens``); a loss is NaN when it has no token.
    """
    import torch

    from refinelib.masking import IGNORE_INDEX, NoSupervisedTokens, render

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


# ----- Best-of-N --------------------------------------------------------------------------------------
_INSTANCE = ["policy", "suite", "instance", "seed", "perturbation"]


def best_of_n(sampled: pd.DataFrame, by: Sequence[str] = ("policy", "suite")) -> pd.DataFrame:
    """The oracle best of N sampled episodes (method.md §13): per instance, success if any sample
    succeeded and the highest progress of any sample; then the mean over instances per group.

    Args:
        sampled: a :func:`refinelib.metrics.episode_table` of sampled episodes (``sample`` 0 ... N-1).
        by: grouping columns of the result.

    Returns:
        One row per group: ``n_instances``, ``n_samples`` (the smallest N of any instance),
        ``success_rate`` and ``progress_rate`` as fractions.
    """
    if sampled.empty:
        raise ValueError("best_of_n: no sampled episodes")
    per_instance = sampled.groupby(_INSTANCE, sort=False).agg(
        success=("success", "max"), progress=("progress", "max"), n=("sample", "nunique")).reset_index()
    out = per_instance.groupby(list(by), sort=False).agg(
        n_instances=("instance", "size"), n_samples=("n", "min"), success_rate=("success", "mean"),
        progress_rate=("progress", "mean"))
    return out.reset_index()


def best_of_n_table(greedy: pd.DataFrame, sampled: pd.DataFrame,
                    by: Sequence[str] = ("policy", "suite")) -> pd.DataFrame:
    """Greedy vs Best-of-N per group, in %: ``greedy_success``, ``bon_success``, ``delta_success`` and the
    same for progress (the layout of the paper's Best-of-N table).

    ``greedy`` and ``sampled`` are episode tables of the same instances (one greedy episode each); an
    instance played only one way raises ValueError.
    """
    keys = [k for k in _INSTANCE if k != "policy" or "policy" in by]
    only = set(map(tuple, greedy[keys].drop_duplicates().values)) ^ set(
        map(tuple, sampled[keys].drop_duplicates().values))
    if only:
        raise ValueError(f"best_of_n_table: instances played greedily or sampled, not both: "
                         f"{sorted(only)[:5]}")
    g = greedy.groupby(list(by), sort=False)[["success", "progress"]].mean()
    b = best_of_n(sampled, by).set_index(list(by))
    out = pd.DataFrame({"n_instances": b.n_instances, "n_samples": b.n_samples,
                        "greedy_success": g.success * 100, "bon_success": b.success_rate * 100,
                        "greedy_progress": g.progress * 100, "bon_progress": b.progress_rate * 100})
    out["delta_success"] = out.bon_success - out.greedy_success
    out["delta_progress"] = out.bon_progress - out.greedy_progress
    return out.reset_index()


# ----- the paper's reference numbers (method.md §15.2, §15.4, §15.5) -----------------------------------
PAPER_TASKS = ("ALFWorld", "BabyAI", "SciWorld", "PDDL", "Jericho")
PAPER_SOURCE_ABLATION = ("the paper's Table 2 (Fu et al., ICLR 2025; method.md §15.2): LLaMA-3-8B, "
                         "Success / Progress %")
PAPER_SOURCE_BEST_OF_N = ("the paper's Best-of-N table (Fu et al., ICLR 2025; method.md §15.4): "
                          "LLaMA-3-8B-based models, Success / Progress %")
PAPER_SOURCE_SCALING = ("the paper's figure 'Average Success and Progress by Size' (Fu et al., ICLR 2025; "
                        "method.md §15.5), %; the averaged task subset is not stated")
_PAPER_ABLATION = """
AgentRefine | 48.5 61.5 | 37.1 51.7 | 7.7 33.1 | 21.7 37.4 | 5.0 26.2
w/o refinement loss | 40.3 58.8 | 34.8 45.6 | 4.4 22.7 | 20.0 37.4 | 0.0 16.1
w/o refinement data | 49.3 65.2 | 30.4 43.1 | 5.5 21.3 | 11.7 32.5 | 0.0 13.8
w erroneous loss | 29.9 43.9 | 23.2 31.6 | 3.3 19.0 | 8.3 28.3 | 5.0 18.4
"""
_PAPER_BEST_OF_N = """
AgentGym greedy | 61.9 76.9 | 47.3 61.4 | 18.9 47.5 | 1.7 16.6 | 0.0 12.9
AgentGym BoN | 99.3 99.3 | 73.2 87.2 | 58.9 85.6 | 16.6 42.1 | 5.0 22.2
Agent-FLAN greedy | 67.2 79.7 | 25.0 35.3 | 1.1 10.9 | 8.3 25.5 | 0.0 10.1
Agent-FLAN BoN | 85.5 98.1 | 43.8 56.7 | 10.0 33.5 | 11.7 39.8 | 5.0 22.2
AgentRefine greedy | 44.8 63.8 | 37.5 50.4 | 14.4 42.6 | 16.6 37.8 | 10.0 32.3
AgentRefine BoN | 93.3 96.6 | 67.0 81.5 | 40.0 71.0 | 30.0 57.3 | 25.0 52.5
"""
# The Δ rows as printed; one cell disagrees with BoN - greedy (Agent-FLAN ALFWorld success: 85.5 - 67.2 =
# 18.3, printed 28.3), so both are kept.
_PAPER_BEST_OF_N_DELTA = """
AgentGym | 37.4 22.4 | 25.9 25.8 | 40.0 38.1 | 14.9 25.5 | 5.0 9.3
Agent-FLAN | 28.3 18.4 | 18.8 21.4 | 8.9 22.6 | 3.4 14.3 | 5.0 12.1
AgentRefine | 48.5 32.8 | 29.5 31.1 | 25.6 28.4 | 13.4 19.5 | 15.0 20.2
"""
_PAPER_SCALING = {"4k": (26.4, 43.5), "8k": (30.6, 47.5), "16k": (33.9, 51.9), "32k": (30.5, 50.3),
                  "64k": (38.2, 57.4)}


def _tidy(block: str, source: str, name: str = "model") -> pd.DataFrame:
    rows = []
    for line in block.strip().splitlines():
        label, *cells = (c.strip() for c in line.split("|"))
        for task, cell in zip(PAPER_TASKS, cells, strict=True):
            success, progress = (float(x) for x in cell.split())
            rows.append({name: label, "task": task, "success_rate": success, "progress_rate": progress})
    out = pd.DataFrame(rows)
    out.attrs["source"] = source
    return out


def paper_ablation_table() -> pd.DataFrame:
    """The paper's Table 2, tidy: ``variant`` (the paper's row label), ``task``, ``success_rate``,
    ``progress_rate`` (%); labelled in ``attrs["source"]``."""
    return _tidy(_PAPER_ABLATION, PAPER_SOURCE_ABLATION, "variant")


def paper_best_of_n_table() -> pd.DataFrame:
    """The paper's Best-of-N table, tidy: ``model``, ``decoding`` ("greedy" / "BoN"), ``task``, the two
    rates (%); on the BoN rows ``delta_success`` / ``delta_progress`` as the paper prints them and
    ``delta_*_computed`` (BoN - greedy), which differ in one cell (a misprint in the paper)."""
    table = _tidy(_PAPER_BEST_OF_N, PAPER_SOURCE_BEST_OF_N)
    table[["model", "decoding"]] = table.model.str.rsplit(" ", n=1, expand=True)
    printed = _tidy(_PAPER_BEST_OF_N_DELTA, PAPER_SOURCE_BEST_OF_N).rename(
        columns={"success_rate": "delta_success", "progress_rate": "delta_progress"}).assign(decoding="BoN")
    table = table.merge(printed, on=["model", "decoding", "task"], how="left")
    greedy = table[table.decoding == "greedy"].set_index(["model", "task"])
    index = pd.MultiIndex.from_frame(table[["model", "task"]])
    for metric in ("success", "progress"):
        computed = table[f"{metric}_rate"] - greedy[f"{metric}_rate"].reindex(index).values
        table[f"delta_{metric}_computed"] = computed.round(1).where(table.decoding == "BoN")
    table.attrs["source"] = PAPER_SOURCE_BEST_OF_N
    return table


def paper_scaling_table() -> pd.DataFrame:
    """The paper's data-scaling figure: ``size`` (label), ``trajectories``, ``avg_success``,
    ``avg_progress`` (%)."""
    out = pd.DataFrame([{"size": k, "trajectories": int(k[:-1]) * 1000, "avg_success": s, "avg_progress": p}
                        for k, (s, p) in _PAPER_SCALING.items()])
    out.attrs["source"] = PAPER_SOURCE_SCALING
    return out


def cells(table: pd.DataFrame, row: str, column: str = "task", success: str = "success_rate",
          progress: str = "progress_rate") -> pd.DataFrame:
    """A tidy table as the paper prints it: one ``S / P`` cell per (row, column), ``attrs`` kept."""
    text = [f"{s:.1f} / {p:.1f}" for s, p in zip(table[success], table[progress], strict=True)]
    out = table.assign(cell=text).pivot(index=row, columns=column, values="cell")
    out = out.loc[list(dict.fromkeys(table[row])), list(dict.fromkeys(table[column]))]
    out.columns.name = None
    out.attrs = dict(table.attrs)
    return out
