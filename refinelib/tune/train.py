"""Refinement tuning (method.md §8-§10): loss-masked fine-tuning with transformers ``Trainer`` + ``peft``.

Records in the released schema (``{id, conversations: [{from, loss, value}]}``) are rendered by
:func:`refinelib.tune.masking.render_many`, so erroneous assistant turns stay in the context with label -100;
examples with nothing to train are skipped and counted, never trained on silently. LoRA is the default,
full fine-tuning an option; the same code path runs on a CPU and, through ``accelerate launch``, on GPUs::

    from refinelib.tune.train import TrainConfig, train
    result = train(TrainConfig(train_file="artifacts/data/dev/train.jsonl", output_dir="artifacts/train/dev"))
    result.eval_loss, result.model_dir        # adapter/ (LoRA) or model/ (full); models.load(output_dir)

Speed and memory (issue 10, ``benchmarks/train_speed.py``): the LM head and the loss run only at the
supervised positions (most of a trajectory is masked context), a batch is split into micro-batches that
give the same loss and gradient (one example at a time on a CPU: no padding, a fraction of the
activations), and ``num_threads="auto"`` uses only the cores other processes leave idle.

Calling ``train`` again with the same config after an interruption resumes from the newest checkpoint in
``output_dir``, after checking that the checkpoints belong to the same run (config, data fingerprint,
code: ``run.json``); a new run in a used folder sets the old ``manifest.json`` aside first, and a lock
keeps a second writer out. Outputs: ``checkpoint-*/`` (Trainer), ``adapter/`` or ``model/`` (with the
tokenizer), ``merged/`` when asked, ``loss_history.csv`` (step, epoch, split, loss) and ``manifest.json``,
written last.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import hashlib
import json
import math
import os
import random
import time
import typing
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import DataCollatorWithFlattening, PrinterCallback, Trainer, TrainingArguments, set_seed
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import SchedulerType, get_last_checkpoint

from refinelib import runs
from refinelib.manifest import package_versions, write_manifest
from refinelib.tune import models
from refinelib.tune.masking import IGNORE_INDEX, POLICIES, Rendered, render_many

RUN_FILE = "run.json"             # identity (config, data fingerprint, code) of the checkpoints' run
LOSS_FILE = "loss_history.csv"
# Fields that may change between an interrupted run and its resumption without changing what is trained.
# micro_batch_size and supervised_logits_only change how, not what: the same loss and gradient per step.
RESUMABLE_CHANGES = {"num_threads", "merge", "save_total_limit", "micro_batch_size", "supervised_logits_only"}


def _field(default, help: str, **rules):
    """A :class:`TrainConfig` field: default, help text (``train_cli --help`` prints it) and value rules.

    ``rules``: ``choices`` (the allowed non-numeric values); ``min`` (inclusive), ``above`` and ``below``
    (exclusive) bounds for numbers. The accepted types come from the annotation.
    """
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **rules})
    return field(default=default, metadata={"help": help, **rules})


@dataclass
class TrainConfig:
    """Everything a refinement-tuning run depends on; saved in ``manifest.json`` (records by fingerprint).

    Every field is checked when the config is made (type, range, choices), so a bad value fails with one
    error naming the field before any model loads. Numbers given as strings (YAML reads ``2e-5`` as one)
    are converted when they parse exactly as numbers.
    """

    # Model
    base_model: str = _field(models.DEFAULT_MODEL, "SmolLM2-135M-Instruct ships offline; or a local model "
                             "directory, or a Hugging Face id in the local cache")
    method: str = _field("lora", "'lora': cheap on CPU, small artifact; 'full': the paper's setting",
                         choices=("lora", "full"))
    # Data
    train_file: str | None = _field(None, "JSONL in the released schema (method.md section 7)")
    validation_file: str | None = _field(None, "a held-out JSONL; otherwise eval_fraction of train is "
                                         "held out")
    train_records: list[dict] | None = field(default=None, repr=False, metadata={
        "help": "records in memory instead of train_file (not settable from a command line)"})
    validation_records: list[dict] | None = field(default=None, repr=False, metadata={
        "help": "records in memory instead of validation_file (not settable from a command line)"})
    eval_fraction: float = _field(0.1, "validation share split off train when none is given; 0 = no "
                                  "validation", min=0, below=1)
    mask_policy: str = _field("refine", "which assistant turns are trained: the paper's row and its two mask "
                              "ablations (masking.POLICIES)", choices=POLICIES)
    max_length: int = _field(2048, "tokens per example; trajectories are ~1k tokens (method.md section 7); "
                             "later turns are dropped whole", min=2)
    # LoRA (ignored for method="full")
    lora_r: int = _field(16, "LoRA rank: enough for format and recovery behaviour; 3.6 % of SmolLM2", min=1)
    lora_alpha: int = _field(32, "LoRA scale numerator; alpha = 2r, so the learning rate transfers across "
                               "r", above=0)
    lora_dropout: float = _field(0.0, "0.05 cost SmolLM2 on CPU +9 % time, +1.6 GB peak (train_speed.py)",
                                 min=0, below=1)
    lora_target_modules: str | list[str] = _field("all-linear", "modules with adapters; 'all-linear' (every "
                                                  "projection) beats q/v only at equal r")
    lora_top_layers: int | None = _field(None, "LoRA on the top N layers only: backward stops early; "
                                         "None or 0 = every layer", min=0)
    # Optimisation
    epochs: float = _field(3.0, "passes over the data (method.md section 10's starting point)", above=0)
    max_steps: int = _field(-1, "optimizer steps; > 0 overrides epochs (smoke runs); -1 or 0: use epochs",
                           min=-1)
    learning_rate: float = _field(2e-4, "LoRA's usual; use ~2e-5 for full fine-tuning of an 8B model",
                                above=0)
    lr_scheduler: str = _field("cosine", "learning-rate schedule (method.md section 10)",
                               choices=tuple(s.value for s in SchedulerType))
    warmup_ratio: float = _field(0.03, "share of the steps spent warming up (method.md section 10: 3 %)",
                                 min=0, below=1)
    weight_decay: float = _field(0.0, "no decay: short runs, and LoRA factors start at zero anyway", min=0)
    batch_size: int = _field(4, "examples per optimizer step and device (the batch the loss averages "
                             "over, whatever micro_batch_size is)", min=1)
    grad_accumulation: int = _field(1, "batches per optimizer step; raise on GPUs toward the paper's global "
                                    "batch of 64", min=1)
    micro_batch_size: int | str = _field("auto", "examples per forward/backward pass; a batch is split into "
                                         "micro-batches with the same loss and gradient. 'auto': 1 on a CPU "
                                         "(no padding, a quarter of the activations at batch 4), batch_size "
                                         "on a GPU", choices=("auto",), min=1)
    seed: int = _field(0, "model init (LoRA factors), data order, dropout, and the split", min=0)
    # Batching and hardware
    padding_free: bool = _field(False, "pack each micro-batch into one row with position_ids resets (no "
                                "padding)")
    group_by_length: bool = _field(True, "batches of similar lengths: little padding, same maths")
    supervised_logits_only: bool = _field(True, "LM head and loss only at supervised positions: the same "
                                          "loss without full-vocabulary logits for masked context")
    bf16: bool | str = _field("auto", "'auto': on where the GPU supports bf16; CPUs are slow in it",
                              choices=(True, False, "auto"))
    gradient_checkpointing: bool | str = _field("auto", "'auto': on with CUDA (memory-bound), off on CPU "
                                                "(slower)", choices=(True, False, "auto"))
    num_threads: int | str | None = _field("auto", "torch threads during training (restored after); 'auto': "
                                           "the cores other processes leave idle, measured when training "
                                           "starts (oversubscribed OpenMP threads lost 3-6x); None: torch's "
                                           "default", choices=("auto",),
                                           min=1)
    # Outputs
    output_dir: str = _field("artifacts/train/dev", "checkpoints, adapter/model, loss table and manifest")
    save_steps: int = _field(50, "checkpoint period: what an interruption can cost", min=1)
    save_total_limit: int | None = _field(2, "keep the newest checkpoints only (disk), enough to resume; "
                                          "None keeps all", min=1)
    eval_steps: int | None = _field(None, "validation-loss period; None = every save_steps", min=1)
    logging_steps: int = _field(1, "one loss row per logging_steps optimizer steps in loss_history.csv",
                                min=1)
    merge: bool = _field(False, "also write merged/ (LoRA folded in) for engines without peft")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            setattr(self, f.name, _checked(f, getattr(self, f.name)))
        if (self.train_file is None) == (self.train_records is None):
            raise ValueError("TrainConfig: give exactly one of train_file and train_records")
        if self.validation_file is not None and self.validation_records is not None:
            raise ValueError("TrainConfig: give at most one of validation_file and validation_records")
        if self.micro_batch_size != "auto" and self.batch_size % self.micro_batch_size:
            raise ValueError(f"TrainConfig.micro_batch_size: {self.micro_batch_size} does not divide "
                             f"batch_size {self.batch_size}")

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-ready values; in-memory records appear as a count (the fingerprint has them)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # no deep copy of records
        for name in ("train_records", "validation_records"):
            out[name] = None if out[name] is None else f"<{len(out[name])} records in memory>"
        return out


_HINTS = typing.get_type_hints(TrainConfig)  # the annotations as types (they are strings in this module)


def check_field(name: str, value):
    """``value`` as :class:`TrainConfig` field ``name`` would store it; one ``ValueError`` naming the field
    when its type, range or choices do not allow it (what ``__post_init__`` runs for every field)."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    if name not in fields:
        raise ValueError(f"TrainConfig has no field {name!r}")
    return _checked(fields[name], value)


