"""OpenAI's `n` benchmark (a script, not a test): n images as n tasks side by side, not n in a row.

    python tests/bench/bench_openai_n.py [--delay 2.0] [--runs 3]

A gateway (a Fleet on the fake runtime, its :8812 app under uvicorn, SQLite) in front of 4 idle fake instances
whose generations take `--delay` seconds; the official `openai` client asks POST /v1/images/generations with
n=1, then n=4, `--runs` times each. Prints the median wall time of each and their ratio.

Target (issue 12): n=4 on 4 idle instances takes <= 1.2 x the time of n=1.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a script from a checkout

import openai  # noqa: E402

from gateway.runtime.fake import FakeRuntime  # noqa: E402
from tests.gateway.pool import open_pool  # noqa: E402

INSTANCES = 4
TARGET = 1.2


async def timed(client: openai.AsyncOpenAI, n: int) -> float:
    began = time.perf_counter()
    answer = await client.images.generate(prompt="a lighthouse at dusk", n=n, size="1792x1024")
    elapsed = time.perf_counter() - began
    assert len(answer.data) == n, answer
    return elapsed


async def main(delay: float, runs: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder)
        fake = FakeRuntime()
        async with open_pool(f"sqlite+aiosqlite:///{data}/bench.db", data, fake, instances=INSTANCES) as pool:
            fake.generate_delay = delay
            client = openai.AsyncOpenAI(base_url=f"{pool.url}/v1", api_key="bench", max_retries=0, timeout=120)
            await timed(client, 1)  # warm-up: connections, first statements
            one = [await timed(client, 1) for _ in range(runs)]
            four = [await timed(client, INSTANCES) for _ in range(runs)]
            spread = {g.instance_id for g in fake.generations[-INSTANCES:]}
    n1, n4 = statistics.median(one), statistics.median(four)
    ratio = n4 / n1
    print(f"instances {INSTANCES}, generation {delay:g} s, {runs} runs each (median)")
    print(f"n=1: {n1:.3f} s   n=4: {n4:.3f} s   ratio {ratio:.3f} (target <= {TARGET}: {'ok' if ratio <= TARGET else 'MISSED'})")
    print(f"the last n=4 ran on {len(spread)} distinct instances")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=2.0, help="seconds each fake generation takes")
    parser.add_argument("--runs", type=int, default=3)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.delay, arguments.runs))
