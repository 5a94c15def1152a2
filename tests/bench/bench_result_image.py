"""Serving one image of a kept 4-image result (a signed URL's GET): the whole result loaded and one image picked
(the path before, still `ResultStore.load`) against `load_image`, which reads that image alone, and against
`open_image` as the signed URL's handler sends it (streamed from a bucket); side by side in one run, per store: the database on SQLite, on Postgres (when AISTUDIO_TEST_POSTGRES_URL is set), and an S3
bucket on moto's server (when moto is installed). Prints peak Python memory (tracemalloc) and median time.

    python tests/bench/bench_result_image.py [--image-mb 2] [--repeat 15]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from a checkout

from gateway.db.engine import create_db_engine
from gateway.db.migrate import prepare_schema
from gateway.dispatcher.results import DatabaseResultStore, ResultStore

IMAGES = 4
INDEX = 2


async def measure(call: Callable[[], Awaitable[bytes | None]], repeat: int) -> tuple[float, float, int]:
    """Peak traced memory (MiB) of one call, median and p90 seconds over `repeat` calls, and the bytes served."""
    served = await call()  # warm: connections, statement caches
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    await call()
    peak = (tracemalloc.get_traced_memory()[1] - base) / 2**20
    tracemalloc.stop()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await call()
        times.append(time.perf_counter() - started)
    return peak, statistics.median(times), len(served or b"")


async def compare(name: str, store: ResultStore, image_bytes: int, repeat: int) -> None:
    images = [os.urandom(image_bytes) for _ in range(IMAGES)]
    task_id = uuid.uuid4()
    reference = await store.save(task_id, [base64.b64encode(i).decode() for i in images], "text")

    async def whole() -> bytes | None:  # before: load everything, decode the one asked for
        stored = await store.load(task_id, reference)
        return base64.b64decode(stored.images_b64[INDEX]) if stored is not None else None

    async def alone() -> bytes | None:
        return await store.load_image(task_id, reference, INDEX)

    async def streamed() -> bytes | None:  # what the signed URL's handler sends: chunks, never joined
        opened = await store.open_image(task_id, reference, INDEX)
        if opened is None:
            return None
        size = len(opened.first)
        async for chunk in opened.rest:
            size += len(chunk)
        return images[INDEX] if size == opened.size else None  # checked by size: the chunks are not kept

    assert await whole() == await alone() == await streamed() == images[INDEX]
    before, after, stream = await measure(whole, repeat), await measure(alone, repeat), await measure(streamed, repeat)
    print(f"{name:<18} whole result: peak {before[0]:6.1f} MiB, median {before[1] * 1000:6.1f} ms | "
          f"one image: peak {after[0]:5.1f} MiB, median {after[1] * 1000:6.1f} ms | "
          f"streamed: peak {stream[0]:5.1f} MiB, median {stream[1] * 1000:6.1f} ms | "
          f"whole/streamed: memory x{before[0] / max(stream[0], 0.01):.1f}, time x{before[1] / stream[1]:.2f}")


@contextlib.asynccontextmanager
async def database_store(url: str) -> AsyncIterator[ResultStore]:
    engine = create_db_engine(url)
    await prepare_schema(engine, upgrade=True)
    try:
        yield DatabaseResultStore(engine, ttl=3600)
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def postgres_database(admin_url: str) -> AsyncIterator[str]:
    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    name = f"bench_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-mb", type=float, default=2.0, help="size of each decoded image (AI Studio's PNGs: 1-7 MB)")
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    size = int(args.image_mb * 2**20)
    print(f"one image (index {INDEX}) of a {IMAGES}-image result, {args.image_mb} MB each, {args.repeat} runs per path")
    with tempfile.TemporaryDirectory() as folder:
        async with database_store(f"sqlite+aiosqlite:///{folder}/bench.db") as store:
            await compare("database, SQLite", store, size, args.repeat)
        if admin_url := os.environ.get("AISTUDIO_TEST_POSTGRES_URL"):
            async with postgres_database(admin_url) as url, database_store(url) as store:
                await compare("database, Postgres", store, size, args.repeat)
        else:
            print("database, Postgres: skipped (AISTUDIO_TEST_POSTGRES_URL unset)")
        try:
            from tests.s3server import REGION, running_s3_server
        except ImportError:
            print("s3: skipped (moto[server] not installed)")
            return
        from gateway.dispatcher.s3_results import S3ResultStore
        from gateway.settings import S3StoreSettings
        from tests.s3server import ACCESS_KEY, SECRET_KEY

        with running_s3_server() as server:
            bucket = server.new_bucket()
            settings = S3StoreSettings(bucket, "bench/", server.endpoint_url, REGION, ACCESS_KEY, SECRET_KEY, True)
            await compare("s3 (moto server)", S3ResultStore(settings, 3600), size, args.repeat)


if __name__ == "__main__":
    asyncio.run(main())
