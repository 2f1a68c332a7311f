"""Training throughput: tokens/s and peak RSS for LoRA vs full fine-tuning, padded vs grouped vs padding-free.

Usage: python benchmarks/train_speed.py [--model tiny|smollm2|DIR] [--examples 32] [--batch-size 4]
           [--methods lora full] [--batching padded grouped padding_free] [--lora-dropout 0.0]
           [--lora-top-layers N]

Each variant runs ``refinelib.train.train`` for one epoch in its own subprocess (so peak RSS is its own)
on synthetic household episodes of 1-10 assistant turns, i.e. lengths that vary ~5x, as real
trajectories do. tokens/s counts real (non-padding) tokens over the optimizer steps only (model loading
and the final save are excluded). "padded" batches in random order, "grouped" uses length-grouped
batches, "padding_free" packs each batch into one row. The padded and padding-free runs see the same
batches, so their losses must agree. Prints a table; nothing is asserted (speed goals are read, not tested).
Keep other work off the machine, and OMP_NUM_THREADS=1 when it is shared.
"""

from __future__ import annotations

import argparse
import json
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


def save_tiny_model(path: str) -> str:
    """The unit-test model (tests/tiny_model.py) saved where base_model can point."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_model import tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tiny_model(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def run_one(spec: dict) -> dict:
    """One variant, in this process: train one epoch and time the optimizer steps."""
    import transformers
    from transformers import TrainerCallback

    from refinelib.train import TrainConfig, train

    transformers.logging.set_verbosity_error()

    class StepClock(TrainerCallback):
        """Wall time from the first step's start to the last step's end; no checkpoints in between."""

        start = end = None

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = self.start or time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.end = time.perf_counter()
            control.should_save = False

    clock = StepClock()
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(base_model=spec["model"], train_records=episodes(spec["examples"]),
                             output_dir=out, method=spec["method"], epochs=1, batch_size=spec["batch_size"],
                             learning_rate=2e-4 if spec["method"] == "lora" else 2e-5, eval_fraction=0,
                             max_length=spec["max_length"], save_steps=10**6, logging_steps=1,
                             lora_dropout=spec["lora_dropout"], lora_top_layers=spec["lora_top_layers"],
                             **BATCHING[spec["batching"]])
        result = train(config, callbacks=[clock])
        losses = [row.split(",")[3] for row in result.loss_csv.read_text().splitlines()[1:]]
    tokens = result.counts["train"]["tokens"]
    seconds = clock.end - clock.start
    return {"method": spec["method"], "batching": spec["batching"], "lora_dropout": spec["lora_dropout"],
            "lora_top_layers": spec["lora_top_layers"], "steps": result.global_step,
            "tokens": tokens, "seconds": round(seconds, 2), "tokens/s": round(tokens / seconds, 1),
            "mean loss": round(sum(map(float, losses)) / len(losses), 4),
            "trainable": result.trainable_parameters,
            "peak RSS MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="'tiny', 'smollm2', or any model directory / HF id")
    ap.add_argument("--examples", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--methods", nargs="*", default=["lora", "full"])
    ap.add_argument("--batching", nargs="*", default=list(BATCHING))
    ap.add_argument("--lora-dropout", type=float, default=0.0, help="TrainConfig's default")
    ap.add_argument("--lora-top-layers", type=int, default=None, help="LoRA on the top N layers only")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one variant given as JSON
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return
    scratch = tempfile.TemporaryDirectory(prefix="train-speed-")
    if args.model == "tiny":
        model = save_tiny_model(scratch.name)
    else:
        model = "SmolLM2-135M-Instruct" if args.model == "smollm2" else args.model
    rows = []
    for method in args.methods:
        for batching in args.batching:
            spec = dict(model=model, method=method, batching=batching, examples=args.examples,
                        batch_size=args.batch_size, max_length=args.max_length,
                        lora_dropout=args.lora_dropout, lora_top_layers=args.lora_top_layers)
            done = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True,
                                  text=True, check=False)
            if done.returncode:
                sys.exit(f"{method}/{batching} failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(rows[-1], file=sys.stderr)
    header = list(rows[0])
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(str(row[k]) for k in header))


if __name__ == "__main__":
    main()
