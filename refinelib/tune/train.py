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
import hashlib
import json
import math
import os
import random
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import PrinterCallback, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from refinelib import runs
from refinelib.manifest import package_versions, write_manifest
from refinelib.tune import models
from refinelib.tune.masking import Rendered, render_many
from refinelib.tune.train_config import TrainConfig
from refinelib.tune.trainer import PaddedCollator, RefineTrainer, check_padding_free, padding_free_collator

RUN_FILE = "run.json"             # identity (config, data fingerprint, code) of the checkpoints' run
LOSS_FILE = "loss_history.csv"
# Fields that may change between an interrupted run and its resumption without changing what is trained.
# micro_batch_size and supervised_logits_only change how, not what: the same loss and gradient per step.
RESUMABLE_CHANGES = {"num_threads", "merge", "save_total_limit", "micro_batch_size", "supervised_logits_only"}


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


# Long on purpose: one training run in the order it happens (data, checks, model, trainer, resume, save,
# manifest), every step needing the ones before it; the pieces with logic of their own are functions.
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
