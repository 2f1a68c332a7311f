"""What a refinement-tuning run depends on: :class:`TrainConfig`, every field with its help and rules.

One dataclass, TRL's convention: each field carries ``metadata={"help": ...}`` plus value rules
(``choices``, ``min``, ``above``, ``below``), so the command line (:mod:`refinelib.tune.train_cli`) shows the
help of every field and a bad value fails with one error naming the field before any model loads.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from transformers.trainer_utils import SchedulerType

from refinelib.tune import models
from refinelib.tune.masking import POLICIES


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
