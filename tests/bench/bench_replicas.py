"""Replicas benchmark (a script, not a test): two gateways against one on the same instances, and takeover time.

    AISTUDIO_TEST_POSTGRES_URL=postgresql+asyncpg://... python tests/bench/bench_replicas.py [--instances 4] [--tasks 32] [--delay 2]

Every figure comes from this one run, printed side by side at the end:
  1. throughput: the same burst of asynchronous tasks (POST /tasks) over the same fake instances, sent to one
     gateway, then spread over two gateway processes (alternating), rounds interleaved (one, two, one, two);
     tasks per second from the first POST to the last task's end; the ratio two/one (target >= 0.98: a second
     replica costs nothing, the instances being the bottleneck);
  2. takeover: one replica holds queued tasks while the instances are busy and is SIGKILLed; the time from the
     kill until the other replica owns them (tasks.owner), against GATEWAY_HEARTBEAT_TIMEOUT (target: at most
     10 s after it), and until the first of them ran.

What runs: the gateway processes of tests/gateway/replicas.py (the real Fleet and apps under uvicorn, a data
folder each, one fresh Postgres database), their instances fake ones in this process (tests/gateway/replicas.py
`SharedFake`) whose generations take --delay seconds; the clients in this process (httpx).
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

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # run as a script from a checkout

from sqlalchemy import select
from sqlalchemy.engine import make_url

from gateway.db.engine import create_db_engine
from gateway.db.models import Task
from tests.bench.bench_control_plane import postgres_database
from tests.gateway.replicas import Replica, SharedFake
from tests.gateway.test_replica_takeover import start_instances
from tests.polling import wait_until

RATIO_TARGET = 0.98
TAKEOVER_TARGET_S = 10.0


def burst(replicas: list[Replica], tasks: int, tag: str) -> float:
    """Sends `tasks` tasks over the replicas in turn, waits for all; returns tasks per second."""
    began = time.monotonic()
    clients = [r.api() for r in replicas]
    try:
        ids = []
        for n in range(tasks):
            answer = clients[n % len(clients)].post("/tasks", json={"prompt": f"{tag}-{n}"})
            assert answer.status_code == 202, answer.text
            ids.append((n % len(clients), answer.json()["task_id"]))
        for index, task_id in ids:
            def done(index: int = index, task_id: str = task_id) -> bool:
                return clients[index].get(f"/tasks/{task_id}").json()["status"] in ("succeeded", "failed")
            wait_until(done, timeout=600, what=f"task {task_id}", pause=0.02)
        failed = [t for i, t in ids if clients[i].get(f"/tasks/{t}").json()["status"] != "succeeded"]
        assert not failed, f"{len(failed)} tasks failed"
    finally:
        for client in clients:
            client.close()
    return tasks / (time.monotonic() - began)


def owners(database_url: str, task_ids: list[str]) -> set[str | None]:
    async def read() -> set[str | None]:
        engine = create_db_engine(database_url)
        try:
            async with engine.connect() as connection:
                query = select(Task.owner).where(Task.id.in_([uuid.UUID(t) for t in task_ids]))
                return set((await connection.execute(query)).scalars())
        finally:
            await engine.dispose()

    return asyncio.run(read())


def takeover(a: Replica, b: Replica, fake: SharedFake, database_url: str, instances: int, queued: int) -> tuple[float, float]:
    """Seconds from B's SIGKILL until A owns B's queued tasks, and until the first of them ran."""
    fake.set_delay(3.0)
    with a.api() as api_a, b.api() as api_b:
        for n in range(instances):  # every instance busy for a while
            assert api_a.post("/tasks", json={"prompt": f"hold-{n}"}).status_code == 202
        wait_until(lambda: sum(g.prompt.startswith("hold-") for g in fake.generations()) == instances, timeout=30,
                   what="the instances to be busy")
        ids = [api_b.post("/tasks", json={"prompt": f"left-{n}"}).json()["task_id"] for n in range(queued)]
    fake.set_delay(0.2)
    before = owners(database_url, ids)
    assert len(before) == 1
    b.kill()
    killed = time.monotonic()
    wait_until(lambda: owners(database_url, ids).isdisjoint(before), timeout=120, what="A to own B's tasks", pause=0.05)
    owned = time.monotonic() - killed
    wait_until(lambda: any(g.prompt.startswith("left-") for g in fake.generations()), timeout=120,
               what="the first of B's tasks to run", pause=0.05)
    return owned, time.monotonic() - killed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--delay", type=float, default=2.0, help="seconds a fake generation takes (the instances, not the gateways, are the bottleneck)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--heartbeat-interval", default="2")
    parser.add_argument("--heartbeat-timeout", default="10")
    args = parser.parse_args()
    admin_url = os.environ.get("AISTUDIO_TEST_POSTGRES_URL")
    if not admin_url:
        print("AISTUDIO_TEST_POSTGRES_URL must name a Postgres server (replicas share one Postgres)")
        return 2
    name = f"bench_replicas_{uuid.uuid4().hex[:12]}"
    asyncio.run(postgres_database(admin_url, f'CREATE DATABASE "{name}"'))
    database_url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    beats = {"HEARTBEAT_INTERVAL": args.heartbeat_interval, "HEARTBEAT_TIMEOUT": args.heartbeat_timeout,
             "QUEUE_MAX": str(max(100, args.tasks * 2)), "TASK_WAIT_TIMEOUT": "600", "QUEUE_WAIT_TIMEOUT": "600"}
    one: list[float] = []
    two: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as tmp, SharedFake(args.delay) as fake:
            a = Replica(database_url, Path(tmp) / "a", fake.url, beats)
            b = Replica(database_url, Path(tmp) / "b", fake.url, beats)
            try:
                a.start()
                b.start()
                start_instances(a, args.instances)
                burst([a], args.instances, "warm")
                for round_ in range(args.rounds):
                    one.append(burst([a], args.tasks, f"one{round_}"))
                    two.append(burst([a, b], args.tasks, f"two{round_}"))
                owned, ran = takeover(a, b, fake, database_url, args.instances, queued=args.instances * 2)
            except BaseException:
                print("---- replica a\n" + a.log_tail() + "\n---- replica b\n" + b.log_tail())
                raise
            finally:
                a.stop()
                b.stop()
    finally:
        asyncio.run(postgres_database(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    ideal = args.instances / args.delay
    ratio = statistics.mean(two) / statistics.mean(one)
    timeout = float(args.heartbeat_timeout)
    after = owned - timeout
    print(f"\n{args.instances} fake instances, generations of {args.delay:g} s (ideal {ideal:.1f} tasks/s), "
          f"{args.tasks} tasks per burst, {args.rounds} rounds")
    print(f"[throughput] one replica  {', '.join(f'{x:.2f}' for x in one)} tasks/s (mean {statistics.mean(one):.2f})")
    print(f"[throughput] two replicas {', '.join(f'{x:.2f}' for x in two)} tasks/s (mean {statistics.mean(two):.2f})")
    print(f"[throughput] ratio two/one {ratio:.3f} (target >= {RATIO_TARGET}: {'met' if ratio >= RATIO_TARGET else 'MISSED'})")
    print(f"[takeover] heartbeat every {args.heartbeat_interval} s, timeout {timeout:g} s: the other replica owned the "
          f"killed one's queued tasks {owned:.1f} s after the SIGKILL ({after:+.1f} s after the timeout; target <= "
          f"{TAKEOVER_TARGET_S:g} s: {'met' if after <= TAKEOVER_TARGET_S else 'MISSED'}); the first ran {ran:.1f} s after it")
    return 0 if ratio >= RATIO_TARGET and after <= TAKEOVER_TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