def _checked(f: dataclasses.Field, value):
    """``value`` for field ``f`` if its type and rules allow it (numbers in strings converted), else raise.

    >>> _checked(next(f for f in dataclasses.fields(TrainConfig) if f.name == "learning_rate"), "2e-5")
    2e-05
    """
    kinds = typing.get_args(_HINTS[f.name]) or (_HINTS[f.name],)
    rules, name = f.metadata, f"TrainConfig.{f.name}"
    if value is None:
        if type(None) in kinds:
            return None
        raise ValueError(f"{name} must not be None")
    if isinstance(value, os.PathLike) and str in kinds:
        value = os.fspath(value)
    numeric = int if int in kinds else float if float in kinds else None
    if isinstance(value, str) and numeric and value not in rules.get("choices", ()):
        value = _number(value, numeric, name)  # YAML reads 2e-5 as a string; a CLI gives "4"
    if isinstance(value, bool) and bool not in kinds:
        raise ValueError(f"{name} must be {_kind_names(kinds)}, not {value!r}")
    if isinstance(value, int) and not isinstance(value, bool) and float in kinds:
        value = float(value)
    if isinstance(value, float) and int in kinds and float not in kinds:
        if not value.is_integer():
            raise ValueError(f"{name} must be a whole number, not {value!r}")
        value = int(value)
    if isinstance(value, tuple):
        value = list(value)
    if not any(_is(value, kind) for kind in kinds if kind is not type(None)):
        raise ValueError(f"{name} must be {_kind_names(kinds)}, not {value!r} ({type(value).__name__})")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        bounds = {"min": (">=", lambda bound: value >= bound), "above": (">", lambda bound: value > bound),
                  "below": ("<", lambda bound: value < bound)}
        rules_here = [(sign, rules[rule], ok) for rule, (sign, ok) in bounds.items() if rule in rules]
        if math.isnan(value) or not all(ok(bound) for _, bound, ok in rules_here):
            wanted = " and ".join(f"{sign} {bound}" for sign, bound, _ in rules_here) or "a number"
            raise ValueError(f"{name} must be {wanted}, not {value!r}")
    elif "choices" in rules and value not in rules["choices"]:
        raise ValueError(f"{name} must be one of {list(rules['choices'])}, not {value!r}")
    if f.name in ("base_model", "output_dir", "train_file", "validation_file") and not value.strip():
        raise ValueError(f"{name} must not be empty")
    return value


