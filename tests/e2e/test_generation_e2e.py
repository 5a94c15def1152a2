"""The generation API end to end on the real Docker engine: `python -m gateway` (runtime docker) in front of
three real instance containers, each signed in to its own simulator account, on SQLite and on Postgres.

The simulator records every generation with its account and the most it ever ran at once per account, which
proves that no instance ran two tasks. The three containers are shared by the module's tests (per database);
their order matters: the quota test leaves an instance cooling down, so it comes last.
"""

from __future__ import annotations

import base64
import hashlib
import io
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
import requests

from tests.conftest import POSTGRES_ENV, _admin_sql, run_in_thread, skip_or_fail
from tests.e2e.conftest import FAST_SETTINGS
from tests.e2e.harness import (
    GatewayProcess,
    SimulatorNetwork,
    container_of,
    print_fleet_logs,
    new_namespace,
    remove_namespace,
)
from instance.images import reencode
from tests.instance.harness import png_bytes, signed_in_state
from tests.polling import wait_until
from tests.simulator.fixtures import control

pytestmark = [pytest.mark.docker]

INSTANCES = 3
QUEUE_MAX = 4
SETTINGS = {**FAST_SETTINGS, "QUEUE_MAX": str(QUEUE_MAX), "QUEUE_WAIT_TIMEOUT": "120", "QUEUE_POLL_INTERVAL": "0.2"}


