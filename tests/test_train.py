"""Refinement tuning (train.py) on the tiny model: loss falls, the mask holds, outputs reload, runs resume."""

import copy
import csv
import doctest
import json
import os

import pytest
import torch
from tiny_model import CORPUS, tiny_model, tiny_tokenizer
from transformers import TrainerCallback

import refinelib.tune.train
from refinelib.tune.masking import IGNORE_INDEX, render, render_many
from refinelib.tune.models import load as load_model
from refinelib.tune.train import split_records, train
from refinelib.tune.train_config import TrainConfig
from refinelib.tune.trainer import PaddedCollator, check_padding_free, padding_free_collator

OBJECTS = ["mug", "key", "lamp", "box"]
PLACES = ["drawer 1", "table", "shelf 2", "desk"]
ERRONEOUS = "Thought: I should look around first.\nAction: fly to {place}"


def episode(i: int) -> dict:
    """A templated household episode: an erroneous turn, the error, a refinement turn, a good turn."""
    obj, place = OBJECTS[i % 4], PLACES[(i // 4) % 4]
    refinement = f"Thought: The {obj} is in the {place}.\nAction: go to {place}"
    return {"id": f"ep{i:03d}", "conversations": [
        {"from": "human", "loss": False, "value": f"Your goal is to put a {obj} on the {place}."},
        {"from": "gpt", "loss": False, "value": ERRONEOUS.format(place=place)},
        {"from": "human", "loss": False, "value": "Observation: Error: Invalid command format."},
        {"from": "gpt", "loss": True, "value": refinement},
        {"from": "human", "loss": False, "value": f"Observation: You see a {obj}."},
        {"from": "gpt", "loss": True, "value": f"Thought: I see it.\nAction: take {obj} from {place}"}]}


def untrainable(i: int) -> dict:
    """Only an erroneous assistant turn: the refine policy has nothing to train."""
    return {"id": f"bad{i}", "conversations": episode(i)["conversations"][:3]}


def too_long(i: int, turn: int = 0) -> dict:
    """A long message at ``turn``: 0 leaves no trained turn within max_length=200, 4 cuts the last turn."""
    record = copy.deepcopy(episode(i))
    record["id"] = f"long{i}-{turn}"
    record["conversations"][turn]["value"] = "Available actions: look, inventory, go to {recep}. " * 12
    return record


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """The tiny Llama, pretrained for 30 steps on the tokenizer's corpus, saved with its ChatML tokenizer.

    LoRA adapts a model that has seen text: on random frozen embeddings it barely moves the loss
    (6.0 -> 5.5 in our runs), after this 0.4 s of pretraining it falls 6.6 -> 2.8 on the episodes.
    """
    path = tmp_path_factory.mktemp("tiny")
    tokenizer = tiny_tokenizer()
    model = tiny_model(tokenizer)
    batch = tokenizer(sorted(set(CORPUS)), padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(30):
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def config(tiny_dir, output_dir, **overrides) -> TrainConfig:
    """Small, fast settings: the tiny model learns the templates within a few dozen steps."""
    base = dict(base_model=tiny_dir, train_records=[episode(i) for i in range(24)],
                output_dir=str(output_dir), max_length=200, epochs=2, batch_size=4, learning_rate=2e-2,
                warmup_ratio=0.0, lora_r=8, lora_alpha=16, save_steps=6, num_threads=1)
    return TrainConfig(**{**base, **overrides})


class Snapshot(TrainerCallback):
    """Copies the model's parameters when training begins."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.params = {name: p.detach().clone() for name, p in model.named_parameters()}
        self.trainable = {name for name, p in model.named_parameters() if p.requires_grad}


class Crash(TrainerCallback):
    """Simulates an interruption right after the checkpoint at ``step`` is written."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            raise KeyboardInterrupt(f"interrupted after step {state.global_step}")


@pytest.fixture(scope="module")
def lora_run(tiny_dir, tmp_path_factory):
    """One LoRA run from JSONL files, with two unusable records in the training file and merge=True."""
    root = tmp_path_factory.mktemp("lora")
    unusable = [too_long(23, turn=4), untrainable(0), too_long(1)]  # truncated, skipped, skipped
    train_file = write_jsonl(root / "train.jsonl", [episode(i) for i in range(23)] + unusable)
    val_file = write_jsonl(root / "val.jsonl", [episode(i) for i in range(100, 104)])
    snapshot = Snapshot()
    cfg = config(tiny_dir, root / "run", train_records=None, train_file=train_file, validation_file=val_file,
                 merge=True, lora_dropout=0.1)
    return cfg, train(cfg, callbacks=[snapshot]), snapshot


def history(result, split: str) -> list[float]:
    with open(result.loss_csv) as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle) if row["split"] == split]


def logits(model, tokenizer, text="Thought: The key is in the drawer.\nAction: open drawer 1"):
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits


def test_lora_loss_is_finite_and_falls_on_train_and_validation(lora_run):
    _, result, _ = lora_run
    train_loss, val_loss = history(result, "train"), history(result, "validation")
    assert result.completed and result.global_step == 12  # 24 kept examples / batch 4 x 2 epochs
    assert all(torch.isfinite(torch.tensor(train_loss + val_loss)))
    assert sum(train_loss[-3:]) / 3 < 0.7 * sum(train_loss[:3]) / 3
    assert val_loss[-1] < 0.6 * val_loss[0] and result.eval_loss == val_loss[-1]


def test_lora_changes_every_adapter_and_no_base_weight(lora_run, tiny_dir):
    _, result, snapshot = lora_run
    now = dict(result.model.named_parameters())
    assert snapshot.trainable and all("lora_" in name for name in snapshot.trainable)
    assert result.trainable_parameters == sum(now[n].numel() for n in snapshot.trainable)
    for name, before in snapshot.params.items():
        changed = not torch.equal(before, now[name])
        assert changed == (name in snapshot.trainable), name
    base, _ = refinelib.tune.models.load(tiny_dir)
    merged = result.model.get_base_model().state_dict()
    for name, weight in base.state_dict().items():  # base_layer weights inside the LoRA wrappers too
        wrapped = name.replace(".weight", ".base_layer.weight")
        assert torch.equal(weight, merged[wrapped if wrapped in merged else name]), name


def test_skipped_and_truncated_examples_are_counted_in_result_and_manifest(lora_run):
    _, result, _ = lora_run
    counts = result.counts["train"]
    assert (counts["records"], counts["kept"], counts["truncated"]) == (26, 24, 1)
    assert counts["skipped_no_trained_turn"] == 1 and counts["skipped_truncated"] == 1
    assert result.counts["validation"]["kept"] == 4
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["counts"] == result.counts
    assert manifest["dataset_fingerprint"] == result.dataset_fingerprint
    assert manifest["config"]["train_file"].endswith("train.jsonl") and manifest["config"]["method"] == "lora"
    assert manifest["packages"]["peft"] and manifest["git_revision"]


def test_outputs_exist_and_the_manifest_is_written_last(lora_run):
    _, result, _ = lora_run
    out = result.output_dir
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "merged" / "config.json").is_file()
    assert (out / "adapter" / "tokenizer_config.json").is_file()
    with open(result.loss_csv) as handle:
        rows = list(csv.DictReader(handle))
    assert {r["split"] for r in rows} == {"train", "validation"}
    assert [int(r["step"]) for r in rows if r["split"] == "train"] == list(range(1, 13))
    newest = max(p.stat().st_mtime_ns for p in out.rglob("*")  # .lock: released after the manifest
                 if p.is_file() and p.name not in ("manifest.json", ".lock"))
    assert (out / "manifest.json").stat().st_mtime_ns >= newest


