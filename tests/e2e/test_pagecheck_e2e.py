"""The page check and the selectors override through the built images: a real instance container (its
Chromium on the simulator container's page), the gateway on the docker runtime."""

from __future__ import annotations

import json

import docker

from tests.e2e.harness import GatewayProcess, SimulatorNetwork, container_of
from tests.simulator.fixtures import control

FIX = {"roles": {"run_button": ["#run-button-mount"]}}


def roles(report: dict) -> dict[str, dict]:
    return {r["role"]: r for r in report["roles"]}


def test_diagnose_shows_the_live_page_and_an_override_reaches_the_container(
    gateway: GatewayProcess, engine: docker.DockerClient, sim_network: SimulatorNetwork
) -> None:
    instance_id = gateway.create("pagecheck")
    gateway.call("POST", f"/api/instances/{instance_id}/start")
    gateway.wait_running(instance_id)
    control(sim_network.control_url, "/_sim/config", {"missing_roles": ["run_button"]})
    try:
        gateway.call("POST", f"/api/instances/{instance_id}/navigate", json={"target": "home"})
        report = gateway.call("GET", f"/api/instances/{instance_id}/diagnose")["report"]
        assert report["url"].startswith(sim_network.aistudio_url) and report["login_state"] == "logged_in"
        assert report["browser"] == "up" and report["error"] is None
        found = roles(report)
        assert found["prompt_textarea"]["matched"] and found["prompt_textarea"]["visible"] is True
        assert found["run_button"]["matched"] is None and report["missing_expected"] == ["run_button"]

        # A selector the browser cannot parse is refused by the instance's dry run; nothing is stored.
        refused = gateway.http.put("/api/selectors", json={"roles": {"run_button": ["ms-run-button button]"]}})
        assert refused.status_code == 422 and "is not a valid selector" in refused.json()["message"]
        assert gateway.call("GET", "/api/selectors")["override"] is None

        pushed = gateway.call("PUT", "/api/selectors", json=FIX)
        assert (pushed["pushed"], pushed["failed"]) == (1, 0)
        container = container_of(engine, gateway.namespace, instance_id)
        on_disk = container.exec_run(["cat", "/data/selectors.json"], user="app")
        assert on_disk.exit_code == 0 and json.loads(on_disk.output)["roles"] == FIX["roles"]
        found = roles(gateway.call("GET", f"/api/instances/{instance_id}/diagnose")["report"])
        assert (found["run_button"]["matched"], found["run_button"]["count"]) == ("#run-button-mount", 1)
        assert "selectors_changed" in gateway.event_kinds(instance_id)

        gateway.call("DELETE", "/api/selectors")
        assert container.exec_run(["test", "-e", "/data/selectors.json"]).exit_code == 1
        assert roles(gateway.call("GET", f"/api/instances/{instance_id}/diagnose")["report"])["run_button"]["matched"] is None
    finally:
        control(sim_network.control_url, "/_sim/reset", {})
        control(sim_network.control_url, "/_sim/config", {"signin_required": False})
