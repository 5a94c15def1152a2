"""Dispatcher benchmark (a script, not a test): what the gateway adds, and whether the pool is used fully.

    python tests/bench/bench_dispatch.py [--postgres postgresql+asyncpg://...] [--requests 800]

Every figure comes from this one run, printed side by side at the end:
  1. gateway-added latency: 16 concurrent clients calling fake instances directly vs through the gateway
     (p50/p99 of each and their difference), on SQLite and, when given, Postgres;
  2. a burst of 10xN tasks over N instances whose generations take T: makespan vs 1.05 x 10T + 0.5 s;
  3. the 429 of a full queue: its latency p50/p99;
  4. two gateway processes on one Postgres, 500 tasks: the most tasks any instance ever ran at once.

What runs: fast fake instances (tests/bench below: a bare ASGI app per port under uvicorn, all in one
process) that answer the instance contract's /status and /generate after a configurable delay and record
how many generations each ever ran at once (they never refuse, so an overlap would show); one or two
gateway processes (`python -m gateway`'s pieces: a Fleet with its dispatcher, the :8812 app under
uvicorn; no reconciler, the instance rows are written straight into the database); the clients in this
process (httpx). Processes: instances, gateway(s), clients, on however many cores the machine has.

Clients are independent: each of the 16 starts at its own moment (spread over one generation time), so
they do not all arrive in the same millisecond, as they would not in use.

Targets (issue 4): added p50 <= 3 ms and p99 <= 15 ms at 16 clients; burst makespan <= 1.05 x 10T + 0.5 s
with nothing failed or rejected; 429 p99 <= 20 ms; zero instances ever running two tasks.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a script from a checkout

from tests.polling import wait_until  # noqa: E402
from tests.ports import free_ports  # noqa: E402

PNG_B64 = base64.b64encode(
    base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")
).decode()
CLIENTS = 16
PROBE_PAUSE = 0.05  # each client's pause between two requests meeting a full queue: 16 clients, ~300 requests/s


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]



# ---- the fake instances (a child process) ------------------------------------------------------------


class BenchInstance:
    """The instance contract's /status and /generate, nothing more; records its own overlap."""

    def __init__(self) -> None:
        self.delay = 0.0
        self.running: set[asyncio.Task] = set()
        self.in_flight = 0
        self.max_in_flight = 0
        self.generations = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        if path == "/generate":
            task = asyncio.create_task(self._generate(json.loads(body or b"{}")))
            self.running.add(task)
            try:
                answer = await task
            except asyncio.CancelledError:
                answer = {"success": False, "error": {"code": "internal_error", "message": "reset", "retry_safe": False}}
            finally:
                self.running.discard(task)
        elif path == "/status":
            answer = {"ready": True, "browser": "up", "login_state": "logged_in", "busy": self.in_flight > 0}
        elif path == "/_bench/config":
            self.delay = float(json.loads(body)["delay"])
            answer = {"ok": True}
        elif path == "/_bench/stats":
            answer = {"generations": self.generations, "max_in_flight": self.max_in_flight}
        elif path == "/_bench/reset":
            for task in list(self.running):  # generations left over from a scenario whose gateway is gone
                task.cancel()
            while self.in_flight:
                await asyncio.sleep(0.01)
            self.generations, self.max_in_flight = 0, 0
            answer = {"ok": True}
        else:
            answer = {"detail": "not found"}
        raw = json.dumps(answer).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]})
        await send({"type": "http.response.body", "body": raw})

    async def _generate(self, request: dict) -> dict:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
            self.generations += 1
        return {"success": True, "task_id": request.get("task_id"), "images_b64": [PNG_B64], "text": None, "error": None, "timings": {"total_ms": int(self.delay * 1000)}}


async def run_instances(ports: list[int]) -> None:
    import uvicorn

    servers = [
        uvicorn.Server(uvicorn.Config(BenchInstance(), host="127.0.0.1", port=p, log_level="error", access_log=False))
        for p in ports
    ]
    await asyncio.gather(*(s.serve() for s in servers))


# ---- a gateway (a child process) ---------------------------------------------------------------------


class NoEngine:
    """The runtime of a gateway whose instance rows are written by hand: it starts nothing."""

    name = "bench"

    async def setup(self) -> None: ...
    async def close(self) -> None: ...
    async def list_managed(self) -> dict:
        return {}