def test_saved_adapter_and_merged_weights_reload_with_the_same_logits(lora_run):
    _, result, _ = lora_run
    result.model.eval()
    expected = logits(result.model, result.tokenizer)
    model, tokenizer = load_model(result.output_dir)
    assert type(model).__name__ == "PeftModelForCausalLM"
    assert tokenizer.chat_template == result.tokenizer.chat_template
    torch.testing.assert_close(logits(model, tokenizer), expected, rtol=0, atol=1e-5)
    merged, _ = refinelib.tune.models.load(result.merged_dir)
    torch.testing.assert_close(logits(merged, tokenizer), expected, rtol=0, atol=1e-4)


def test_full_fine_tuning_changes_every_weight_tensor(tiny_dir, tmp_path):
    snapshot = Snapshot()
    result = train(config(tiny_dir, tmp_path, method="full", max_steps=3, learning_rate=1e-3,
                          gradient_checkpointing=True), callbacks=[snapshot])
    now = dict(result.model.named_parameters())
    assert result.trainable_parameters == result.total_parameters == sum(p.numel() for p in now.values())
    assert all(not torch.equal(before, now[name]) for name, before in snapshot.params.items())
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert json.loads(result.manifest_path.read_text())["hardware"]["gradient_checkpointing"] is True
    model, tokenizer = load_model(tmp_path)
    result.model.eval()
    torch.testing.assert_close(logits(model, tokenizer), logits(result.model, tokenizer), rtol=0, atol=1e-5)


