"""Grounded-teacher throughput on one core: verified trajectories per minute (issue target: >= 500).

Usage: OMP_NUM_THREADS=1 python benchmarks/teacher_speed.py [--n 300] [--error-rate 0.3]
Each sample is the whole path: generate a script, plan it, write a trajectory, verify it with the engine
replay as goal check. A second figure runs the same through ``refinelib.synth.synthesis.synthesize``, which
also appends every sample to its resumable log (one fsynced line each). Prints a table; nothing is
asserted.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from refinelib.synth.synthesis import SynthesisConfig, synthesize
from refinelib.synth.teacher import grounded_trajectory, replay_check
from refinelib.synth.themes import generate_script
from refinelib.synth.verify import verify


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--error-rate", type=float, default=0.3)
    args = parser.parse_args()
    stages = {"script": 0.0, "trajectory": 0.0, "verify": 0.0}
    accepted = 0
    start = time.perf_counter()
    for seed in range(args.n):
        t0 = time.perf_counter()
        script = generate_script(seed)
        t1 = time.perf_counter()
        trajectory = grounded_trajectory(script, seed, error_rate=args.error_rate)
        t2 = time.perf_counter()
        accepted += verify(script, trajectory, goal_check=replay_check).ok
        t3 = time.perf_counter()
        for name, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            stages[name] += dt
    total = time.perf_counter() - start
    print(f"{'stage':<12}{'ms/trajectory':>14}")
    for name, seconds in stages.items():
        print(f"{name:<12}{1e3 * seconds / args.n:>14.2f}")
    print(f"accepted {accepted}/{args.n} (verify + engine replay)")
    print(f"verified trajectories/min (one core), teacher + verifier: {60 * accepted / total:.0f}")

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        run = synthesize(SynthesisConfig(n=args.n, error_rate=args.error_rate), folder, progress=False)
        total = time.perf_counter() - start
    rate = 60 * len(run.accepted) / total
    print(f"verified trajectories/min (one core), synthesize() with its log: {rate:.0f}")


if __name__ == "__main__":
    main()
