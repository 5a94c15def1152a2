"""Control plane at scale on the fake runtime: 500 instances, list/stats latency over HTTP, one reconcile pass.

Run: python tests/bench/bench_control_plane.py [--instances 500] [--requests 200]
SQLite always; Postgres too when AISTUDIO_TEST_POSTGRES_URL is set (a fresh database is made and dropped).
Targets (issue 3): list and stats p50 <= 30 ms; one reconcile pass <= 250 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import httpx  # noqa: E402
import uvicorn  # noqa: E402

from gateway.app import Fleet, create_admin_app  # noqa: E402
from gateway.runtime.fake import FakeRuntime  # noqa: E402
from gateway.settings import Settings  # noqa: E402
from tests.polling import await_until  # noqa: E402
from tests.ports import free_port  # noqa: E402

TARGET_HTTP_P50_MS = 30.0
TARGET_PASS_MS = 250.0


class BenchSettings(Settings):
    @classmethod
    def settings_customise_sources(cls, settings_cls: Any, init_settings: Any, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        return (init_settings,)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def fill(fleet: Fleet, count: int) -> None:
    """`count` instances, all running and logged in, through the same service and reconciler as in production."""
    for n in range(count):
        view = await fleet.instances.create(f"bench-{n:04d}")
        await fleet.instances.start(view.instance_id)

    async def all_running_after_a_pass() -> bool:
        await fleet.reconciler.reconcile_once()
        await fleet.reconciler.drain()
        return (await fleet.instances.stats()).running_instances == count

    await await_until(all_running_after_a_pass, timeout=120, what=f"all {count} instances running", pause=0)


async def measure_http(fleet: Fleet, settings: Settings, requests: int) -> dict[str, list[float]]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_admin_app(settings, fleet=fleet), host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    await await_until(lambda: server.started, timeout=10, what="uvicorn to listen", pause=0.01)
    timings: dict[str, list[float]] = {"/api/instances": [], "/api/stats": []}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for path, samples in timings.items():
                for i in range(requests + 10):
                    began = time.perf_counter()
                    response = await client.get(path)
                    elapsed = (time.perf_counter() - began) * 1000
                    response.raise_for_status()
                    if i >= 10:  # warm-up
                        samples.append(elapsed)
            body = (await client.get("/api/instances")).json()
            assert body["total_count"] == len(body["instances"]) and body["concurrency_count"] == body["total_count"]
    finally:
        server.should_exit = True
        await serving
    return timings


async def measure_passes(fleet: Fleet, passes: int) -> list[float]:
    durations = []
    for _ in range(passes):
        report = await fleet.reconciler.reconcile_once()
        assert report.probed == report.instances, report
        durations.append(report.duration * 1000)
    return durations


async def bench(label: str, database_url: str, data_dir: Path, count: int, requests: int) -> bool:
    settings = BenchSettings(runtime="fake", database_url=database_url, data_dir=data_dir)
    fleet = await Fleet.open(settings, runtime=FakeRuntime(), reconcile=False)
    try:
        began = time.perf_counter()
        await fill(fleet, count)
        print(f"\n[{label}] {count} instances created and running in {time.perf_counter() - began:.1f}s")
        timings = await measure_http(fleet, settings, requests)
        passes = await measure_passes(fleet, 20)
    finally:
        await fleet.close()
    ok = True
    for path, samples in timings.items():
        p50, p95 = statistics.median(samples), percentile(samples, 0.95)
        met = p50 <= TARGET_HTTP_P50_MS
        ok &= met
        print(f"[{label}] GET {path:<15} p50 {p50:6.1f} ms  p95 {p95:6.1f} ms  (target p50 <= {TARGET_HTTP_P50_MS:g} ms: {'met' if met else 'MISSED'})")
    p50, worst = statistics.median(passes), max(passes)
    met = p50 <= TARGET_PASS_MS
    ok &= met
    print(f"[{label}] reconcile pass ({count} probes) p50 {p50:6.1f} ms  max {worst:6.1f} ms  (target <= {TARGET_PASS_MS:g} ms: {'met' if met else 'MISSED'})")
    return ok


async def postgres_database(admin_url: str, statement: str) -> None:
    import asyncpg
    from sqlalchemy.engine import make_url

    url = make_url(admin_url)
    connection = await asyncpg.connect(host=url.host, port=url.port or 5432, user=url.username, password=url.password, database=url.database)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        ok &= await bench("sqlite", f"sqlite+aiosqlite:///{tmp}/bench.db", Path(tmp), args.instances, args.requests)
        admin_url = os.environ.get("AISTUDIO_TEST_POSTGRES_URL")
        if admin_url:
            from sqlalchemy.engine import make_url

            name = f"bench_{uuid.uuid4().hex[:12]}"
            await postgres_database(admin_url, f'CREATE DATABASE "{name}"')
            try:
                url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
                ok &= await bench("postgres", url, Path(tmp), args.instances, args.requests)
            finally:
                await postgres_database(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:
            print("\n[postgres] skipped: AISTUDIO_TEST_POSTGRES_URL is not set")
    print("\nall targets met" if ok else "\nSOME TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