def _number(text: str, kind: type, name: str):
    """``text`` as a number of ``kind`` ("2e-5" -> 2e-05, "4" -> 4, "4.0" -> 4); anything else raises."""
    try:
        number = float(text.strip())
    except ValueError:
        raise ValueError(f"{name} must be a number, not {text!r}") from None
    if kind is int:
        if not number.is_integer():
            raise ValueError(f"{name} must be a whole number, not {text!r}")
        return int(number)
    return number


def _is(value, kind) -> bool:
    """isinstance for the annotations TrainConfig uses (``list[str]``, ``list[dict]`` included)."""
    origin = typing.get_origin(kind)
    if origin is list:
        (item,) = typing.get_args(kind)
        item = Mapping if item is dict else item
        return isinstance(value, list) and all(isinstance(v, item) for v in value)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _kind_names(kinds) -> str:
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
    return " or ".join(names.get(k, str(k).replace("typing.", "")) for k in kinds if k is not type(None))


@dataclass
class TrainResult:
    """What a run produced; paths are inside ``output_dir``."""

    output_dir: Path
    completed: bool                  # False when a callback stopped training early (no final outputs then)
    global_step: int
    resumed_from: str | None         # the checkpoint this call continued from
    model_dir: Path | None           # adapter/ (LoRA) or model/ (full weights), tokenizer included
    merged_dir: Path | None
    manifest_path: Path | None
    loss_csv: Path
    train_loss: float | None         # last logged training loss
    eval_loss: float | None          # validation loss at the end (None without a validation split)
    counts: dict[str, dict[str, int]]  # render_many counts per split: kept, skipped_*, truncated, tokens, ...
    dataset_fingerprint: str
    trainable_parameters: int
    total_parameters: int
    metrics: dict[str, float]        # Trainer's train metrics (runtime, samples/s) for this call
    model: Any = field(default=None, repr=False)      # the trained model, in memory
    tokenizer: Any = field(default=None, repr=False)


