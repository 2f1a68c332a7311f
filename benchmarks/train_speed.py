"""Training throughput: tokens/s and peak RSS of refinement tuning, today's settings vs the new defaults.

Usage: python benchmarks/train_speed.py [--model tiny|smollm2|DIR] [--data book|synthetic] [--examples 12]
           [--batch-size 2] [--max-length 512] [--methods lora] [--variants today new ...]
           [--batching grouped] [--repeats 1] [--no-ceiling]

Each variant runs ``refinelib.tune.train.train`` for one epoch in its own subprocess (so peak RSS is its own)
at the same batch size, i.e. the same examples per optimizer step and the same losses:

* ``today``: the settings before issue 10: full-vocabulary logits at every position
  (``supervised_logits_only=False``), whole padded batches per pass, torch's default threads;
* ``new``: ``train()``'s defaults: LM head and loss at supervised positions only, micro-batches of one
  example on a CPU, ``num_threads="auto"`` (the cores other processes leave idle);
* ``new_all_threads``: the new path on every core, whatever the load;
* ``new_whole_batch``: the new path with the whole padded batch in one pass (what micro-batching is worth);
* ``new_top8``: the new path with LoRA on the top 8 of SmolLM2's 30 layers (other trainable weights, so
  other losses: a placement option, not the same run);
* ``new_bf16``: the new path under bf16 autocast (AMX on recent Xeons; other rounding, so other losses);
* ``today_1thread``: today's path on one thread (what the threading alone is worth).

``--data book`` trains on what the book's chapters train on: grounded-teacher refinement trajectories
from ``refinelib.synth.synthesis`` (notebook 02's default teacher); ``synthetic`` on short templated episodes.
tokens/s counts real (non-padding) tokens over the optimizer steps only (model loading and the final
save are excluded). The *ceiling* is a raw forward+backward of one LoRA batch (batch x max_length tokens,
no padding, SDPA) with the full LM head and with the head only at the supervised positions, measured in
the same run. ``--repeats 2`` runs the variants twice in alternating order, so a change of machine load
shows. Prints one row per run with the 1-minute load average at its start; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BATCHING = {"padded": dict(group_by_length=False, padding_free=False),
            "grouped": dict(group_by_length=True, padding_free=False),
            "padding_free": dict(group_by_length=False, padding_free=True)}
TODAY = dict(supervised_logits_only=False, micro_batch_size="batch", num_threads=None)
VARIANTS = {"today": TODAY, "new": {}, "new_all_threads": dict(num_threads="cores"),
            "new_whole_batch": dict(micro_batch_size="batch"),
            "new_top8": dict(lora_top_layers=8), "new_bf16": dict(bf16=True),
            "today_1thread": {**TODAY, "num_threads": 1}}


def episodes(n: int, seed: int = 0) -> list[dict]:
    """Household-like episodes with 1-10 trained turns and one erroneous turn each."""
    rng = random.Random(seed)
    objects, places = ["mug", "key", "lamp", "box"], ["drawer 1", "table", "shelf 2", "desk"]
    out = []
    for i in range(n):
        obj = rng.choice(objects)
        turns = [{"from": "human", "loss": False, "value": f"Your goal is to put a {obj} on the table. "
                  "Available actions: look, inventory, go to {recep}, open {recep}, take {obj} from {recep}. "
                  "Answer in the format Thought: ...\nAction: ..."},
                 {"from": "gpt", "loss": False, "value": "Thought: I should look around first.\nAction: fly"},
                 {"from": "human", "loss": False, "value": "Observation: Error: Invalid command format."}]
        for _ in range(rng.randint(1, 10)):
            place = rng.choice(places)
            turns += [{"from": "gpt", "loss": True, "value": f"Thought: The {obj} may be in the {place}.\n"
                       f"Action: go to {place}"},
                      {"from": "human", "loss": False, "value": f"Observation: You see a "
                       f"{rng.choice(objects)} and a {rng.choice(objects)} on the {place}."}]
        out.append({"id": f"bench{i:04d}", "conversations": turns[:-1]})
    return out


def book_records(n: int, seed: int = 0) -> list[dict]:
    """Refinement trajectories as the book makes them (notebook 02, grounded teacher, error rate 0.3)."""
    from refinelib.synth.synthesis import SynthesisConfig, synthesize

    with tempfile.TemporaryDirectory() as scratch:
        run = synthesize(SynthesisConfig(n=n, seed=seed, error_rate=0.3), scratch)
        return run.records()[0]


def save_tiny_model(path: str) -> str:
    """The unit-test model (tests/tiny_model.py) saved where base_model can point."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_model import tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tiny_model(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def settings(spec: dict) -> dict:
    """TrainConfig fields of a variant ("batch": micro-batch = batch; "cores": every usable core)."""
    chosen = {**BATCHING[spec["batching"]], **VARIANTS[spec["variant"]]}
    if chosen.get("micro_batch_size") == "batch":
        chosen["micro_batch_size"] = spec["batch_size"]
    if chosen.get("num_threads") == "cores":
        chosen["num_threads"] = len(os.sched_getaffinity(0))
    return chosen