@pytest.mark.parametrize("padding_free", [False, True])
def test_erroneous_turns_receive_no_gradient(tiny_dir, padding_free):
    """d loss / d logits is zero wherever the next token belongs to the erroneous turn (and non-zero on the
    refinement turn); with policy erroneous_loss the same positions do get a gradient."""
    tokenizer = refinelib.tune.models.load_tokenizer(tiny_dir)
    model, _ = refinelib.tune.models.load(tiny_dir)
    wrong = tokenizer(ERRONEOUS.format(place="table"), add_special_tokens=False)["input_ids"]
    for policy, expect_signal in [("refine", False), ("erroneous_loss", True)]:
        examples, _ = render_many([episode(i) for i in range(4, 8)], tokenizer, policy=policy)
        features = [e.features() for e in examples]
        collate = padding_free_collator() if padding_free else PaddedCollator(tokenizer.pad_token_id)
        batch = collate(features)
        out = model(**batch, use_cache=False)
        out.logits.retain_grad()
        out.loss.backward()
        grad = out.logits.grad.abs().sum(-1)  # per position
        found = 0
        for row, seq in enumerate(batch["input_ids"].tolist()):
            for start in [i for i in range(len(seq)) if seq[i:i + len(wrong)] == wrong]:
                found += 1
                # logits at t predict token t+1: the erroneous tokens are predicted from start-1 .. end-2
                signal = grad[row, start - 1:start + len(wrong) - 1]
                if expect_signal:
                    assert (signal > 0).all()
                else:
                    assert (signal == 0).all()
                    assert (batch["labels"][row, start:start + len(wrong)] == IGNORE_INDEX).all()
        assert found == 4  # one erroneous turn per episode, found token for token
        supervised = batch["labels"][:, 1:] != IGNORE_INDEX
        assert (grad[:, :-1][supervised] > 0).all()
        model.zero_grad()


