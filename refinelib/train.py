"""Refinement tuning (method.md §8-§10): loss-masked fine-tuning with transformers ``Trainer`` + ``peft``.

Records in the released schema (``{id, conversations: [{from, loss, value}]}``) are rendered by
:func:`refinelib.masking.render_many`, so erroneous assistant turns stay in the context with label -100;
examples with nothing to train are skipped and counted, never trained on silently. LoRA is the default,
full fine-tuning an option; the same code path runs on a CPU and, through ``accelerate launch``, on GPUs::

    from refinelib.train import TrainConfig, train
    result = train(TrainConfig(train_file="artifacts/data/dev/train.jsonl", output_dir="artifacts/train/dev"))
    result.eval_loss, result.model_dir        # adapter/ (LoRA) or model/ (full), loadable with load_trained

Calling ``train`` again with the same config after an interruption resumes from the newest checkpoint in
``output_dir``. Outputs: ``checkpoint-*/`` (Trainer), ``adapter/`` or ``model/`` (with the tokenizer),
``merged/`` when asked, ``loss_history.csv`` (step, epoch, split, loss) and ``manifest.json``, written last.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import json
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import DataCollatorWithFlattening, PrinterCallback, Trainer, TrainingArguments, set_seed
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import get_last_checkpoint

from refinelib import models
from refinelib.manifest import package_versions, write_manifest
from refinelib.masking import IGNORE_INDEX, POLICIES, Rendered, render_many

RUN_FILE = "run.json"             # config + data fingerprint of the run the checkpoints belong to
LOSS_FILE = "loss_history.csv"
# Fields that may change between an interrupted run and its resumption without changing what is trained.
RESUMABLE_CHANGES = {"num_threads", "merge", "save_total_limit"}


@dataclass
class TrainConfig:
    """Everything a refinement-tuning run depends on; saved in ``manifest.json`` (records by fingerprint)."""

    # Model
    base_model: str = models.DEFAULT_MODEL  # SmolLM2-135M-Instruct ships offline; any HF id or local dir
    method: str = "lora"                 # "lora": cheap on CPU, small artifact; "full": the paper's setting
    # Data
    train_file: str | None = None        # JSONL in the released schema (method.md §7)
    validation_file: str | None = None   # a held-out JSONL; otherwise eval_fraction of train is held out
    train_records: list[dict] | None = field(default=None, repr=False)       # in memory instead of a file
    validation_records: list[dict] | None = field(default=None, repr=False)  # in memory instead of a file
    eval_fraction: float = 0.1           # validation share split off train when none is given; 0 = no eval
    mask_policy: str = "refine"          # masking.POLICIES: the paper's row and its two mask ablations
    max_length: int = 2048               # trajectories are ~1k tokens (method.md §7); caps CPU cost
    # LoRA (ignored for method="full")
    lora_r: int = 16                     # rank: enough for format and recovery behaviour; 3.6 % of SmolLM2
    lora_alpha: int = 32                 # alpha = 2r, the usual scale, so lr transfers across r
    lora_dropout: float = 0.0            # 0.05 cost SmolLM2 on CPU +9 % time, +1.6 GB peak (train_speed.py)
    lora_target_modules: str | list[str] = "all-linear"  # every projection: better than q/v only at equal r
    lora_top_layers: int | None = None   # only the top N layers: backward stops early (models.md §6 lever)
    # Optimisation
    epochs: float = 3.0                  # method.md §10's starting point
    max_steps: int = -1                  # >0 overrides epochs (smoke runs)
    learning_rate: float = 2e-4          # LoRA's usual; use ~2e-5 for full fine-tuning of an 8B model
    lr_scheduler: str = "cosine"         # method.md §10
    warmup_ratio: float = 0.03           # method.md §10: 3 % warmup
    weight_decay: float = 0.0            # no decay: short runs, and LoRA factors start at zero anyway
    batch_size: int = 4                  # per device; SmolLM2 LoRA, 4 x ~420 tokens: 6.9 GB peak on CPU
    grad_accumulation: int = 1           # raise on GPUs toward the paper's global batch of 64
    seed: int = 0                        # model init (LoRA factors), data order, dropout, and the split
    # Batching and hardware
    padding_free: bool = False           # pack each batch into one row with position_ids resets (no padding)
    group_by_length: bool = True         # padded batches of similar lengths: little padding, same maths
    bf16: bool | str = "auto"            # "auto": on where the GPU supports bf16; CPUs are slow in it
    gradient_checkpointing: bool | str = "auto"  # "auto": on with CUDA (memory-bound), off on CPU (slower)
    num_threads: int | None = None       # torch.set_num_threads when set; None leaves OMP_NUM_THREADS alone
    # Outputs
    output_dir: str = "artifacts/train/dev"  # checkpoints, adapter/model, loss table and manifest go here
    save_steps: int = 50                 # checkpoint period: what an interruption can cost
    save_total_limit: int | None = 2     # keep the newest checkpoints only (disk), enough to resume
    eval_steps: int | None = None        # validation-loss period; None = every save_steps
    logging_steps: int = 1               # one loss row per optimizer step in loss_history.csv
    merge: bool = False                  # also write merged/ (LoRA folded in) for engines without peft

    def __post_init__(self):
        if self.method not in ("lora", "full"):
            raise ValueError(f"method must be 'lora' or 'full', not {self.method!r}")
        if self.mask_policy not in POLICIES:
            raise ValueError(f"mask_policy must be one of {POLICIES}, not {self.mask_policy!r}")
        if (self.train_file is None) == (self.train_records is None):
            raise ValueError("give exactly one of train_file and train_records")
        if self.validation_file is not None and self.validation_records is not None:
            raise ValueError("give at most one of validation_file and validation_records")
        for name in ("bf16", "gradient_checkpointing"):
            if getattr(self, name) not in (True, False, "auto"):
                raise ValueError(f"{name} must be true, false or 'auto'")
        if not 0 <= self.eval_fraction < 1:
            raise ValueError("eval_fraction must be in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-ready values; in-memory records appear as a count (the fingerprint has them)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # no deep copy of records
        for name in ("train_records", "validation_records"):
            out[name] = None if out[name] is None else f"<{len(out[name])} records in memory>"
        return out


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


class RefineTrainer(Trainer):
    """``Trainer`` with :class:`EpochSeededLengthGroupedSampler` in place of the global-RNG one."""

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if type(sampler) is LengthGroupedSampler:
            return EpochSeededLengthGroupedSampler(sampler.batch_size, sampler.lengths, self.args.data_seed)
        return sampler


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
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    out = Path(config.output_dir)
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
    """Reload a finished run's model: the base model with its adapter, or the full weights.

    Returns:
        ``(model, tokenizer)``, the model in eval mode.
    """
    output_dir = Path(output_dir)
    manifest = json.loads((output_dir / "manifest.json").read_text())
    model_dir = output_dir / manifest["model_dir"]  # stored relative: the run directory can move
    if manifest["config"]["method"] == "full":
        return models.load(model_dir, dtype=dtype)
    model, _ = models.load(manifest["config"]["base_model"], dtype=dtype)
    model = PeftModel.from_pretrained(model, model_dir)
    model.eval()
    return model, models.load_tokenizer(model_dir)


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


def _training_arguments(config: TrainConfig, has_eval: bool, eval_on_start: bool):
    """TrainingArguments for this config; 'auto' switches follow the hardware."""
    cuda = torch.cuda.is_available()
    bf16 = (cuda and torch.cuda.is_bf16_supported()) if config.bf16 == "auto" else config.bf16
    checkpointing = cuda if config.gradient_checkpointing == "auto" else config.gradient_checkpointing
    eval_steps = config.eval_steps or config.save_steps
    return TrainingArguments(
        output_dir=config.output_dir,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,  # a float < 1 is a ratio of the total steps (transformers 5)
        weight_decay=config.weight_decay,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accumulation,
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


def _check_same_run(out: Path, config: TrainConfig, digest: str, resume: str | None) -> None:
    """Record this run's identity; refuse to resume another run's checkpoints."""
    mine = json.loads(json.dumps({"config": config.to_dict(), "dataset_fingerprint": digest}, default=str))
    path = out / RUN_FILE
    if resume is not None and path.is_file():
        theirs = json.loads(path.read_text())
        changed = sorted(k for k in mine["config"]
                         if k not in RESUMABLE_CHANGES and theirs["config"].get(k) != mine["config"][k])
        if changed or theirs["dataset_fingerprint"] != digest:
            what = ", ".join(changed) if changed else "the rendered dataset"
            raise ValueError(f"{out} holds checkpoints of a different run ({what} changed); "
                             "use another output_dir or delete the checkpoints")
    tmp = out / f".{RUN_FILE}.partial"
    tmp.write_text(json.dumps(mine, indent=1))
    tmp.replace(path)


def _hardware(trainer) -> dict[str, Any]:
    """Where the run happened (device, precision, threads), for the manifest."""
    args = trainer.args
    return {"device": str(args.device), "bf16": args.bf16,
            "gradient_checkpointing": args.activation_checkpointing,
            "torch_threads": torch.get_num_threads(), "world_size": args.world_size,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
