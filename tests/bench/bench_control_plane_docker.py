"""Control plane on the real engine (a script, not a test): the gateway process (runtime `docker`) with real
instance containers and the simulator container on one network. Prints every figure side by side from
this one run.

    python tests/bench/bench_control_plane_docker.py [--starts 5] [--burst 10] [--adopt 3] [--database-url URL]

1. one instance: the API call `POST /api/instances/{id}/start` until the API says `running` and
   `logged_in` (on the simulator), a fresh instance (new container and volume) each run; p50 <= 4 s
2. `--burst` instances started at once: until the last one is running and logged in; <= 20 s for ten
3. the gateway SIGKILLed with `--adopt` instances running, then started again: until every one is adopted
   (the same containers, none restarted); <= 10 s

The gateway runs with its production settings (reconcile interval, probe cadence, start concurrency);
SQLite unless --database-url names another database. Everything it makes is removed at the end.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import docker  # noqa: E402

from tests.e2e.harness import (  # noqa: E402
    INSTANCE_IMAGE,
    SIMULATOR_IMAGE,
    GatewayProcess,
    engine_problem,
    fleet_containers,
    new_namespace,
    remove_namespace,
    remove_stale,
    simulator_network,
    started_at,
)
from tests.polling import wait_until  # noqa: E402

TARGET_START_P50_S = 4.0
TARGET_BURST_S = 20.0
TARGET_ADOPT_S = 10.0
POLL_S = 0.02


def running_and_logged_in(gateway: GatewayProcess) -> set[str]:
    """Ids the API lists as running and logged in (one request for all)."""
    views = gateway.call("GET", "/api/instances")["instances"]
    return {v["instance_id"] for v in views if v["status"] == "running" and v["login_state"] == "logged_in"}


def start_and_wait(gateway: GatewayProcess, ids: list[str]) -> dict[str, float]:
    """Start every instance at once (one API call each, in parallel); seconds until each is running."""
    done: dict[str, float] = {}
    began = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(len(ids)) as pool:
        list(pool.map(lambda i: gateway.call("POST", f"/api/instances/{i}/start"), ids))

    def all_running() -> bool:
        now = time.monotonic()
        for instance_id in running_and_logged_in(gateway) & set(ids) - set(done):
            done[instance_id] = now - began
        return len(done) == len(ids)

    try:
        wait_until(all_running, timeout=180, what=lambda: f"{len(ids)} running, {len(done)} so far", pause=POLL_S)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{gateway.log_tail()}") from None
    return done


def phases(gateway: GatewayProcess, instance_id: str) -> str:
    """Where the time went, from the instance's event log: API call -> container started -> ready."""
    events = {e["kind"]: e["created_at"] for e in gateway.events(instance_id)}

    def at(kind: str) -> float:
        from datetime import datetime

        return datetime.fromisoformat(events[kind].replace("Z", "+00:00")).timestamp()

    try:
        return f"container up {at('started') - at('start_requested'):.2f} s, then ready {at('ready') - at('started'):.2f} s"
    except KeyError:
        return "?"


def remove_all(gateway: GatewayProcess, ids: list[str]) -> None:
    for instance_id in ids:
        gateway.call("POST", f"/api/instances/{instance_id}/stop")
    for instance_id in ids:
        gateway.wait_status(instance_id, "stopped", timeout=60)
        gateway.call("DELETE", f"/api/instances/{instance_id}")


def bench_single(gateway: GatewayProcess, runs: int) -> list[float]:
    samples = []
    for n in range(runs):
        instance_id = gateway.create(f"single-{n}")
        took = start_and_wait(gateway, [instance_id])[instance_id]
        samples.append(took)
        print(f"  run {n + 1}: {took:.2f} s  ({phases(gateway, instance_id)})")
        remove_all(gateway, [instance_id])
    return samples


def bench_burst(gateway: GatewayProcess, count: int) -> list[float]:
    ids = [gateway.create(f"burst-{n}") for n in range(count)]
    done = start_and_wait(gateway, ids)
    ordered = sorted(done.values())
    print("  each: " + " ".join(f"{t:.1f}" for t in ordered) + " s")
    remove_all(gateway, ids)
    return ordered


