"""Reset and step time per environment family, and oracle episodes per second.

Usage: python benchmarks/env_speed.py [--scale small] [--instances 4] [--suites babyai pddl ...]
Prints a table; nothing is asserted (speed goals are read, not tested).
"""

from __future__ import annotations

import argparse
import statistics
import time

from refinelib.envs import EVALUATION_SUITES, make_instance, suite


def measure(name: str, scale: str, instances: int) -> dict:
    s = suite(name, scale)
    chosen = s.instances[:instances]
    t0 = time.perf_counter()
    envs = {}
    for inst in chosen:
        key = (inst.task, inst.options)
        if key not in envs:
            envs[key] = make_instance(inst)
    make_s = time.perf_counter() - t0
    resets, steps, oracle, episodes = [], [], [], []
    for inst in chosen:
        env = envs[(inst.task, inst.options)]
        start = time.perf_counter()
        env.reset(inst.seed)
        resets.append(time.perf_counter() - start)
        while not env.done and env.steps < 200:
            t = time.perf_counter()
            action = env.oracle_action()
            oracle.append(time.perf_counter() - t)
            if action is None:
                break
            t = time.perf_counter()
            env.step(action)
            steps.append(time.perf_counter() - t)
        episodes.append(time.perf_counter() - start)
    for env in envs.values():
        env.close()
    return {"suite": name, "episodes": len(chosen), "make s": make_s,
            "reset ms": 1e3 * statistics.median(resets),
            "step ms": 1e3 * statistics.median(steps) if steps else float("nan"),
            "oracle ms": 1e3 * statistics.median(oracle) if oracle else float("nan"),
            "oracle episodes/s": len(episodes) / sum(episodes)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="small")
    ap.add_argument("--instances", type=int, default=4, help="instances per suite")
    ap.add_argument("--suites", nargs="*", default=list(EVALUATION_SUITES))
    args = ap.parse_args()
    rows = [measure(name, args.scale, args.instances) for name in args.suites]
    header = list(rows[0])
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row.values()))


if __name__ == "__main__":
    main()