@dataclass
class Pool:
    gateway: GatewayProcess
    engine: docker.DockerClient
    sim: SimulatorNetwork
    accounts: dict[str, str]  # instance id -> simulator account

    @property
    def api(self) -> str:
        return self.gateway.api_url

    def record(self) -> dict[str, Any]:
        return control(self.sim.control_url, "/_sim/record")

    def fresh_simulator(self, **config: Any) -> None:
        """Forget what was recorded; sign-in stays optional (the session fixture's setting) for other tests."""
        control(self.sim.control_url, "/_sim/reset", {})
        control(self.sim.control_url, "/_sim/config", {"signin_required": False, **config})


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def pool(request: pytest.FixtureRequest, engine: docker.DockerClient, sim_network: SimulatorNetwork, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    data_dir = tmp_path_factory.mktemp(f"gen-{request.param}")
    with _database(request.param, data_dir) as database_url:
        namespace = new_namespace("gen")
        gateway = GatewayProcess(database_url, data_dir / "data", sim_network, namespace, settings=dict(SETTINGS))
        failed_before = request.session.testsfailed
        try:
            gateway.start()
            pool = Pool(gateway, engine, sim_network, _start_signed_in(gateway, sim_network))
            pool.fresh_simulator()
            yield pool
        finally:
            gateway.stop()
            if request.session.testsfailed > failed_before:
                print_fleet_logs(engine, gateway)
            remove_namespace(engine, namespace)
            control(sim_network.control_url, "/_sim/reset", {})
            control(sim_network.control_url, "/_sim/config", {"signin_required": False})


def _start_signed_in(gateway: GatewayProcess, sim: SimulatorNetwork) -> dict[str, str]:
    """Three instances, running, each signed in to an account of its own (so the record tells them apart)."""
    ids = [gateway.create(f"gen-{n}") for n in range(INSTANCES)]
    for instance_id in ids:
        gateway.call("POST", f"/api/instances/{instance_id}/start")
    accounts = {}
    for n, instance_id in enumerate(ids):
        gateway.wait_running(instance_id)
        account = f"account-{n}@example.com"
        gateway.call("PUT", f"/api/instances/{instance_id}/session", json=signed_in_state(sim.aistudio_url, account))
        accounts[instance_id] = account
    for instance_id in ids:
        gateway.wait_running(instance_id)
    return accounts


class _database:
    """A database of the module's own: a SQLite file, or a new Postgres database dropped afterwards."""

    def __init__(self, kind: str, data_dir: Path) -> None:
        self.kind, self.data_dir, self.name = kind, data_dir, None

    def __enter__(self) -> str:
        if self.kind == "sqlite":
            return f"sqlite+aiosqlite:///{self.data_dir}/gateway.db"
        import os

        from sqlalchemy.engine import make_url

        admin = os.environ.get(POSTGRES_ENV)
        if not admin:
            skip_or_fail(f"{POSTGRES_ENV} is not set")
        self.admin, self.name = admin, f"e2e_gen_{uuid.uuid4().hex[:12]}"
        run_in_thread(_admin_sql(admin, f'CREATE DATABASE "{self.name}"'))
        return make_url(admin).set(database=self.name).render_as_string(hide_password=False)

    def __exit__(self, *exc: object) -> None:
        if self.name:
            run_in_thread(_admin_sql(self.admin, f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))


def generate(pool: Pool, prompt: str, **extra: Any) -> requests.Response:
    """Exactly as the old clients call it."""
    return requests.post(f"{pool.api}/generate", json={"prompt": prompt, "aspect_ratio": "16:9", **extra}, timeout=180)


# ---- the tests, in order ---------------------------------------------------------------------------------


def test_concurrent_requests_spread_over_all_instances_and_never_overlap(pool: Pool) -> None:
    pool.fresh_simulator(latency_ms=1500)
    with ThreadPoolExecutor(max_workers=6) as executor:
        responses = list(executor.map(lambda n: generate(pool, f"并发 {n}"), range(6)))
    bodies = [r.json() for r in responses]
    assert [r.status_code for r in responses] == [200] * 6
    assert all(b["success"] and b["generated_images"] for b in bodies), bodies
    record = pool.record()
    per_account: dict[str, int] = {}
    for generation in record["generations"]:
        per_account[generation["account"]] = per_account.get(generation["account"], 0) + 1
    assert per_account == {account: 2 for account in pool.accounts.values()}
    assert record["max_concurrent_by_account"] == {account: 1 for account in pool.accounts.values()}
    assert {b["instance_id"] for b in bodies} == set(pool.accounts)
    # ... from fenced instances with a read-only root (the simulator, AI Studio's URL, is their one opening)
    assert requests.get(f"{pool.api}/health", timeout=10).json()["engine"]["egress_fence"] == "on"
    assert all(pool.engine.containers.get(container_of(pool.engine, pool.gateway.namespace, instance_id).id)
               .attrs["HostConfig"]["ReadonlyRootfs"] for instance_id in pool.accounts)


def test_the_old_clients_calls_work_unchanged(pool: Pool) -> None:
    pool.fresh_simulator(latency_ms=200)
    reference = png_bytes(32, 24)
    with_prefix = "data:image/png;base64," + base64.b64encode(reference).decode()
    result = generate(pool, "一只可爱的小猫", reference_image_b64=with_prefix).json()
    assert result["success"] is True and isinstance(result["task_id"], str) and result["message"]
    assert base64.b64decode(result["generated_images"][0]).startswith(b"\x89PNG")
    assert "ai_text_response" in result

    files = [("reference_images", ("ref.png", io.BytesIO(reference), "image/png"))]
    form = requests.post(f"{pool.api}/generate-with-file", data={"prompt": "画一只狗", "aspect_ratio": "1:1"}, files=files, timeout=180)
    assert form.status_code == 200 and form.json()["success"] is True

    again = requests.get(f"{pool.api}/tasks/{result['task_id']}", timeout=30).json()
    assert again["status"] == "succeeded" and again["generated_images"] == result["generated_images"]
    health = requests.get(f"{pool.api}/health", timeout=30).json()
    assert health["status"] == "healthy" and health["concurrency_capacity"] == INSTANCES
    assert health["browser_instances"]["total"] == INSTANCES

    uploads = [g["uploads"] for g in pool.record()["generations"]]
    reencoded = reencode(reference, 0, 40_000_000).data  # the instance re-encodes every reference it takes
    assert [len(u) for u in uploads] == [1, 1] and all(u[0]["sha256"] == hashlib.sha256(reencoded).hexdigest() for u in uploads)


def test_a_full_queue_answers_429(pool: Pool) -> None:
    pool.fresh_simulator(latency_ms=3000)
    admitted: list[requests.Response] = []
    lock = threading.Lock()

    def call(n: int) -> None:
        response = generate(pool, f"排队 {n}")
        with lock:
            admitted.append(response)

    threads = [threading.Thread(target=call, args=(n,)) for n in range(INSTANCES + QUEUE_MAX)]
    for thread in threads:
        thread.start()
    wait_until(lambda: requests.get(f"{pool.api}/health", timeout=10).json()["queued_tasks"] == QUEUE_MAX,
               timeout=30, what="a full queue")
    rejected = requests.post(f"{pool.api}/generate", json={"prompt": "one too many"}, headers={"Accept-Language": "en"}, timeout=30)
    assert rejected.status_code == 429 and int(rejected.headers["Retry-After"]) >= 1
    assert "queue is full" in rejected.json()["message"]
    for thread in threads:
        thread.join()
    assert [r.status_code for r in admitted] == [200] * (INSTANCES + QUEUE_MAX)
    assert all(r.json()["success"] for r in admitted)
    assert max(pool.record()["max_concurrent_by_account"].values()) == 1


def test_a_container_killed_mid_task_and_the_task_succeeds_on_another(pool: Pool) -> None:
    pool.fresh_simulator(latency_ms=6000)
    with ThreadPoolExecutor(max_workers=1) as executor:
        pending = executor.submit(generate, pool, "被打断的任务")
        # The simulator says which account (so which instance) is generating.
        (generation,) = wait_until(lambda: pool.record()["generations"], timeout=60, what="the generation to start")
        victim = {account: iid for iid, account in pool.accounts.items()}[generation["account"]]
        container = container_of(pool.engine, pool.gateway.namespace, victim)
        assert container is not None
        container.kill()
        body = pending.result(timeout=180).json()
    assert body["success"] is True and body["attempts"] == 2, body
    assert body["instance_id"] != victim
    assert body["timings"]["tries"][0]["outcome"] == "instance_unreachable"
    # The reconciler restarts it; it comes back with its session from its volume.
    pool.gateway.wait_running(victim, fail_on_error=False, timeout=120)
    assert "died" in pool.gateway.event_kinds(victim)


def test_a_quota_answer_blocks_that_model_on_that_account(pool: Pool) -> None:
    pool.fresh_simulator(latency_ms=300, mode="quota", mode_times=1)
    body = generate(pool, "额度").json()
    # The quota try generated nothing: the retry elsewhere is not a spent attempt.
    assert body["success"] is True and body["attempts"] == 1, body
    assert body["timings"]["tries"][0]["outcome"] == "quota_exhausted"
    outcomes = [g["outcome"] for g in pool.record()["generations"]]
    assert outcomes[0] != "ok" and outcomes[-1] == "ok"
    # The block is written with the attempt's release, just after the answer went out.
    blocked = wait_until(
        lambda: [i for i in pool.gateway.call("GET", "/api/instances")["instances"] if i["unavailable_models"]],
        timeout=10, what="the quota block in the instance list")
    assert len(blocked) == 1 and blocked[0]["instance_id"] != body["instance_id"]
    (block,) = blocked[0]["unavailable_models"]
    assert block["kind"] == "quota" and block["model"] == body["model"] and block["until"], block
    assert blocked[0]["cooldown_until"] is None  # the account itself is not rested
    assert "model_blocked" in pool.gateway.event_kinds(blocked[0]["instance_id"])
    # That model stays off that account: the next tasks for it go to the others.
    nxt = [generate(pool, f"之后 {n}").json()["instance_id"] for n in range(2)]
    assert blocked[0]["instance_id"] not in nxt