def load_records(path: str | Path) -> list[dict]:
    """Read a JSONL file of records; a bad line raises with its line number."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{number}: not JSON: {error}") from error
    return records


def split_records(records: Sequence[Mapping], fraction: float, seed: int) -> tuple[list, list]:
    """Hold out ``ceil(fraction * n)`` records, at least one when fraction > 0, by a seeded id shuffle."""
    if fraction <= 0 or len(records) < 2:
        return list(records), []
    order = sorted(range(len(records)), key=lambda i: str(records[i].get("id")))
    random.Random(seed).shuffle(order)
    n_eval = min(len(records) - 1, max(1, math.ceil(fraction * len(records))))
    held = set(order[:n_eval])
    return ([r for i, r in enumerate(records) if i not in held],
            [r for i, r in enumerate(records) if i in held])


def fingerprint(examples: Iterable[Rendered]) -> str:
    """sha256 of the rendered examples (ids, tokens, labels): same data, tokenizer and mask <=> same hash."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps([example.id, example.input_ids, example.labels]).encode())
    return digest.hexdigest()


@dataclass
class PaddedCollator:
    """Right-pad a batch: ``input_ids`` with ``pad_token_id``, ``labels`` with -100, ``attention_mask`` 0.

    >>> batch = PaddedCollator(pad_token_id=0)([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
    ...                                         {"input_ids": [8], "labels": [8]}])
    >>> batch["labels"].tolist(), batch["attention_mask"].tolist()
    ([[-100, 6, 7], [8, -100, -100]], [[1, 1, 1], [1, 0, 0]])
    """

    pad_token_id: int

    def __call__(self, features: Sequence[Mapping]) -> dict:
        width = max(len(f["input_ids"]) for f in features)
        ids, labels, attention = [], [], []
        for f in features:
            pad = width - len(f["input_ids"])
            ids.append(list(f["input_ids"]) + [self.pad_token_id] * pad)
            labels.append(list(f["labels"]) + [IGNORE_INDEX] * pad)
            attention.append([1] * len(f["input_ids"]) + [0] * pad)
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
                "attention_mask": torch.tensor(attention)}


def padding_free_collator():
    """Concatenate a batch into one row; ``position_ids`` restart at 0 for each example.

    With no ``attention_mask``, transformers derives a block-diagonal mask from the position resets
    (eager / sdpa) or uses variable-length kernels (flash attention); each example's first label becomes
    -100, which never matters here (no template starts with a trained token). :func:`check_padding_free`
    verifies that the model really keeps the examples apart.
    """
    return DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX)


def check_padding_free(model, examples: Sequence[Rendered], atol: float = 1e-4) -> float:
    """Max ``|logit difference|`` between packed and separate forward passes of two examples; raise if > atol.

    Packing is only correct when the attention implementation honours the position-id resets (and only
    without a KV cache, which training never uses), so this is checked on the actual model before training.
    """
    pair = sorted(examples, key=lambda e: len(e.input_ids))[:2]
    if len(pair) < 2:
        return 0.0
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        batch = padding_free_collator()([e.features() for e in pair])
        packed = model(input_ids=batch["input_ids"].to(device), position_ids=batch["position_ids"].to(device),
                       use_cache=False).logits[0]
        diff, offset = 0.0, 0
        for example in pair:
            ids = torch.tensor([example.input_ids], device=device)
            alone = model(input_ids=ids, use_cache=False).logits[0]
            n = len(example.input_ids)
            diff = max(diff, (packed[offset:offset + n] - alone).abs().max().item())
            offset += n
    model.train(was_training)
    if diff > atol:
        raise RuntimeError(f"padding_free: packed examples attend to each other (max logit difference "
                           f"{diff:.3g}, attention '{model.config._attn_implementation}'); "
                           "use padding_free=False")
    return diff


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped batches whose order depends only on (seed, epoch).

    transformers' ``LengthGroupedSampler`` permutes with the global torch RNG when an epoch starts, so a run
    resumed mid-epoch saw a different order than the uninterrupted run (measured: the losses part at the
    first step after the checkpoint). Seeding per epoch, as accelerate does for the plain random sampler,
    makes resumption exact.
    """

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer at every epoch start."""
        self.epoch = epoch

    def __iter__(self):
        self.generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return super().__iter__()