def run_one(spec: dict) -> dict:
    """One variant, in this process: train one epoch and time the optimizer steps."""
    import torch
    import transformers
    from transformers import TrainerCallback

    from refinelib.tune.train import train
    from refinelib.tune.train_config import TrainConfig

    transformers.logging.set_verbosity_error()

    class StepClock(TrainerCallback):
        """Wall time from the first step's start to the last step's end; no checkpoints in between."""

        start = end = None
        threads = None

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = self.start or time.perf_counter()
            self.threads = torch.get_num_threads()

        def on_step_end(self, args, state, control, **kwargs):
            self.end = time.perf_counter()
            control.should_save = False

    clock = StepClock()
    records = json.loads(Path(spec["records"]).read_text())
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(base_model=spec["model"], train_records=records, output_dir=out,
                             method=spec["method"], epochs=1, batch_size=spec["batch_size"],
                             learning_rate=2e-4 if spec["method"] == "lora" else 2e-5, eval_fraction=0,
                             max_length=spec["max_length"], save_steps=10**6, logging_steps=1,
                             **settings(spec))
        result = train(config, callbacks=[clock])
        losses = [float(row.split(",")[3]) for row in result.loss_csv.read_text().splitlines()[1:]]
    tokens = result.counts["train"]["tokens"]
    seconds = clock.end - clock.start
    return {"variant": spec["variant"], "method": spec["method"], "batching": spec["batching"],
            "threads": clock.threads, "steps": result.global_step, "tokens": tokens,
            "seconds": round(seconds, 1), "tokens/s": round(tokens / seconds, 1), "losses": losses,
            "trainable": result.trainable_parameters,
            "peak RSS MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def ceiling(spec: dict) -> dict:
    """Raw LoRA forward+backward of one batch (batch x max_length tokens, no padding), full LM head vs
    the head at supervised positions only; tokens/s of the best of two timed passes after a warm-up."""
    import torch

    from refinelib.tune import models
    from refinelib.tune.masking import render_many
    from refinelib.tune.train import _apply_lora, threads
    from refinelib.tune.train_config import TrainConfig
    from refinelib.tune.trainer import supervised_loss

    torch.set_num_threads(threads(spec["threads"]))
    records = json.loads(Path(spec["records"]).read_text())
    model, tokenizer = models.load(spec["model"])
    model = _apply_lora(model, TrainConfig(train_records=records, lora_dropout=0.0))
    model.train()
    examples, _ = render_many(records, tokenizer, max_length=spec["max_length"])
    ids, labels = [], []
    for example in examples:  # the book's tokens and masks, concatenated into full rows
        ids += example.input_ids
        labels += example.labels
    width, n = spec["max_length"], spec["batch_size"]
    inputs = {"input_ids": torch.tensor(ids[:width * n]).view(n, width)}
    target = torch.tensor(labels[:width * n]).view(n, width)
    row = {"threads": torch.get_num_threads(), "batch": f"{n} x {width}",
           "supervised share": round(float((target != -100).float().mean()), 3)}
    passes = {"full LM head": lambda: model(**inputs, labels=target, use_cache=False).loss,
              "LM head at supervised positions": lambda: supervised_loss(model, inputs, target)[0]}
    for name, step in passes.items():
        times = []
        for _ in range(3):
            start = time.perf_counter()
            step().backward()
            times.append(time.perf_counter() - start)
            model.zero_grad(set_to_none=True)
        row[f"{name} tok/s"] = round(n * width / min(times[1:]), 1)
    row["peak RSS MB"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return row


def subprocess_json(flag: str, spec: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, flag, json.dumps(spec)], capture_output=True, text=True,
                          check=False)
    if done.returncode:
        sys.exit(f"{spec}: failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="'tiny', 'smollm2', or any model directory / HF id")
    ap.add_argument("--data", choices=("book", "synthetic"), default="book")
    ap.add_argument("--examples", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=2, help="the book's tuning chapter uses 2")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--methods", nargs="*", default=["lora"])
    ap.add_argument("--variants", nargs="*", default=["today", "new"], choices=list(VARIANTS))
    ap.add_argument("--batching", nargs="*", default=["grouped"], choices=list(BATCHING))
    ap.add_argument("--repeats", type=int, default=1, help="run the variants this often, alternating order")
    ap.add_argument("--no-ceiling", action="store_true", help="skip the raw forward+backward ceiling")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one variant given as JSON
    ap.add_argument("--ceiling", help=argparse.SUPPRESS)  # internal: measure the ceiling given as JSON
    args = ap.parse_args()
    if args.one or args.ceiling:
        print(json.dumps(run_one(json.loads(args.one)) if args.one else ceiling(json.loads(args.ceiling))))
        return
    scratch = tempfile.TemporaryDirectory(prefix="train-speed-")
    if args.model == "tiny":
        model = save_tiny_model(scratch.name)
    else:
        model = "SmolLM2-135M-Instruct" if args.model == "smollm2" else args.model
    records = book_records(args.examples) if args.data == "book" else episodes(args.examples)
    data = Path(scratch.name) / "records.json"
    data.write_text(json.dumps(records))
    base = dict(model=model, records=str(data), examples=args.examples, batch_size=args.batch_size,
                max_length=args.max_length)
    rows = []
    for repeat in range(args.repeats):
        order = args.variants if repeat % 2 == 0 else list(reversed(args.variants))
        for method in args.methods:
            for batching in args.batching:
                for variant in order:
                    load = os.getloadavg()[0]
                    row = subprocess_json("--one", {**base, "method": method, "batching": batching,
                                                    "variant": variant})
                    rows.append({"load": round(load, 2), **row})
                    print(rows[-1], file=sys.stderr)
    reference = {(r["method"], r["batching"]): r for r in rows if r["variant"] == "today"}
    header = [k for k in rows[0] if k != "losses"] + ["max |loss - today's|"]
    print(" | ".join(header))
    for row in rows:
        ref = reference.get((row["method"], row["batching"]))
        gaps = [abs(a - b) for a, b in zip(row["losses"], ref["losses"], strict=True)] if ref else []
        diff = f"{max(gaps):.2g}" if gaps else ""
        print(" | ".join(str(row.get(k, "")) for k in header[:-1]) + f" | {diff}")
    if not args.no_ceiling:
        load = os.getloadavg()[0]
        row = subprocess_json("--ceiling", {**base, "threads": "auto"})
        print(f"ceiling (load {load:.2f}): " + ", ".join(f"{k} {v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
