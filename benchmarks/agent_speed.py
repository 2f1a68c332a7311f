"""Benchmark (not a test): agent episodes per minute with SmolLM2 on CPU, four ways, in one run.

The same episodes are played with greedy decoding and the same settings by

* ``agentboard``: one episode at a time, the whole history re-encoded at every step (how AgentBoard-style
  loops call a local model): ``TransformersPolicy(prefix_cache=False)``, ``batch_size=1``;
* ``batched``: all episodes in lock-step, each episode's KV cache kept between turns (the previous
  default): ``TransformersPolicy``;
* ``engine``: :class:`refinelib.eval.engine.EnginePolicy` (instructions encoded once per family, preallocated
  caches, finished rows leave the batch, prompt-lookup drafts), what the book's chapters use;
  ``engine-nodraft`` the same without drafts;
* ``engine-int8``: the engine on an int8 copy of the model (:func:`refinelib.eval.engine.quantized`), with
  ``--int8``; ``engine-bf16`` on a bfloat16 copy (AMX on recent Xeons); neither is exact, so their share of
  actions identical to ``agentboard``'s is what to read.

It prints episodes/min, the ratio to ``agentboard``, whether every path wrote the same outputs as
``agentboard`` (the share of identical actions for a quantised path) and the machine load next to each
figure. Speed claims are ratios within one run; the box is shared::

    python benchmarks/agent_speed.py                       # 8 episodes x 4 steps, 2 threads
    python benchmarks/agent_speed.py --paths engine batched --episodes 16 --max-steps 10
    python benchmarks/agent_speed.py --suites household_held_in babyai --episodes 16 --max-steps 15 \
        --paths engine                                     # the chapters' suites and step limit
    python benchmarks/agent_speed.py --suites household_held_in babyai --scale agentboard --episodes 40 \
        --max-steps 15 --batch-size 20 --paths engine      # the default chapters' exact shape (~40 min)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from refinelib.config import SCALES
from refinelib.eval import evaluate

PATHS = ("agentboard", "batched", "engine", "engine-nodraft", "engine-int8", "engine-bf16")


def make_policy(path: str, model, tokenizer, settings: dict, engine_settings: dict):
    """The policy of one path, over the same loaded model (``engine_settings``: the engine paths' own)."""
    from refinelib.eval.policies import TransformersPolicy

    if path == "agentboard":
        return TransformersPolicy(model, tokenizer, prefix_cache=False, **settings)
    if path == "batched":
        return TransformersPolicy(model, tokenizer, **settings)
    from refinelib.eval.engine import EnginePolicy, quantized

    engine = {**engine_settings, **({"draft_tokens": 0} if path == "engine-nodraft" else {})}
    if path == "engine-int8":
        model = quantized(model)
    elif path == "engine-bf16":
        import copy

        import torch

        model = copy.deepcopy(model).to(torch.bfloat16)
    return EnginePolicy(model, tokenizer, **engine, **settings)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="SmolLM2-135M-Instruct", help="model name or path")
    parser.add_argument("--suites", nargs="+", default=["babyai", "pddl"], help="suites of the episodes")
    parser.add_argument("--scale", choices=SCALES, default="small",
                        help="suite sizes the instances come from (the chapters: agentboard)")
    parser.add_argument("--episodes", type=int, default=8, help="episodes per path (split over the suites)")
    parser.add_argument("--max-steps", type=int, default=4, help="steps per episode (30 in real evaluations)")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="cap per model output (the chapters')")
    parser.add_argument("--max-prompt-tokens", type=int, default=1280, help="history window (the chapters')")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="episodes in lock-step on the batched paths (default: all; the chapters: 20)")
    parser.add_argument("--draft-tokens", type=int, default=None,
                        help="the engine's drafted tokens per step (default: EnginePolicy's)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 when anything else runs)")
    parser.add_argument("--paths", nargs="+", default=list(PATHS[:3]), choices=PATHS,
                        help="paths to play (agentboard is the reference; it is always played first)")
    parser.add_argument("--int8", action="store_true", help="also play the engine on an int8 copy")
    parser.add_argument("--no-stop-at-action", action="store_true",
                        help="write on to the end-of-turn token (the chapters stop at the Action line)")
    args = parser.parse_args()

    import torch

    from refinelib.tune import models

    torch.set_num_threads(args.threads)
    model, tokenizer = models.load(args.model)
    settings = dict(name="bench", max_new_tokens=args.max_new_tokens,
                    max_prompt_tokens=args.max_prompt_tokens, stop_at_action=not args.no_stop_at_action)
    engine_settings = {} if args.draft_tokens is None else {"draft_tokens": args.draft_tokens}
    paths = ["agentboard"] + [p for p in args.paths if p != "agentboard"] + (["engine-int8"] * args.int8)
    per_suite = max(1, args.episodes // len(args.suites))
    kwargs = dict(suites=args.suites, scale=args.scale, max_steps=args.max_steps, max_instances=per_suite,
                  progress_bar=False)
    rows, outputs = {}, {}
    for path in dict.fromkeys(paths):
        policy = make_policy(path, model, tokenizer, settings, engine_settings)
        policy.generate([[{"role": "user", "content": "Hello"}]])  # first-call costs outside the timing
        before = load()
        t0, cpu0 = time.perf_counter(), time.process_time()
        batch = 1 if path == "agentboard" else args.batch_size or args.episodes
        episodes = evaluate.run(policy, batch_size=batch, **kwargs)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        stats = getattr(policy, "stats", {})
        # CPU seconds: the work done, less sensitive than wall time to what else runs on a shared box
        rows[path] = {"episodes": len(episodes), "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
                      "episodes_per_min": round(60 * len(episodes) / seconds, 2),
                      "prompt_tokens_from_cache": round(stats.get("reused_tokens", 0)
                                                        / max(stats.get("prompt_tokens", 0), 1), 3),
                      "load_before": before, "load_after": load(),
                      **{k: v for k, v in stats.items() if k in ("drafted", "accepted")}}
        outputs[path] = [[(t.raw, t.action) for t in e.turns] for e in episodes]
        policy.close()
        print(json.dumps({path: rows[path]}), file=sys.stderr, flush=True)  # progress of a long run
    reference = outputs["agentboard"]
    for path, row in rows.items():
        row["speedup"] = round(row["episodes_per_min"] / rows["agentboard"]["episodes_per_min"], 2)
        row["cpu_speedup"] = round(rows["agentboard"]["cpu_seconds"] / max(row["cpu_seconds"], 1e-9), 2)
        row["same_outputs"] = outputs[path] == reference
        actions = [(a, b) for ep, ref in zip(outputs[path], reference, strict=True)
                   for (_, a), (_, b) in zip(ep, ref, strict=False)]
        row["same_actions_share"] = round(sum(a == b for a, b in actions) / max(len(actions), 1), 3)
    print(json.dumps({"args": vars(args), **rows}, indent=1))


if __name__ == "__main__":
    main()