def supervised_loss(model, inputs: Mapping, labels: torch.Tensor, num_items_in_batch=None, head=None):
    """The causal-LM loss with the LM head applied only at supervised positions.

    Equal to the model's own ``loss`` for the same ``labels`` (mean over supervised next-token
    predictions, or their sum over ``num_items_in_batch``), but the full-vocabulary logits of masked
    context, most of an agent trajectory, are never made: a forward pre-hook on the output embedding
    keeps only the hidden states whose next token is supervised. The forward pass still goes through
    ``model`` itself, so wrappers (peft, DDP, FSDP, DeepSpeed) see an ordinary call.

    Args:
        model: a causal LM (or a wrapper whose forward reaches one).
        inputs: the model's inputs without ``labels`` (input_ids, attention_mask or position_ids).
        labels: ``[batch, length]``, -100 where nothing is trained.
        num_items_in_batch: the supervised-token count of the whole accumulated batch (Trainer's
            gradient-accumulation normalisation); None: this batch's own count.
        head: the output embedding module; found on ``model`` when None.

    Returns:
        ``(loss, outputs)``; ``outputs.logits`` holds only the supervised positions, ``[n, vocab]``.
    """
    head = head if head is not None else _output_embeddings(model)
    keep = labels[..., 1:] != IGNORE_INDEX

    def select(module, args):
        hidden = args[0]
        if hidden.shape[:2] != labels.shape:
            raise RuntimeError(f"supervised_logits_only: the LM head saw hidden states {tuple(hidden.shape)} "
                               f"for labels {tuple(labels.shape)}; use supervised_logits_only=False here")
        return (hidden[:, :-1][keep], *args[1:])

    hook = head.register_forward_pre_hook(select)
    try:
        outputs = model(**inputs, use_cache=False)
    finally:
        hook.remove()
    # float(): the same upcast as transformers' ForCausalLMLoss, so bf16 runs get the same loss too
    loss = torch.nn.functional.cross_entropy(outputs.logits.float(), labels[..., 1:][keep], reduction="sum")
    return loss / (keep.sum() if num_items_in_batch is None else num_items_in_batch), outputs


def _output_embeddings(model):
    """The LM head of ``model`` under any wrappers (DDP's ``module``, peft's base model)."""
    while hasattr(model, "module"):
        model = model.module
    return model.get_output_embeddings()


