"""What AI Studio's failures do end to end: the gateway process (runtime docker) in front of two real instance
containers, each signed in to its own simulator account, the simulator told to fail. One gateway for the
module (SQLite; the chaos suite runs the engine on Postgres).

- a rate limit: that instance cools down, the task goes to the other and succeeds;
- a sign-out in the middle of a task: the task fails (AI Studio had the prompt), the instance turns needs_login;
- an internal error after the prompt was sent: failed, and not retried (the quota may have been spent);
- `POST /tasks` then `GET /tasks/{id}`: 202 at once, then the images.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import docker
import pytest
import requests

from tests.e2e.conftest import FAST_SETTINGS
from tests.e2e.harness import GatewayProcess, SimulatorNetwork, print_fleet_logs, new_namespace, remove_namespace
from tests.instance.harness import signed_in_state
from tests.polling import wait_until
from tests.simulator.fixtures import control

pytestmark = [pytest.mark.docker]

# A rate-limited instance rests 5 s here (long enough to see the next task go elsewhere, short for the next test).
SETTINGS = {**FAST_SETTINGS, "QUEUE_WAIT_TIMEOUT": "60", "QUEUE_POLL_INTERVAL": "0.2", "RATE_LIMIT_PAUSE": "5"}


@dataclass
class Pair:
    gateway: GatewayProcess
    sim: SimulatorNetwork
    accounts: dict[str, str]  # instance id -> simulator account

    def simulator(self, **config: Any) -> None:
        control(self.sim.control_url, "/_sim/reset", {})
        control(self.sim.control_url, "/_sim/config", {"signin_required": False, **config})

    def generations(self) -> list[dict[str, Any]]:
        return control(self.sim.control_url, "/_sim/record")["generations"]

    def generate(self, prompt: str) -> dict[str, Any]:
        response = requests.post(f"{self.gateway.api_url}/generate", json={"prompt": prompt, "aspect_ratio": "1:1"}, timeout=180)
        assert response.status_code == 200, response.text
        return response.json()

    def sign_in(self, instance_id: str, account: str) -> None:
        self.gateway.call("PUT", f"/api/instances/{instance_id}/session", json=signed_in_state(self.sim.aistudio_url, account))
        self.accounts[instance_id] = account
        self.gateway.wait_running(instance_id)


@pytest.fixture(scope="module")
def pair(engine: docker.DockerClient, sim_network: SimulatorNetwork, tmp_path_factory: pytest.TempPathFactory,
         request: pytest.FixtureRequest) -> Iterator[Pair]:
    data_dir = tmp_path_factory.mktemp("failures")
    namespace = new_namespace("fail")
    gateway = GatewayProcess(f"sqlite+aiosqlite:///{data_dir}/gateway.db", data_dir / "data", sim_network, namespace,
                             settings=dict(SETTINGS))
    failed_before = request.session.testsfailed
    try:
        control(sim_network.control_url, "/_sim/config", {"signin_required": False})
        gateway.start()
        ids = [gateway.create(f"fail-{n}") for n in range(2)]
        for instance_id in ids:
            gateway.call("POST", f"/api/instances/{instance_id}/start")
        pair = Pair(gateway, sim_network, {})
        for n, instance_id in enumerate(ids):
            gateway.wait_running(instance_id)
            pair.sign_in(instance_id, f"failures-{n}@example.com")
        yield pair
    finally:
        gateway.stop()
        if request.session.testsfailed > failed_before:
            print_fleet_logs(engine, gateway)
        remove_namespace(engine, namespace)
        control(sim_network.control_url, "/_sim/reset", {})
        control(sim_network.control_url, "/_sim/config", {"signin_required": False})


def by_account(pair: Pair) -> dict[str, str]:
    return {account: instance_id for instance_id, account in pair.accounts.items()}


def test_post_tasks_then_get_tasks(pair: Pair) -> None:
    pair.simulator(latency_ms=800)
    submitted = requests.post(f"{pair.gateway.api_url}/tasks", json={"prompt": "异步任务", "aspect_ratio": "16:9"}, timeout=30)
    assert submitted.status_code == 202, submitted.text
    location = submitted.headers["Location"]
    assert location == submitted.json()["status_url"] == f"/tasks/{submitted.json()['task_id']}"
    assert submitted.json()["status"] in ("queued", "running")

    def finished() -> dict[str, Any] | None:
        body = requests.get(f"{pair.gateway.api_url}{location}", timeout=30).json()
        return body if body["done"] else None

    body = wait_until(finished, timeout=120, what="the task to finish", pause=0.2)
    assert body["status"] == "succeeded" and body["success"] is True and len(body["generated_images"]) == 1
    assert [g["prompt"] for g in pair.generations()] == ["异步任务"]
    assert requests.get(f"{pair.gateway.api_url}/tasks/00000000-0000-0000-0000-000000000000", timeout=30).status_code == 404


def test_a_rate_limit_pauses_that_model_on_that_account_and_the_task_goes_elsewhere(pair: Pair) -> None:
    pair.simulator(latency_ms=300, mode="rate_limit", mode_times=1)
    body = pair.generate("限流")
    # The rate-limited try generated nothing: the retry elsewhere is not a spent attempt.
    assert body["success"] is True and body["attempts"] == 1, body
    assert body["timings"]["tries"][0]["outcome"] == "rate_limited"
    first, second = pair.generations()
    limited = by_account(pair)[first["account"]]
    assert first["outcome"] != "ok" and second["outcome"] == "ok" and body["instance_id"] != limited
    # The block is written with the attempt's release, just after the answer went out.
    (block,) = wait_until(lambda: pair.gateway.instance(limited)["unavailable_models"], timeout=10,
                          what="the rate-limit pause in the instance view")
    assert block["kind"] == "rate_limit" and block["until"] and block["model"] == body["model"], block
    assert "model_blocked" in pair.gateway.event_kinds(limited)
    # While that model rests on it, the next task for the model goes to the other one.
    assert pair.generate("限流之后")["instance_id"] != limited
    wait_until(lambda: pair.gateway.instance(limited)["unavailable_models"] == [], timeout=60,
               what="the paused model back on that account (5 s, with jitter)")


def test_an_internal_error_after_the_prompt_fails_the_task_without_a_retry(pair: Pair) -> None:
    pair.simulator(latency_ms=300, mode="internal", mode_times=1)
    body = pair.generate("内部错误")
    assert body["success"] is False and body["status"] == "failed", body
    assert body["error_code"] == "internal_error" and body["attempts"] == 1
    assert len(pair.generations()) == 1  # not sent again: AI Studio may have spent the quota


def test_a_sign_out_in_the_middle_of_a_task(pair: Pair) -> None:
    pair.simulator(latency_ms=300, mode="logout", mode_times=1)
    body = pair.generate("登出")
    assert body["success"] is False and body["error_code"] == "needs_login" and body["attempts"] == 1, body
    (generation,) = pair.generations()
    signed_out = by_account(pair)[generation["account"]]
    assert body["instance_id"] == signed_out
    wait_until(lambda: pair.gateway.instance(signed_out)["login_state"] == "needs_login", timeout=60,
               what="the instance to show needs_login")
    # It is out of the pool: the next task runs on the other instance.
    after = pair.generate("登出之后")
    assert after["success"] is True and after["instance_id"] != signed_out
    pair.sign_in(signed_out, f"again-{time.monotonic_ns()}@example.com")  # and a new session brings it back
    assert pair.gateway.instance(signed_out)["login_state"] == "logged_in"