def test_padding_free_trains_like_padded_batches(tiny_dir, tmp_path):
    tokenizer = refinelib.tune.models.load_tokenizer(tiny_dir)
    model, _ = refinelib.tune.models.load(tiny_dir)
    examples, _ = render_many([episode(i) for i in range(3)], tokenizer)
    assert check_padding_free(model, examples) < 1e-5
    # the packed run also checkpoints activations (LoRA + non-reentrant checkpointing): same losses
    runs = [train(config(tiny_dir, tmp_path / str(pf), padding_free=pf, group_by_length=False, max_steps=6,
                         lora_dropout=0.0, gradient_checkpointing=pf)) for pf in (False, True)]
    padded, packed = (history(r, "train") for r in runs)
    torch.testing.assert_close(torch.tensor(packed), torch.tensor(padded), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(runs[1].eval_loss, runs[0].eval_loss, rtol=1e-4, atol=1e-5)


def test_an_interrupted_run_resumes_to_the_same_final_weights(tiny_dir, tmp_path):
    cfg = dict(lora_dropout=0.1, epochs=2, save_steps=4)  # dropout: the RNG state must be restored too
    straight = train(config(tiny_dir, tmp_path / "straight", **cfg))
    with pytest.raises(KeyboardInterrupt):
        train(config(tiny_dir, tmp_path / "resumed", **cfg), callbacks=[Crash(step=4)])
    assert not (tmp_path / "resumed" / "manifest.json").exists()
    resumed = train(config(tiny_dir, tmp_path / "resumed", **cfg))
    assert resumed.resumed_from.endswith("checkpoint-4") and resumed.global_step == straight.global_step == 12
    a, b = (dict(r.model.named_parameters()) for r in (straight, resumed))
    for name, p in a.items():
        assert torch.equal(p, b[name]), name
    assert history(resumed, "train") == history(straight, "train")
    assert json.loads(resumed.manifest_path.read_text())["resumed_from"].endswith("checkpoint-4")


def test_resuming_refuses_checkpoints_of_a_different_run(tiny_dir, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        train(config(tiny_dir, tmp_path, save_steps=2), callbacks=[Crash(step=2)])
    with pytest.raises(ValueError, match="learning_rate: 0.02 -> 0.001"):
        train(config(tiny_dir, tmp_path, save_steps=2, learning_rate=1e-3))


def test_a_dataset_with_nothing_to_train_is_refused(tiny_dir, tmp_path):
    with pytest.raises(ValueError, match="no training example"):
        train(config(tiny_dir, tmp_path, train_records=[untrainable(i) for i in range(3)]))


def test_split_is_seeded_and_never_empty():
    records = [episode(i) for i in range(10)]
    train_part, held = split_records(records, 0.1, seed=0)
    assert len(held) == 1 and len(train_part) == 9
    assert split_records(list(reversed(records)), 0.1, seed=0)[1] == held  # by id, not by file order
    assert split_records(records, 0.0, seed=0) == (records, [])


def test_config_rejects_unknown_choices():
    with pytest.raises(ValueError, match="mask_policy"):
        TrainConfig(train_records=[], mask_policy="mask_everything")
    with pytest.raises(ValueError, match="exactly one"):
        TrainConfig()
    assert TrainConfig(train_records=[episode(0)]).to_dict()["train_records"] == "<1 records in memory>"


def test_collator_pads_labels_with_ignore_index_and_docstrings_run():
    tokenizer = tiny_tokenizer()
    features = [render(episode(i), tokenizer).features() for i in (0, 5)]
    batch = PaddedCollator(tokenizer.pad_token_id)(copy.deepcopy(features))
    for row, f in enumerate(features):
        n = len(f["input_ids"])
        assert batch["labels"][row, :n].tolist() == f["labels"]
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all() and batch["attention_mask"][row].sum() == n
    assert doctest.testmod(refinelib.tune.train).failed == 0


@pytest.mark.parametrize("top, expected_layers", [(None, {0, 1}), (0, {0, 1}), (1, {1})])
def test_lora_top_layers_works_with_all_linear_targets(top, expected_layers):
    from refinelib.tune.train import _apply_lora

    tok = tiny_tokenizer()
    config = TrainConfig(train_records=[{"id": "a", "conversations": [
        {"from": "human", "loss": False, "value": "hi"}, {"from": "gpt", "loss": True, "value": "yo"}]}],
        lora_top_layers=top, output_dir="unused")
    model = _apply_lora(tiny_model(tok), config)
    names = [n for n, _ in model.named_parameters() if "lora_A" in n]
    assert {int(n.split(".layers.")[1].split(".")[0]) for n in names} == expected_layers
    kinds = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n in names}
    assert {"q_proj", "down_proj"} <= kinds  # "all-linear" still means every projection


@pytest.mark.parametrize("padding_free", [False, True])
def test_supervised_loss_equals_the_models_loss_without_full_vocabulary_logits(tiny_dir, padding_free):
    """The LM head runs only where a label is supervised: same loss and LoRA gradients (to 1e-5), and the
    logits it makes cover exactly the supervised positions."""
    from refinelib.tune.train import _apply_lora
    from refinelib.tune.trainer import supervised_loss

    tokenizer = refinelib.tune.models.load_tokenizer(tiny_dir)
    model, _ = refinelib.tune.models.load(tiny_dir)
    model = _apply_lora(model, config(tiny_dir, "unused"))
    examples, _ = render_many([episode(i) for i in range(5)], tokenizer)
    collate = padding_free_collator() if padding_free else PaddedCollator(tokenizer.pad_token_id)
    batch = collate([e.features() for e in examples])
    labels = batch.pop("labels")
    n_supervised = int((labels[:, 1:] != IGNORE_INDEX).sum())
    grads = []
    for compute in ("model", "supervised"):
        if compute == "model":
            loss = model(**batch, labels=labels, use_cache=False).loss
        else:
            loss, outputs = supervised_loss(model, batch, labels)
            assert outputs.logits.shape == (n_supervised, len(tokenizer))
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
        model.zero_grad()
        grads[-1]["loss"] = loss.detach()
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-5)
    # normalised by a whole accumulated batch's count, as the Trainer asks under gradient accumulation
    halved, _ = supervised_loss(model, batch, labels, num_items_in_batch=2 * n_supervised)
    torch.testing.assert_close(halved, grads[0]["loss"] / 2, rtol=0, atol=1e-5)