async def run_gateway(database_url: str, port: int, data_dir: str, overrides: dict[str, Any]) -> None:
    import uvicorn

    from gateway.app import Fleet, create_api_app
    from gateway.settings import Settings

    settings = Settings(runtime="fake", database_url=database_url, data_dir=Path(data_dir), log_level="WARNING", **overrides)
    fleet = await Fleet.open(settings, runtime=NoEngine(), reconcile=False)  # type: ignore[arg-type]
    try:
        config = uvicorn.Config(create_api_app(settings, fleet=fleet), host="127.0.0.1", port=port, log_level="error",
                                access_log=False, lifespan="off")
        server = uvicorn.Server(config)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, lambda: setattr(server, "should_exit", True))
        await server.serve()
    finally:
        await fleet.close()


# ---- the parent: databases, processes, clients ---------------------------------------------------------


def child(*args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return subprocess.Popen([sys.executable, __file__, *args], cwd=REPO, env=env)


def wait_port(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    def connect() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"child exited with {process.returncode}")
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True

    wait_until(connect, timeout=timeout, what=f"something to listen on {port}", ignore=(OSError,))


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def instances(count: int) -> Iterator[list[str]]:
    ports = free_ports(count)
    process = child("instances", ",".join(map(str, ports)))
    try:
        for p in ports:
            wait_port(p, process)
        yield [f"http://127.0.0.1:{p}" for p in ports]
    finally:
        stop(process)


BENCH_KEY = "bWFueS1iZW5jaC1nYXRld2F5cy1vbmUta2V5LTMyYnk="  # a Fernet key (32 bytes) for the benchmark's gateways


@contextlib.contextmanager
def gateway(database_url: str, data_dir: Path, **overrides: Any) -> Iterator[str]:
    (port,) = free_ports(1)
    # Replicas of one database share the encryption key (the seeded rows are sealed with it too).
    process = child("gateway", database_url, str(port), str(data_dir), json.dumps({"encryption_key": BENCH_KEY, **overrides}))
    try:
        wait_port(port, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


async def seed(database_url: str, endpoints: list[str]) -> None:
    """Migrates the database and writes one running, signed-in instance row per endpoint."""
    from sqlalchemy import delete, insert

    from gateway.db.engine import create_db_engine
    from gateway.db.migrate import prepare_schema
    from gateway.db.models import Instance, Task
    from gateway.db.sealing import SecretBox, attach
    from gateway.db.types import utcnow

    engine = create_db_engine(database_url)
    attach(engine, SecretBox([BENCH_KEY]))
    try:
        await prepare_schema(engine, upgrade=True)
        async with engine.begin() as connection:
            await connection.execute(delete(Task))
            await connection.execute(delete(Instance))
            for n, endpoint in enumerate(endpoints):
                await connection.execute(insert(Instance).values(
                    id=uuid.uuid4(), name=f"bench-{n}", target="running", status="running", login_state="logged_in",
                    busy=False, endpoint=endpoint, token="bench", started_at=utcnow(), created_at=utcnow(),
                    updated_at=utcnow(), tasks_done=0, tasks_failed=0, restart_count=0,
                ))
    finally:
        await engine.dispose()


async def configure(endpoints: list[str], delay: float) -> None:
    async with httpx.AsyncClient() as client:
        for endpoint in endpoints:
            await client.post(f"{endpoint}/_bench/reset", json={})
            await client.post(f"{endpoint}/_bench/config", json={"delay": delay})


async def max_in_flight(endpoints: list[str]) -> tuple[int, int]:
    async with httpx.AsyncClient() as client:
        stats = [(await client.get(f"{e}/_bench/stats")).json() for e in endpoints]
    return max(s["max_in_flight"] for s in stats), sum(s["generations"] for s in stats)


async def timed_calls(
    urls: list[str], total: int, clients: int, payload: dict, *, spread: float = 0.0, pause: float = 0.0
) -> tuple[list[float], list[str | int]]:
    """`clients` workers, worker i always calling urls[i % len(urls)], `total` calls in all. With `spread`,
    worker i starts i/clients of it later: independent clients, not 16 arriving in the same millisecond;
    with `pause`, each waits that long between its calls."""
    latencies: list[float] = []
    statuses: list[str | int] = []
    remaining = total
    limits = httpx.Limits(max_connections=clients * 2, max_keepalive_connections=clients * 2)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def worker(index: int) -> None:
            nonlocal remaining
            url = urls[index % len(urls)]
            await asyncio.sleep(spread * index / clients)
            while remaining > 0:
                remaining -= 1
                began = time.perf_counter()
                response = await client.post(url, json=payload)
                latencies.append(time.perf_counter() - began)
                statuses.append(outcome(response))
                if pause:
                    await asyncio.sleep(pause)

        await asyncio.gather(*(worker(i) for i in range(clients)))
    return latencies, statuses


def outcome(response: httpx.Response) -> str | int:
    """"ok" only for a generated image: a failed task also answers 200, with success false."""
    if response.status_code != 200:
        return response.status_code
    return "ok" if response.json().get("success") is True else "failed"


# ---- scenarios -----------------------------------------------------------------------------------------


async def latency(database_url: str, data_dir: Path, endpoints: list[str], total: int, generation_s: float) -> dict[str, float]:
    await seed(database_url, endpoints)
    await configure(endpoints, generation_s)
    payload = {"prompt": "bench", "aspect_ratio": "1:1"}
    direct_urls = [f"{e}/generate" for e in endpoints]
    with gateway(database_url, data_dir, queue_max=1000, store_sync_results=False) as url:
        await timed_calls([f"{url}/generate"], 64, CLIENTS, payload)  # warm-up: connections, caches
        await timed_calls(direct_urls, 64, CLIENTS, payload)
        direct, _ = await timed_calls(direct_urls, total, CLIENTS, payload, spread=generation_s)
        through, statuses = await timed_calls([f"{url}/generate"], total, CLIENTS, payload, spread=generation_s)
    overlap, _ = await max_in_flight(endpoints)
    assert set(statuses) == {"ok"}, statuses
    ms = 1000
    return {
        "direct_p50": percentile(direct, 0.5) * ms, "direct_p99": percentile(direct, 0.99) * ms,
        "gateway_p50": percentile(through, 0.5) * ms, "gateway_p99": percentile(through, 0.99) * ms,
        "added_p50": (percentile(through, 0.5) - percentile(direct, 0.5)) * ms,
        "added_p99": (percentile(through, 0.99) - percentile(direct, 0.99)) * ms,
        "overlap": overlap,
    }


async def burst(database_url: str, data_dir: Path, endpoints: list[str], generation_s: float) -> dict[str, float]:
    await seed(database_url, endpoints)
    await configure(endpoints, generation_s)
    count = 10 * len(endpoints)
    with gateway(database_url, data_dir, queue_max=count, queue_wait_timeout=600, store_sync_results=False) as url:
        began = time.perf_counter()
        latencies, statuses = await timed_calls([f"{url}/generate"], count, count, {"prompt": "burst"})
        makespan = time.perf_counter() - began
    overlap, generations = await max_in_flight(endpoints)
    return {
        "tasks": count, "makespan": makespan, "target": 1.05 * 10 * generation_s + 0.5,
        "failed": sum(1 for s in statuses if s != "ok"), "generations": generations, "overlap": overlap,
    }


async def queue_full(database_url: str, data_dir: Path, endpoints: list[str], probes: int) -> dict[str, float]:
    await seed(database_url, endpoints)
    await configure(endpoints, 30.0)  # every instance busy for the whole measurement
    queue_max = 8
    with gateway(database_url, data_dir, queue_max=queue_max, queue_wait_timeout=60, store_sync_results=False) as url:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            held = [asyncio.create_task(client.post(f"{url}/generate", json={"prompt": f"hold{i}"})) for i in range(len(endpoints) + queue_max)]
            await asyncio.sleep(1.0)  # all admitted: N running, queue_max waiting
            latencies, statuses = await timed_calls(
                [f"{url}/generate"], probes, CLIENTS, {"prompt": "too many"}, spread=PROBE_PAUSE, pause=PROBE_PAUSE
            )
            for task in held:
                task.cancel()
            await asyncio.gather(*held, return_exceptions=True)
    return {
        "probes": probes, "rejected_429": sum(1 for s in statuses if s == 429),
        "p50": percentile(latencies, 0.5) * 1000, "p99": percentile(latencies, 0.99) * 1000,
    }


async def replicas(database_url: str, data_dir: Path, endpoints: list[str], tasks: int) -> dict[str, float]:
    await seed(database_url, endpoints)
    await configure(endpoints, 0.02)
    settings = {"queue_max": tasks, "queue_wait_timeout": 600, "store_sync_results": False}
    with gateway(database_url, data_dir / "a", **settings) as a, gateway(database_url, data_dir / "b", **settings) as b:
        began = time.perf_counter()
        latencies, statuses = await timed_calls([f"{a}/generate", f"{b}/generate"], tasks, 32, {"prompt": "replica"})
        elapsed = time.perf_counter() - began
    overlap, generations = await max_in_flight(endpoints)
    return {
        "tasks": tasks, "ok": sum(1 for s in statuses if s == "ok"), "generations": generations,
        "overlap": overlap, "seconds": elapsed,
    }


@contextlib.contextmanager
def sqlite_url() -> Iterator[tuple[str, Path]]:
    directory = Path(tempfile.mkdtemp(prefix="bench-dispatch-"))
    try:
        yield f"sqlite+aiosqlite:///{directory}/gateway.db", directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def fresh_postgres(admin_url: str) -> tuple[str, str]:
    import asyncpg
    from sqlalchemy.engine import make_url

    url = make_url(admin_url)
    name = f"bench_{uuid.uuid4().hex[:10]}"
    connection = await asyncpg.connect(host=url.host, port=url.port or 5432, user=url.username, password=url.password, database=url.database)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return url.set(database=name).render_as_string(hide_password=False), name


async def drop_postgres(admin_url: str, name: str) -> None:
    import asyncpg
    from sqlalchemy.engine import make_url

    url = make_url(admin_url)
    connection = await asyncpg.connect(host=url.host, port=url.port or 5432, user=url.username, password=url.password, database=url.database)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def postgres(admin_url: str | None) -> AsyncIterator[str | None]:
    if not admin_url:
        yield None
        return
    url, name = await fresh_postgres(admin_url)
    try:
        yield url
    finally:
        await drop_postgres(admin_url, name)


async def main(args: argparse.Namespace) -> None:
    rows: list[tuple[str, str, str, str]] = []  # (figure, database, measured, target)
    pg_admin = args.postgres or os.environ.get("AISTUDIO_TEST_POSTGRES_URL")
    with instances(CLIENTS) as endpoints, sqlite_url() as (sqlite, data_dir):
        async with postgres(pg_admin) as pg:
            databases = [("sqlite", sqlite)] + ([("postgres", pg)] if pg else [])
            for label, url in databases:
                print(f"latency ({label}) ...", flush=True)
                lat = await latency(url, data_dir, endpoints, args.requests, args.latency_generation)
                rows.append((f"direct p50 / p99 (ms), T={args.latency_generation:g}s", label, f"{lat['direct_p50']:.2f} / {lat['direct_p99']:.2f}", ""))
                rows.append(("through gateway p50 / p99 (ms)", label, f"{lat['gateway_p50']:.2f} / {lat['gateway_p99']:.2f}", ""))
                rows.append(("gateway-added p50 / p99 (ms)", label, f"{lat['added_p50']:.2f} / {lat['added_p99']:.2f}", "<= 3 / <= 15"))
                print(f"burst ({label}) ...", flush=True)
                b = await burst(url, data_dir, endpoints[: args.burst_instances], args.generation)
                rows.append((f"burst {b['tasks']} tasks on {args.burst_instances} x T={args.generation:g}s: makespan (s)", label,
                             f"{b['makespan']:.2f} (failed {b['failed']}, overlap {b['overlap']})", f"<= {b['target']:.2f}, 0 failed"))
                print(f"queue full ({label}) ...", flush=True)
                q = await queue_full(url, data_dir, endpoints[:4], args.probes)
                rows.append(("429 when the queue is full p50 / p99 (ms)", label,
                             f"{q['p50']:.2f} / {q['p99']:.2f} ({q['rejected_429']}/{q['probes']} were 429)", "p99 <= 20"))
            if pg:
                print("two replicas (postgres) ...", flush=True)
                r = await replicas(pg, data_dir, endpoints[:4], args.replica_tasks)
                rows.append((f"2 gateways, {r['tasks']} tasks on 4 instances: most at once on one instance", "postgres",
                             f"{r['overlap']} ({r['ok']} ok, {r['generations']} run, {r['seconds']:.1f} s)", "1"))
            else:
                rows.append(("2 gateways on one Postgres", "-", "skipped: no --postgres / AISTUDIO_TEST_POSTGRES_URL", "1"))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'figure':<{width}}  {'db':<8}  {'measured':<44}  target")
    for figure, db, measured, target in rows:
        print(f"{figure:<{width}}  {db:<8}  {measured:<44}  {target}")
    print(f"\n({os.cpu_count()} cores; {CLIENTS} fake instances in one process, each gateway in its own process, "
          "clients in this one; fake instances answer at once except where T is given)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "instances":
        asyncio.run(run_instances([int(p) for p in sys.argv[2].split(",")]))
    elif len(sys.argv) > 1 and sys.argv[1] == "gateway":
        asyncio.run(run_gateway(sys.argv[2], int(sys.argv[3]), sys.argv[4], json.loads(sys.argv[5])))
    else:
        parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--postgres", help="admin URL of a Postgres server (default: AISTUDIO_TEST_POSTGRES_URL)")
        parser.add_argument("--requests", type=int, default=480, help="calls per latency run")
        parser.add_argument("--latency-generation", type=float, default=0.5,
                            help="seconds each fake generation takes in the latency runs")
        parser.add_argument("--generation", type=float, default=0.5, help="T, seconds per generation in the burst")
        parser.add_argument("--burst-instances", type=int, default=4)
        parser.add_argument("--probes", type=int, default=400, help="requests meeting a full queue")
        parser.add_argument("--replica-tasks", type=int, default=500)
        asyncio.run(main(parser.parse_args()))
