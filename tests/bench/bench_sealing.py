"""What sealing secrets in the database costs (gateway/db/sealing.py), side by side in one run.

    python -m tests.bench.bench_sealing [--rows 500] [--rounds 20]

Prints: one seal and one open of an instance token (µs), and reading every instance's token (what a lease or a
reconcile pass reads) from a SQLite table of N instances, opened (SealedText) against the same rows read as stored
(plain Text), with the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import Text, insert, select, type_coerce

from gateway.db.engine import create_db_engine
from gateway.db.migrate import prepare_schema
from gateway.db.models import Instance
from gateway.db.sealing import SecretBox, attach, new_key
from gateway.db.types import utcnow


def per_value(box: SecretBox, count: int = 5000) -> tuple[float, float]:
    token = secrets.token_urlsafe(32)
    began = time.perf_counter()
    sealed = [box.seal(token) for _ in range(count)]
    sealing = (time.perf_counter() - began) / count
    began = time.perf_counter()
    for value in sealed:
        box.open(value)
    return sealing * 1e6, (time.perf_counter() - began) / count * 1e6


async def reads(rows: int, rounds: int) -> tuple[float, float]:
    folder = Path(tempfile.mkdtemp(prefix="bench-sealing-"))
    engine = create_db_engine(f"sqlite+aiosqlite:///{folder}/gateway.db")
    box = SecretBox([new_key()])
    attach(engine, box)
    try:
        await prepare_schema(engine, upgrade=True, secret_box=box)
        async with engine.begin() as connection:
            await connection.execute(insert(Instance), [
                {"id": uuid.uuid4(), "name": f"i{n}", "token": secrets.token_urlsafe(32), "created_at": utcnow(),
                 "updated_at": utcnow(), "tasks_done": 0, "tasks_failed": 0, "restart_count": 0, "busy": False}
                for n in range(rows)
            ])
        opened, stored = [], []
        for _ in range(rounds):  # alternated, so both see the same machine load
            for query, times in ((select(Instance.token), opened),
                                 (select(type_coerce(Instance.token, Text)), stored)):
                async with engine.connect() as connection:
                    began = time.perf_counter()
                    (await connection.execute(query)).all()
                    times.append(time.perf_counter() - began)
        return statistics.median(opened) * 1000, statistics.median(stored) * 1000
    finally:
        await engine.dispose()


async def main(args: argparse.Namespace) -> None:
    box = SecretBox([new_key(), new_key()])
    seal_us, open_us = per_value(box)
    opened_ms, stored_ms = await reads(args.rows, args.rounds)
    print(f"seal one token: {seal_us:.1f} µs; open one: {open_us:.1f} µs (two keys configured)")
    print(f"read {args.rows} instances' tokens (SQLite, median of {args.rounds}): opened {opened_ms:.2f} ms, "
          f"as stored {stored_ms:.2f} ms, ratio {opened_ms / stored_ms:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=20)
    asyncio.run(main(parser.parse_args()))