@pytest.mark.parametrize("batch_size, grad_accumulation", [(4, 1), (2, 2)])
def test_new_path_trains_exactly_like_full_logits_on_whole_batches(tiny_dir, tmp_path, batch_size,
                                                                    grad_accumulation):
    """Default train() (supervised logits only, micro-batches of one on a CPU) against the path before it
    (full logits, the whole padded batch in one pass): the same losses step by step, the same weights."""
    from refinelib.tune.train import micro_batch_size

    common = dict(batch_size=batch_size, grad_accumulation=grad_accumulation, epochs=1, lora_dropout=0.0)
    new = config(tiny_dir, tmp_path / "new", **common)
    old = config(tiny_dir, tmp_path / "old", supervised_logits_only=False, micro_batch_size=batch_size,
                 **common)
    assert micro_batch_size(new) == (batch_size if torch.cuda.is_available() else 1)
    runs = [train(c) for c in (new, old)]
    for split in ("train", "validation"):
        losses = [torch.tensor(history(r, split)) for r in runs]
        torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=1e-5)
    assert runs[0].global_step == runs[1].global_step == 6  # 21 examples (3 held out), the last step partial
    trained = [{n: p for n, p in r.model.named_parameters() if p.requires_grad} for r in runs]
    torch.testing.assert_close(trained[0], trained[1], rtol=0, atol=1e-5)


def test_num_threads_is_applied_during_training_and_restored_after(tiny_dir, tmp_path):
    from refinelib.tune.train import threads

    seen = []

    class Threads(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            seen.append(torch.get_num_threads())

    before = torch.get_num_threads()
    train(config(tiny_dir, tmp_path, max_steps=1, num_threads=1), callbacks=[Threads()])
    assert seen == [1] and torch.get_num_threads() == before
    assert 1 <= threads("auto") <= len(os.sched_getaffinity(0))
    assert threads(None) is None and threads(3) == 3