def bench_adopt(gateway: GatewayProcess, engine: docker.DockerClient, count: int) -> tuple[float, float, bool]:
    ids = [gateway.create(f"adopt-{n}") for n in range(count)]
    start_and_wait(gateway, ids)
    before = {c.id: started_at(c) for c in fleet_containers(engine, gateway.namespace)}
    gateway.kill()
    began = time.monotonic()
    listening = gateway.start()
    wait_until(
        lambda: all(gateway.event_kinds(i).count("adopted") == 1 for i in ids),
        timeout=60, what="every instance adopted", pause=POLL_S,
    )
    adopted = time.monotonic() - began
    after = {c.id: started_at(c) for c in fleet_containers(engine, gateway.namespace)}
    same = after == before and running_and_logged_in(gateway) >= set(ids)
    remove_all(gateway, ids)
    return listening, adopted, same


def verdict(value: float, target: float) -> str:
    return "met" if value <= target else "MISSED"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--burst", type=int, default=10)
    parser.add_argument("--adopt", type=int, default=3)
    parser.add_argument("--database-url", default="", help="default: SQLite in a temporary folder")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a gateway setting to try, e.g. --set START_CONCURRENCY=4 (GATEWAY_ is implied)")
    args = parser.parse_args()

    problem = engine_problem(INSTANCE_IMAGE, SIMULATOR_IMAGE)
    if problem:
        print(problem)
        return 2
    engine = docker.from_env(timeout=60)
    remove_stale(engine)
    namespace = new_namespace("bench")
    print(f"machine: {os.cpu_count()} CPUs, Docker {engine.version()['Version']}, image {INSTANCE_IMAGE}")
    with tempfile.TemporaryDirectory() as tmp, simulator_network(engine) as network:
        database_url = args.database_url or f"sqlite+aiosqlite:///{tmp}/gateway.db"
        overrides = dict(item.removeprefix("GATEWAY_").split("=", 1) for item in args.set)
        gateway = GatewayProcess(database_url, Path(tmp) / "data", network, namespace, settings=overrides)
        try:
            gateway.start()
            print(f"gateway: {database_url.split(':')[0]}, settings {overrides or 'as in production'}, log {gateway.log_path}")
            print(f"\n1. one instance started through the API, {args.starts} runs")
            singles = bench_single(gateway, args.starts)
            print(f"\n2. {args.burst} instances started at once")
            burst = bench_burst(gateway, args.burst)
            print(f"\n3. gateway SIGKILLed with {args.adopt} running, started again")
            listening, adopted, same = bench_adopt(gateway, engine, args.adopt)
        finally:
            gateway.stop()
            remove_namespace(engine, namespace)
    engine.close()

    p50 = statistics.median(singles)
    last = burst[-1]
    rows = [
        ("one start, API -> running + logged in, p50", f"{p50:.2f} s (min {min(singles):.2f}, max {max(singles):.2f})",
         f"<= {TARGET_START_P50_S:g} s", verdict(p50, TARGET_START_P50_S)),
        (f"{args.burst} at once, until the last is running", f"{last:.2f} s (first {burst[0]:.2f}, median {statistics.median(burst):.2f})",
         f"<= {TARGET_BURST_S:g} s", verdict(last, TARGET_BURST_S)),
        (f"SIGKILL, restart: {args.adopt} adopted", f"{adopted:.2f} s (listening after {listening:.2f})",
         f"<= {TARGET_ADOPT_S:g} s", verdict(adopted, TARGET_ADOPT_S) if same else "MISSED (containers changed)"),
    ]
    print()
    width = max(len(r[0]) for r in rows)
    for name, value, target, met in rows:
        print(f"{name:<{width}}  {value:<40} {target:<9} {met}")
    ok = all(r[3] == "met" for r in rows)
    print("\nall targets met" if ok else "\nSOME TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
