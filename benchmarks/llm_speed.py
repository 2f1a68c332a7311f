"""LLM client overhead: requests per second (cache misses, cache hits) and the concurrency speed-up.

Usage: python benchmarks/llm_speed.py [--n 200] [--latency 0.05]
Runs against the local fake server from tests/fake_openai.py (a real HTTP server; ``--latency`` is its
simulated answer time), so it measures the client, its cache and its thread pool, not a model. Prints a
table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fake_openai import FakeOpenAI  # noqa: E402

from refinelib.synth.llm import LLMClient, LLMConfig, Request  # noqa: E402


def timed(client: LLMClient, requests: list[Request]) -> float:
    start = time.perf_counter()
    client.complete_many(requests, progress=False)
    return len(requests) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.05)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for latency in (0.0, args.latency):
            with FakeOpenAI(delay=latency) as server:
                for concurrency in (1, 8, 32):
                    cache = Path(tmp) / f"{latency}-{concurrency}"
                    config = LLMConfig("fake-model", base_url=server.base_url, concurrency=concurrency)
                    requests = [Request([{"role": "user", "content": f"prompt {i}"}], stage="bench")
                                for i in range(args.n)]
                    with LLMClient(config, cache_dir=cache) as client:
                        miss = timed(client, requests)
                        hit = timed(client, requests)
                        rows.append((latency, concurrency, miss, hit, client.max_in_flight))
    print(f"{'latency s':>9} {'threads':>7} {'miss req/s':>10} {'hit req/s':>10} {'peak in flight':>14}")
    for latency, concurrency, miss, hit, peak in rows:
        print(f"{latency:9.3f} {concurrency:7d} {miss:10.0f} {hit:10.0f} {peak:14d}")


if __name__ == "__main__":
    main()
