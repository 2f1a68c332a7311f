"""The transformers ``Trainer`` as refinement tuning runs it: the loss only at supervised positions,
batches that give the same loss and gradient whatever their split, and seeded length grouping.

Most positions of a trajectory are masked context (the instruction, observations, erroneous turns): the
LM head and the loss run only where a label is trained (:func:`supervised_loss`, the same value as the
full-vocabulary loss to 1e-5, tested), which is where most of the speed and memory of training goes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from transformers import DataCollatorWithFlattening, Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler

from refinelib.tune.masking import IGNORE_INDEX, Rendered


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