class RefineTrainer(Trainer):
    """``Trainer`` with exactly resumable length-grouped batches and the loss at supervised positions only.

    * :class:`EpochSeededLengthGroupedSampler` replaces the global-RNG one.
    * With ``supervised_logits_only``, :func:`supervised_loss` computes the loss, always normalised by
      the supervised tokens of the whole optimizer batch, so a batch split into micro-batches gives the
      same loss and gradient as the batch in one pass.
    """

    def __init__(self, *args, supervised_logits_only: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.supervised_logits_only = supervised_logits_only
        if supervised_logits_only:
            # makes the Trainer count the whole batch's supervised tokens (num_items_in_batch) for
            # compute_loss below, which divides by them itself (the model never sees the count)
            self.model_accepts_loss_kwargs = True

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if type(sampler) is LengthGroupedSampler:
            return EpochSeededLengthGroupedSampler(sampler.batch_size, sampler.lengths, self.args.data_seed)
        return sampler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self.supervised_logits_only or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        head = self.accelerator.unwrap_model(model).get_output_embeddings()
        loss, outputs = supervised_loss(model, inputs, labels, num_items_in_batch, head=head)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # as Trainer.compute_loss: the count is summed over processes, and DDP averages gradients
            loss_scale = self.accelerator.num_processes // self.get_tp_size()
            loss = loss * (loss_scale if self.args.n_gpu <= 1 else self.args.n_gpu)
        return (loss, outputs) if return_outputs else loss


def train(config: TrainConfig, callbacks: Sequence = ()) -> TrainResult:
    """Fine-tune ``config.base_model`` on the masked records; resume if ``output_dir`` holds checkpoints.

    Args:
        config: the run's settings.
        callbacks: extra ``transformers.TrainerCallback`` objects, e.g. ``transformers.ProgressCallback()``
            for a progress bar (runs are quiet otherwise: the loss table is the record).

    Returns:
        A :class:`TrainResult`. When a callback stops training early, ``completed`` is False and no final
        outputs or manifest are written; calling ``train`` again with the same config resumes.

    Raises:
        ValueError: no training example survived masking, or ``output_dir`` holds another run's checkpoints.
    """
    _check_paths(config)  # a missing file or model fails here, before any tokenizer, data or model work
    before, wanted = torch.get_num_threads(), threads(config.num_threads)
    out = Path(config.output_dir)
    with contextlib.ExitStack() as stack:  # releases the folder's lock and restores threads at the end
        if wanted is not None:
            torch.set_num_threads(wanted)
            stack.callback(torch.set_num_threads, before)  # the caller's setting comes back afterwards
        return _train(config, callbacks, out, stack)


def _check_paths(config: TrainConfig) -> None:
    """One error naming the field for a missing data file, a file where output_dir should be, or a base
    model that is neither the default, a local directory nor a Hugging Face id."""
    for name in ("train_file", "validation_file"):
        path = getattr(config, name)
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"TrainConfig.{name}: {path} does not exist or is not a file")
    if Path(config.output_dir).exists() and not Path(config.output_dir).is_dir():
        raise NotADirectoryError(f"TrainConfig.output_dir: {config.output_dir} is a file, not a folder")
    try:
        models.check_name(config.base_model)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"TrainConfig.base_model: {error}") from None


def _train(config: TrainConfig, callbacks: Sequence, out: Path, stack: contextlib.ExitStack) -> TrainResult:
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = models.load_tokenizer(config.base_model)
    train_records = config.train_records if config.train_file is None else load_records(config.train_file)
    if config.validation_file is not None:
        eval_records = load_records(config.validation_file)
    elif config.validation_records is not None:
        eval_records = list(config.validation_records)
    else:
        train_records, eval_records = split_records(train_records, config.eval_fraction, config.seed)
    render = dict(tokenizer=tokenizer, policy=config.mask_policy, max_length=config.max_length)
    train_examples, train_counts = render_many(train_records, **render)
    eval_examples, eval_counts = render_many(eval_records, **render)
    if not train_examples:
        raise ValueError(f"no training example left after masking: {train_counts}")
    counts = {"train": train_counts, "validation": eval_counts}
    fingerprints = {"train": fingerprint(train_examples), "validation": fingerprint(eval_examples)}
    digest = hashlib.sha256(json.dumps(fingerprints).encode()).hexdigest()

    resume = get_last_checkpoint(out) if any(out.glob("checkpoint-*")) else None
    has_eval = bool(eval_examples)
    args = _training_arguments(config, has_eval=has_eval, eval_on_start=has_eval and resume is None)
    main_process = args.process_index == 0  # under accelerate launch, one process writes the files
    if main_process:
        # before this run writes anything there: a second training into the folder fails at once, naming
        # this one's pid (the arguments come first, they set up the processes that tell who is main)
        stack.enter_context(runs.RunLock(out))
        _check_same_run(out, config, digest, resume)

    set_seed(config.seed)  # before the model: LoRA factors are initialised from the global RNG
    model, _ = models.load(config.base_model)
    if config.method == "lora":
        model = _apply_lora(model, config)
    packing_error = check_padding_free(model, train_examples) if config.padding_free else None
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in model.parameters())

    trainer = RefineTrainer(
        model=model,
        args=args,
        train_dataset=[e.features() for e in train_examples],
        eval_dataset=[e.features() for e in eval_examples] if has_eval else None,
        data_collator=(padding_free_collator() if config.padding_free
                       else PaddedCollator(tokenizer.pad_token_id)),
        processing_class=tokenizer,
        callbacks=list(callbacks),
        supervised_logits_only=config.supervised_logits_only,
    )
    trainer.remove_callback(PrinterCallback)  # no log dict per step on stdout
    output = trainer.train(resume_from_checkpoint=resume)
    state = trainer.state
    completed = state.global_step >= state.max_steps
    if completed and has_eval and not any("eval_loss" in h and h["step"] == state.global_step
                                          for h in state.log_history):
        trainer.evaluate()  # the final validation loss, whatever eval_steps was
    loss_csv = out / LOSS_FILE
    if main_process:
        write_loss_history(state.log_history, loss_csv)
    history = state.log_history
    train_loss = next((h["loss"] for h in reversed(history) if "loss" in h), None)
    eval_loss = next((h["eval_loss"] for h in reversed(history) if "eval_loss" in h), None)

    model_dir = merged_dir = manifest_path = None
    if completed:
        model_dir = out / ("adapter" if config.method == "lora" else "model")
        trainer.save_model(str(model_dir))  # adapter only for a PeftModel; the tokenizer goes along
        if config.merge and config.method == "lora" and main_process:
            merged_dir = out / "merged"
            # A copy keeps the trained PeftModel usable; it costs a second set of weights in memory.
            copy.deepcopy(model).merge_and_unload().save_pretrained(merged_dir)
            tokenizer.save_pretrained(merged_dir)
    if completed and main_process:
        manifest_path = write_manifest(
            out, stage="train", config=config.to_dict(), dataset_fingerprint=digest, counts=counts,
            global_step=state.global_step, resumed_from=resume, train_loss=train_loss, eval_loss=eval_loss,
            trainable_parameters=n_trainable, total_parameters=n_total,
            split_fingerprints=fingerprints, model_dir=model_dir.name,
            merged_dir=merged_dir.name if merged_dir else None,
            hardware=_hardware(trainer), metrics=output.metrics, padding_free_max_logit_diff=packing_error,
            training_packages=package_versions(("accelerate", "tokenizers", "gguf")),
        )
    return TrainResult(out, completed, state.global_step, resume, model_dir, merged_dir, manifest_path,
                       loss_csv, train_loss, eval_loss, counts, digest, n_trainable, n_total,
                       dict(output.metrics), trainer.model, tokenizer)


