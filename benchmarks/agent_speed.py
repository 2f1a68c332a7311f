"""Benchmark (not a test): batched vs sequential agent episodes per minute with SmolLM2 on CPU.

The same episodes are played twice with greedy decoding: one episode at a time (``batch_size=1``) and
all in lock-step (one generation batch per step). Prints episodes/min for both, the speed-up, and
whether the two runs wrote the same outputs. Keep it short on a shared 2-core machine::

    OMP_NUM_THREADS=1 python benchmarks/agent_speed.py --episodes 4 --max-steps 3
    python benchmarks/agent_speed.py --episodes 16 --max-steps 10 --threads 2      # a quiet machine
"""

from __future__ import annotations

import argparse
import json
import time

from refinelib import evaluate
from refinelib.policies import TransformersPolicy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="SmolLM2-135M-Instruct", help="model name or path")
    parser.add_argument("--suites", nargs="+", default=["babyai", "pddl"],
                        help="suites to draw episodes from")
    parser.add_argument("--episodes", type=int, default=4, help="episodes per run (split over the suites)")
    parser.add_argument("--max-steps", type=int, default=3, help="steps per episode (30 in real evaluations)")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="cap per model output")
    parser.add_argument("--max-prompt-tokens", type=int, default=1024, help="history window budget")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 when anything else runs)")
    parser.add_argument("--no-prefix-cache", action="store_true",
                        help="re-encode every prompt in full (the KV cache is not kept between turns)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    policy = TransformersPolicy.load(args.model, name="bench", max_new_tokens=args.max_new_tokens,
                                     max_prompt_tokens=args.max_prompt_tokens,
                                     prefix_cache=not args.no_prefix_cache)
    per_suite = max(1, args.episodes // len(args.suites))
    kwargs = dict(suites=args.suites, max_steps=args.max_steps, max_instances=per_suite, progress_bar=False)
    rows = {}
    for label, batch_size in (("batched", args.episodes), ("sequential", 1)):
        policy.stats = dict.fromkeys(policy.stats, 0)
        t0 = time.perf_counter()
        episodes = evaluate.run(policy, batch_size=batch_size, **kwargs)
        seconds = time.perf_counter() - t0
        rows[label] = {"episodes": len(episodes), "seconds": round(seconds, 1),
                       "episodes_per_min": round(60 * len(episodes) / seconds, 2),
                       "prompt_tokens_from_cache": round(policy.stats["reused_tokens"]
                                                         / max(policy.stats["prompt_tokens"], 1), 3),
                       "outputs": [[t.raw for t in e.turns] for e in episodes]}
    same = rows["batched"].pop("outputs") == rows["sequential"].pop("outputs")
    speedup = rows["batched"]["episodes_per_min"] / rows["sequential"]["episodes_per_min"]
    report = {"args": vars(args), **rows, "speedup": round(speedup, 2), "same_outputs": same}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
