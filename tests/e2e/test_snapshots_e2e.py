"""Page snapshots through the built images: a real instance container (its Chromium on the simulator container's
page) fails a task with ui_changed (the simulator leaves the Run button out), keeps a snapshot on its volume, and
the gateway on the docker runtime lists it and streams it to the admin as a zip."""

from __future__ import annotations

import io
import json
import zipfile

import docker
import httpx

from tests.e2e.harness import GatewayProcess, SimulatorNetwork, container_of
from tests.simulator.fixtures import control


def test_a_ui_changed_failure_leaves_a_snapshot_downloadable_through_the_gateway(
    gateway: GatewayProcess, engine: docker.DockerClient, sim_network: SimulatorNetwork
) -> None:
    instance_id = gateway.create("snapshots")
    gateway.call("POST", f"/api/instances/{instance_id}/start")
    gateway.wait_running(instance_id)
    control(sim_network.control_url, "/_sim/config", {"missing_roles": ["run_button"]})
    try:
        gateway.call("POST", f"/api/instances/{instance_id}/navigate", json={"target": "home"})
        answer = httpx.post(f"{gateway.api_url}/generate", json={"prompt": "a red square", "aspect_ratio": "1:1"}, timeout=180)
        body = answer.json()
        assert body["success"] is False and body["error_code"] == "ui_changed", body

        [snap] = gateway.call("GET", f"/api/instances/{instance_id}/snapshots")["snapshots"]
        assert snap["reason"] == "ui_changed" and snap["role"] == "run_button" and snap["url"].startswith(sim_network.aistudio_url)
        container = container_of(engine, gateway.namespace, instance_id)
        listed = container.exec_run(["ls", f"/data/snapshots/{snap['id']}"], user="app")
        assert listed.exit_code == 0 and set(listed.output.decode().split()) == set(snap["files"])

        download = gateway.http.get(f"/api/instances/{instance_id}/snapshots/{snap['id']}")
        assert download.status_code == 200
        assert download.headers["content-type"] == "application/zip" and download.headers["x-content-type-options"] == "nosniff"
        assert download.headers["content-disposition"] == f'attachment; filename="snapshot-{snap["id"]}.zip"'
        archive = zipfile.ZipFile(io.BytesIO(download.content))
        assert archive.read(f"{snap['id']}/screenshot.png")[:8] == b"\x89PNG\r\n\x1a\n"
        assert "run_button" in json.loads(archive.read(f"{snap['id']}/pagecheck.json"))["missing_expected"]
        html = archive.read(f"{snap['id']}/page.html").decode()
        assert "<html" in html.lower() and "textarea" in html

        refused = gateway.http.get(f"/api/instances/{instance_id}/snapshots/not-a-snapshot")
        assert refused.status_code == 422 and refused.json()["error"] == "snapshot_id_invalid"
        missing = gateway.http.get(f"/api/instances/{instance_id}/snapshots/20000101-000000-000-manual")
        assert missing.status_code == 404 and "20000101-000000-000-manual" in missing.json()["message"]
    finally:
        control(sim_network.control_url, "/_sim/reset", {})
        control(sim_network.control_url, "/_sim/config", {"signin_required": False})