def write_loss_history(log_history: Sequence[Mapping], path: str | Path) -> Path:
    """The Trainer's log as a tidy table: one row per (step, split) with the loss (and train lr)."""
    path = Path(path)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "epoch", "split", "loss", "learning_rate"])
        for entry in log_history:
            if "loss" in entry:
                writer.writerow([entry["step"], entry.get("epoch"), "train", entry["loss"],
                                 entry.get("learning_rate")])
            if "eval_loss" in entry:
                writer.writerow([entry["step"], entry.get("epoch"), "validation", entry["eval_loss"], None])
    return path


def load_trained(output_dir: str | Path, dtype=None):
    """A finished run's model and tokenizer: :func:`refinelib.tune.models.load` of the run folder (kept
    while notebooks still import it from here)."""
    return models.load(output_dir, dtype=dtype)


def _apply_lora(model, config: TrainConfig):
    """Wrap the model with LoRA adapters (peft); only the adapters train."""
    layers, targets = None, config.lora_target_modules
    if config.lora_top_layers:  # None or 0: every layer
        n = model.config.num_hidden_layers
        layers = list(range(max(0, n - config.lora_top_layers), n))
        if targets == "all-linear":  # peft takes a layer subset only with explicit module names
            targets = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                              if isinstance(module, torch.nn.Linear) and ".layers." in name})
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets, layers_to_transform=layers, task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def micro_batch_size(config: TrainConfig) -> int:
    """Examples per forward/backward pass: ``config.micro_batch_size``, or for "auto" 1 on a CPU (no
    padding and the activations of one example; measured as fast as whole batches there) and the whole
    batch on a GPU (which wants wide matrices)."""
    if config.micro_batch_size != "auto":
        return config.micro_batch_size
    return config.batch_size if torch.cuda.is_available() else 1


def threads(setting: int | str | None) -> int | None:
    """torch threads for a ``num_threads`` setting: "auto" takes the cores other processes leave idle.

    Two spinning OpenMP threads on two cores that other jobs also use lost 3-6x in ``train_speed.py``
    (and 10-20x in generation, docs/models.md). "auto" counts how busy the usable cores are over half a
    second while this process sleeps (so its own earlier work, e.g. a previous training, does not count;
    the load average would count it) and keeps at least one thread.
    """
    if setting != "auto":
        return setting
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cpus = sorted(usable)
    try:
        busy = _busy_cpus(cpus)
    except (OSError, ValueError):  # no /proc/stat (not Linux): the load average, ours included
        busy = os.getloadavg()[0]
    return max(1, min(len(cpus), round(len(cpus) - busy)))


