"""GPU check (a benchmark, not a test): LoRA-tune SmolLM2 in bf16, evaluate it, print the figures.

What a lent GPU machine should confirm in a few minutes (issue 14): the default library path trains in
bf16 on CUDA (``TrainConfig.bf16="auto"`` turns it on where the GPU supports it, with gradient
checkpointing), the tuned model is loaded the way the chapters load it (``experiment.load_policy``:
the engine, each output ending at its ``Action:`` line) and plays episodes on the GPU. Prints training
tokens/s, episodes/min and peak GPU memory as one JSON line; nothing is asserted. ::

    bash benchmarks/gpu_check.sh                    # on the GPU machine: ~300 steps, 50 episodes
    python benchmarks/gpu_check.py --steps 2 --episodes 2 --trajectories 8 --max-steps 2   # CPU dry run

Data: grounded-teacher refinement trajectories (notebook 02's default teacher), made offline here.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def peak_gib() -> float | None:
    """Peak GPU memory since the last reset, in GiB (None on a CPU)."""
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="SmolLM2-135M-Instruct", help="base model name or path")
    ap.add_argument("--trajectories", type=int, default=400, help="grounded-teacher trajectories to tune on")
    ap.add_argument("--steps", type=int, default=300, help="LoRA optimizer steps")
    ap.add_argument("--batch-size", type=int, default=8, help="examples per optimizer step")
    ap.add_argument("--episodes", type=int, default=50, help="evaluation episodes (split over the suites)")
    ap.add_argument("--suites", nargs="+", default=["household_held_in", "babyai", "pddl"])
    ap.add_argument("--max-steps", type=int, default=15, help="steps per episode")
    ap.add_argument("--out", default=None, help="working folder (default: a temporary one)")
    args = ap.parse_args()

    import torch

    from refinelib.eval import evaluate, experiment
    from refinelib.synth.synthesis import SynthesisConfig, synthesize
    from refinelib.tune.train import train
    from refinelib.tune.train_config import TrainConfig

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    out = Path(args.out or tempfile.mkdtemp(prefix="gpu_check_"))
    records, _ = synthesize(SynthesisConfig(n=args.trajectories), out / "samples", progress=False).records()

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.time()
    result = train(TrainConfig(base_model=args.model, train_records=records, output_dir=str(out / "refine"),
                               max_steps=args.steps, batch_size=args.batch_size, max_length=2048,
                               save_steps=max(args.steps, 1), eval_fraction=0.05))
    train_seconds = result.metrics.get("train_runtime", time.time() - start)  # the optimizer steps only
    kept = result.counts.get("train", {})
    mean_length = kept.get("tokens", 0) / max(kept.get("kept", 1), 1)
    tokens = mean_length * args.steps * args.batch_size  # examples seen over the steps x their mean length
    train_peak = peak_gib()
    del result

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    policy = experiment.load_policy("refine", str(out / "refine"), base_model=args.model)
    per_suite = -(-args.episodes // len(args.suites))
    start = time.time()
    episodes = evaluate.run(policy, args.suites, scale="agentboard", max_steps=args.max_steps,
                            max_instances=per_suite, log_path=out / "episodes.jsonl", progress_bar=False)
    eval_seconds = time.time() - start
    policy.close()
    print(json.dumps({
        "device": device, "bf16": torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        "train_steps": args.steps, "train_seconds": round(train_seconds, 1),
        "train_tokens_per_s": round(tokens / train_seconds, 1), "train_peak_gib": train_peak,
        "episodes": len(episodes), "episodes_per_min": round(60 * len(episodes) / eval_seconds, 2),
        "eval_peak_gib": peak_gib(),
        "success_rate": round(sum(e.success for e in episodes) / max(len(episodes), 1), 3),
    }))

if __name__ == "__main__":
    main()
