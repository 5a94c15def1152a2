"""A fleet for the chaos cases: the gateway (`python -m gateway`, runtime docker) on a database of the suite's
own Postgres server, three instance containers signed in to the simulator, and helpers to load and watch it."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest
import requests

from tests.gateway.conftest import REPLICA_ENCRYPTION_KEY
from tests.e2e.conftest import FAST_SETTINGS
from tests.e2e.harness import (
    GatewayProcess,
    SimulatorNetwork,
    fleet_containers,
    print_fleet_logs,
    new_namespace,
    remove_namespace,
)
from tests.instance.harness import signed_in_state
from tests.pgserver import PostgresServer
from tests.polling import wait_until
from tests.simulator.fixtures import control

INSTANCES = 3
QUEUE_MAX = 100
# One encryption key for the suite's gateways: a replica with a data folder of its own opens the same database.
SETTINGS = {**FAST_SETTINGS, "QUEUE_MAX": str(QUEUE_MAX), "QUEUE_WAIT_TIMEOUT": "120", "QUEUE_POLL_INTERVAL": "0.2",
            "ENCRYPTION_KEY": REPLICA_ENCRYPTION_KEY}


@dataclass
class Outcome:
    """What one client saw: an answer, or the exception its HTTP call raised, and how long it took."""

    response: requests.Response | None
    error: BaseException | None
    seconds: float

    @property
    def status(self) -> int | None:
        return self.response.status_code if self.response is not None else None


@dataclass
class ChaosFleet:
    gateway: GatewayProcess
    engine: docker.DockerClient
    sim: SimulatorNetwork
    postgres: PostgresServer
    instance_ids: list[str] = field(default_factory=list)

    @property
    def api(self) -> str:
        return self.gateway.api_url

    def simulator(self, **config: Any) -> None:
        """A fresh record, sign-in optional, and `config` (latency_ms, mode, mode_times, ...)."""
        control(self.sim.control_url, "/_sim/reset", {})
        control(self.sim.control_url, "/_sim/config", {"signin_required": False, **config})

    def record(self) -> dict[str, Any]:
        return control(self.sim.control_url, "/_sim/record")

    def health(self) -> tuple[int, dict[str, Any]]:
        try:
            response = requests.get(f"{self.api}/health", timeout=10)
        except requests.RequestException:
            return 0, {}
        return response.status_code, response.json()

    def generate(self, prompt: str, timeout: float = 180, **extra: Any) -> requests.Response:
        return requests.post(f"{self.api}/generate", json={"prompt": prompt, "aspect_ratio": "1:1", **extra}, timeout=timeout)

    def load(self, count: int, *, prompt: str = "chaos", timeout: float = 180) -> Callable[[], list[Outcome]]:
        """Starts `count` clients at once; the returned function waits for and returns what each saw."""
        executor = ThreadPoolExecutor(max_workers=count)

        def one(n: int) -> Outcome:
            began = time.monotonic()
            try:
                return Outcome(self.generate(f"{prompt} {n}", timeout=timeout), None, time.monotonic() - began)
            except requests.RequestException as exc:
                return Outcome(None, exc, time.monotonic() - began)

        futures = [executor.submit(one, n) for n in range(count)]

        def results() -> list[Outcome]:
            try:
                return [f.result() for f in futures]
            finally:
                executor.shutdown(wait=True)

        return results

    def wait_load(self, *, active: int, queued: int, timeout: float = 60) -> None:
        def reached(health: tuple[int, dict[str, Any]]) -> bool:
            status, body = health
            return status == 200 and body.get("active_tasks") == active and body.get("queued_tasks") == queued

        wait_until(self.health, until=reached, timeout=timeout, what=f"{active} tasks running and {queued} queued", pause=0.1)

    def capacity_back(self, timeout: float) -> float:
        """Seconds until every instance is available again and no task is running or queued."""
        began = time.monotonic()

        def free(health: tuple[int, dict[str, Any]]) -> bool:
            status, body = health
            pool = body.get("browser_instances", {})
            return (status == 200 and pool.get("available") == len(self.instance_ids) and pool.get("busy") == 0
                    and body.get("active_tasks") == 0 and body.get("queued_tasks") == 0)

        wait_until(self.health, until=free, timeout=timeout,
                   what=f"all {len(self.instance_ids)} instances free, no task active", pause=0.1)
        return time.monotonic() - began

    def containers(self) -> dict[str, Any]:
        from gateway.runtime.base import LABEL_INSTANCE_ID

        return {c.labels.get(LABEL_INSTANCE_ID): c for c in fleet_containers(self.engine, self.gateway.namespace)}

    def wait_all_running(self, timeout: float = 120) -> None:
        for instance_id in self.instance_ids:
            self.gateway.wait_running(instance_id, timeout=timeout, fail_on_error=False)


@contextlib.contextmanager
def open_chaos_fleet(
    engine: docker.DockerClient, sim: SimulatorNetwork, postgres: PostgresServer, data_dir: Path, request: pytest.FixtureRequest,
    *, instances: int = INSTANCES, settings: dict[str, str] | None = None,
) -> Iterator[ChaosFleet]:
    """`settings`: GATEWAY_* (without the prefix) over the suite's own."""
    database = f"chaos_{uuid.uuid4().hex[:10]}"
    if not postgres.running():
        postgres.start()
    postgres.psql(f'CREATE DATABASE "{database}"')
    url = postgres.url.rsplit("/", 1)[0] + f"/{database}"
    namespace = new_namespace("chaos")
    gateway = GatewayProcess(url, data_dir / "data", sim, namespace, settings={**SETTINGS, **(settings or {})})
    failed_before = request.session.testsfailed
    fleet = ChaosFleet(gateway, engine, sim, postgres)
    try:
        fleet.simulator()
        gateway.start()
        fleet.instance_ids = [gateway.create(f"chaos-{n}") for n in range(instances)]
        for instance_id in fleet.instance_ids:
            gateway.call("POST", f"/api/instances/{instance_id}/start")
        fleet.wait_all_running()
        for n, instance_id in enumerate(fleet.instance_ids):  # an account each, so the record tells them apart
            gateway.call("PUT", f"/api/instances/{instance_id}/session", json=signed_in_state(sim.aistudio_url, f"chaos-{n}@example.com"))
        fleet.wait_all_running()
        yield fleet
    finally:
        gateway.stop()
        if request.session.testsfailed > failed_before:
            print_fleet_logs(engine, gateway, extra=f"\n---- postgres log ----\n{postgres.log_tail()}")
        remove_namespace(engine, namespace)
        if not postgres.running():
            postgres.start()
        postgres.psql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