def _busy_cpus(cpus: Sequence[int], seconds: float = 0.5) -> float:
    """How many of ``cpus`` were busy over ``seconds`` (from /proc/stat; this process sleeps meanwhile)."""
    def sample() -> dict[str, tuple[int, int]]:
        ticks = {}
        for line in Path("/proc/stat").read_text().splitlines():
            name, *values = line.split()
            if name[:3] == "cpu" and name[3:].isdigit() and int(name[3:]) in cpus:
                counts = [int(v) for v in values[:8]]
                ticks[name] = (sum(counts), counts[3] + counts[4])  # all ticks, idle + iowait ticks
        return ticks

    before = sample()
    time.sleep(seconds)
    after = sample()
    busy = 0.0
    for name, (total, idle) in after.items():
        spent = total - before[name][0]
        busy += (spent - (idle - before[name][1])) / spent if spent else 0.0
    return busy


def _training_arguments(config: TrainConfig, has_eval: bool, eval_on_start: bool):
    """TrainingArguments for this config; 'auto' switches follow the hardware."""
    cuda = torch.cuda.is_available()
    bf16 = (cuda and torch.cuda.is_bf16_supported()) if config.bf16 == "auto" else config.bf16
    checkpointing = cuda if config.gradient_checkpointing == "auto" else config.gradient_checkpointing
    eval_steps = config.eval_steps or config.save_steps
    micro = micro_batch_size(config)
    return TrainingArguments(
        output_dir=config.output_dir,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,  # a float < 1 is a ratio of the total steps (transformers 5)
        weight_decay=config.weight_decay,
        # a batch of batch_size is micro-batches of `micro`, accumulated: the same examples per optimizer
        # step, and the sampler groups batch_size * accumulation examples, so the same batches too
        per_device_train_batch_size=micro,
        per_device_eval_batch_size=config.batch_size,  # eval loss is a mean of per-batch means: keep them
        gradient_accumulation_steps=config.grad_accumulation * (config.batch_size // micro),
        seed=config.seed,
        data_seed=config.seed,
        bf16=bf16,
        activation_checkpointing=checkpointing,
        # non-reentrant checkpointing needs no input grads, so frozen LoRA bases stay frozen
        activation_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
        use_cpu=not cuda,
        dataloader_pin_memory=cuda,
        train_sampling_strategy="group_by_length" if config.group_by_length and not config.padding_free
        else "random",
        remove_unused_columns=False,  # the datasets carry exactly what the collators need
        eval_strategy="steps" if has_eval else "no",
        eval_steps=eval_steps,
        eval_on_start=eval_on_start,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        logging_steps=config.logging_steps,
        report_to="none",
        disable_tqdm=True,
    )


def run_identity(config: TrainConfig, digest: str) -> dict[str, Any]:
    """What checkpoints must share to be resumed: the config (less RESUMABLE_CHANGES), the rendered data's
    fingerprint, this module's code and the training packages' versions."""
    fields = {k: v for k, v in config.to_dict().items() if k not in RESUMABLE_CHANGES}
    return {**fields, "dataset_fingerprint": digest, "code": runs.code_version(__name__),
            "packages": package_versions(("torch", "transformers", "peft"))}


def _check_same_run(out: Path, config: TrainConfig, digest: str, resume: str | None) -> None:
    """Refuse to resume another run's checkpoints; set an earlier run's manifest aside; record this run.

    The manifest goes before training starts, so a folder whose run is unfinished never looks finished
    (evaluation trusts ``manifest.json``); a finished run called again rewrites it at the end.
    """
    identity, sidecar, manifest = run_identity(config, digest), out / RUN_FILE, out / "manifest.json"
    if resume is not None:
        # one StaleRunError (a ValueError) naming each changed field, or that no identity was recorded
        runs.check_identity(sidecar, identity, "refuse", files=[Path(resume)])
        manifest.unlink(missing_ok=True)
        return
    kept = runs.set_aside(manifest) if manifest.is_file() else []
    if kept:
        warnings.warn(f"{out} held a finished earlier run; its manifest is kept as {kept[0].name} and this "
                      "run's outputs replace that run's", runs.StaleRunWarning, stacklevel=3)
    runs.write_json_atomic(sidecar, identity, indent=1, default=str)


def _hardware(trainer) -> dict[str, Any]:
    """Where the run happened (device, precision, threads), for the manifest."""
    args = trainer.args
    return {"device": str(args.device), "bf16": args.bf16,
            "gradient_checkpointing": args.activation_checkpointing,
            "torch_threads": torch.get_num_threads(), "world_size": args.world_size,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
