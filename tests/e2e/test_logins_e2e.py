"""Logins that last, through the built images: the gateway process (runtime docker) in front of real instance
containers, against the simulator container renewing its session cookie on every page load and refusing stale
values, opening signed out with only a "Sign in" link, and redirecting out-of-region accounts.

- SIGKILL (`docker kill`) right after renewals: the instance comes back signed in as the same account;
- an import of a dead session: 422, the working login keeps working;
- a page with only a sign-in link: `needs_login` within one login check;
- a region redirect: the instance leaves the pool with its reason, and comes back when a load works.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import docker
import pytest
import requests

from tests.e2e.conftest import FAST_SETTINGS
from tests.e2e.harness import (
    GatewayProcess, SimulatorNetwork, container_of, new_namespace, print_fleet_logs, remove_namespace,
)
from tests.instance.harness import signed_in_state
from tests.polling import wait_until
from tests.simulator.fixtures import control

pytestmark = [pytest.mark.docker]

SETTINGS = {**FAST_SETTINGS, "LOGIN_CHECK_INTERVAL": "2", "QUEUE_WAIT_TIMEOUT": "60"}


@dataclass
class Fleet:
    gateway: GatewayProcess
    sim: SimulatorNetwork
    engine: docker.DockerClient
    namespace: str

    def record(self) -> dict[str, Any]:
        return control(self.sim.control_url, "/_sim/record")

    def add(self, name: str, account: str) -> str:
        """A new instance signed in as `account`; the ones earlier tests made are stopped, so tasks go to it."""
        for view in self.gateway.call("GET", "/api/instances")["instances"]:
            if view["target"] == "running":
                self.gateway.call("POST", f"/api/instances/{view['instance_id']}/stop")
        instance_id = self.gateway.create(name)
        self.gateway.call("POST", f"/api/instances/{instance_id}/start")
        self.gateway.wait_status(instance_id, "running", timeout=120)
        self.gateway.call("PUT", f"/api/instances/{instance_id}/session", json=signed_in_state(self.sim.aistudio_url, account))
        self.gateway.wait_running(instance_id)
        return instance_id

    def saved_cookie(self, instance_id: str) -> str | None:
        container = container_of(self.engine, self.namespace, instance_id)
        result = container.exec_run(["cat", "/data/storage_state.json"], user="app")
        if result.exit_code != 0:
            return None
        cookies = json.loads(result.output)["cookies"]
        return next((c["value"] for c in cookies if c["name"] == "SIDTS"), None)

    def renew_and_wait_saved(self, instance_id: str, account: str) -> str:
        self.gateway.call("POST", f"/api/instances/{instance_id}/navigate", json={"target": "home"})

        def saved() -> str | None:
            current = self.record()["current_cookie_by_account"].get(account)
            return current if current and self.saved_cookie(instance_id) == current else None

        return wait_until(saved, timeout=15, what=f"the renewal of {account} on the instance's volume", pause=0.2)

    def generate(self, prompt: str) -> dict[str, Any]:
        response = requests.post(f"{self.gateway.api_url}/generate", json={"prompt": prompt, "aspect_ratio": "1:1"}, timeout=180)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture(scope="module")
def fleet(engine: docker.DockerClient, sim_network: SimulatorNetwork, tmp_path_factory: pytest.TempPathFactory,
          request: pytest.FixtureRequest) -> Iterator[Fleet]:
    data_dir = tmp_path_factory.mktemp("logins")
    namespace = new_namespace("login")
    gateway = GatewayProcess(f"sqlite+aiosqlite:///{data_dir}/gateway.db", data_dir / "data", sim_network, namespace,
                             settings=dict(SETTINGS))
    failed_before = request.session.testsfailed
    try:
        control(sim_network.control_url, "/_sim/reset", {})
        control(sim_network.control_url, "/_sim/config", {"signin_required": True})
        gateway.start()
        yield Fleet(gateway, sim_network, engine, namespace)
    finally:
        gateway.stop()
        if request.session.testsfailed > failed_before:
            print_fleet_logs(engine, gateway)
        remove_namespace(engine, namespace)
        control(sim_network.control_url, "/_sim/reset", {})
        control(sim_network.control_url, "/_sim/config", {"signin_required": False})


def test_docker_kill_after_renewals_comes_back_signed_in_as_the_same_account(fleet: Fleet) -> None:
    instance_id = fleet.add("crash", "crash@example.com")
    for _ in range(3):
        fleet.renew_and_wait_saved(instance_id, "crash@example.com")
    container = container_of(fleet.engine, fleet.namespace, instance_id)
    container.kill()  # SIGKILL: no shutdown save
    wait_until(lambda: "died" in fleet.gateway.event_kinds(instance_id), timeout=60, what="the death noticed")
    view = fleet.gateway.wait_running(instance_id, timeout=120, fail_on_error=False)  # error, then restarted
    assert view["login_state"] == "logged_in"
    body = fleet.generate("after docker kill")
    assert body["success"] is True, body
    record = fleet.record()
    assert record["generations"][-1]["account"] == "crash@example.com"
    assert record["stale_cookie_refused_by_account"].get("crash@example.com", 0) == 0


def test_an_import_of_a_dead_session_leaves_the_working_login(fleet: Fleet) -> None:
    instance_id = fleet.add("keeps", "keeps@example.com")
    control(fleet.sim.control_url, "/_sim/accounts/dead@example.com/revoke", {})
    refused = fleet.gateway.http.put(f"/api/instances/{instance_id}/session",
                                     json=signed_in_state(fleet.sim.aistudio_url, "dead@example.com"))
    assert refused.status_code == 422 and "not signed in" in refused.text, refused.text
    assert fleet.gateway.instance(instance_id)["login_state"] == "logged_in"
    body = fleet.generate("still the old login")
    assert body["success"] is True and fleet.record()["generations"][-1]["account"] == "keeps@example.com"


def test_a_page_with_only_a_signin_link_is_needs_login_within_one_check(fleet: Fleet) -> None:
    instance_id = fleet.add("link", "link@example.com")
    control(fleet.sim.control_url, "/_sim/config", {"signed_out_page": "link"})
    try:
        control(fleet.sim.control_url, "/_sim/accounts/link@example.com/revoke", {})
        view = wait_until(lambda: fleet.gateway.instance(instance_id), until=lambda v: v["login_state"] == "needs_login",
                          timeout=60, what="needs_login from the periodic check", pause=0.5)
        assert view["available"] is False
    finally:
        control(fleet.sim.control_url, "/_sim/config", {"signed_out_page": "redirect"})


def test_a_region_redirect_takes_the_instance_out_of_the_pool(fleet: Fleet) -> None:
    instance_id = fleet.add("far", "far@example.com")
    control(fleet.sim.control_url, "/_sim/accounts/far@example.com/config", {"region_redirect": True})
    fleet.gateway.call("POST", f"/api/instances/{instance_id}/navigate", json={"target": "home"})
    view = wait_until(lambda: fleet.gateway.instance(instance_id), until=lambda v: v["aistudio_reach"] == "region_blocked",
                      timeout=60, what="the region block", pause=0.5)
    assert view["available"] is False and "available-regions" in view["page_error"]
    control(fleet.sim.control_url, "/_sim/accounts/far@example.com/config", {"region_redirect": False})
    back = wait_until(lambda: fleet.gateway.instance(instance_id), until=lambda v: v["available"], timeout=90,
                      what="back in the pool after a load works", pause=0.5)
    assert back["aistudio_reach"] == "reachable"
