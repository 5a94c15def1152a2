"""The canary through the built images: a real instance container (its Chromium on the simulator container's page)
signed in, the gateway on the docker runtime. The default model's canary passes its page check and its generation
(one image, the canary's prompt, in the simulator's record); when the simulator's page loses the Run button the
check turns red (the run's step, an instance event, `/metrics`, a page snapshot with reason "canary" downloadable
as a zip); the page back, the check passes again and the event says it recovered."""

from __future__ import annotations

import io
import json
import re
import zipfile
from typing import Any

import httpx

from fleet_contract import catalogue
from gateway.canary import PROMPT
from tests.e2e.harness import GatewayProcess, SimulatorNetwork
from tests.polling import wait_until
from tests.simulator.fixtures import control

CANARY_OK = re.compile(r"^aistudio_canary_ok\{(?P<labels>[^}]*)\} (?P<value>\S+)$", re.MULTILINE)


def _run(gateway: GatewayProcess, model: str, kind: str) -> dict[str, Any]:
    """One canary run now; a run skipped for want of an idle instance (a cooldown just after a task) is tried again."""

    def once() -> dict[str, Any]:
        answer = gateway.call("POST", f"/api/canary/{model}/run?kind={kind}")
        assert answer["success"] is True and answer["model"] == model, answer
        [run] = answer["runs"]
        assert run["kind"] == kind, run
        return run

    return wait_until(once, until=lambda run: run["state"] != "skipped", timeout=60, pause=0.5,
                      what=f"a canary {kind} of {model} that is not skipped")


def _model_view(gateway: GatewayProcess, model: str) -> dict[str, Any]:
    listed = gateway.call("GET", "/api/canary")
    assert listed["success"] is True, listed
    [found] = [m for m in listed["models"] if m["model"] == model]
    return found


def _canary_ok(gateway: GatewayProcess) -> dict[tuple[str, str], float]:
    response = httpx.get(f"{gateway.api_url}/metrics", timeout=30, trust_env=False)
    assert response.status_code == 200, response.text[:500]
    found = {}
    for match in CANARY_OK.finditer(response.text):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
        found[(labels["model"], labels["kind"])] = float(match["value"])
    return found


def _reload_page(gateway: GatewayProcess, instance_id: str) -> None:
    gateway.call("POST", f"/api/instances/{instance_id}/navigate", json={"target": "home"})


def test_the_canary_turns_red_when_the_page_changes_and_green_when_it_comes_back(
    gateway: GatewayProcess, sim_network: SimulatorNetwork
) -> None:
    model = catalogue.load().default_model
    control(sim_network.control_url, "/_sim/reset", {})  # the simulator is shared: its record starts empty here
    control(sim_network.control_url, "/_sim/config", {"signin_required": False})
    instance_id = gateway.create("canary")
    gateway.call("POST", f"/api/instances/{instance_id}/start")
    name = gateway.wait_running(instance_id)["name"]
    try:
        # 1) On, and green: a free page check, then one generation (one image, the canary's prompt).
        assert gateway.call("PUT", f"/api/canary/{model}", json={"enabled": True}) == {
            "success": True, "model": model, "enabled": True}
        assert _model_view(gateway, model)["enabled"] is True

        check = _run(gateway, model, "check")
        assert (check["state"], check["ok"], check["step"], check["instance"]) == ("pass", True, None, name), check
        generation = _run(gateway, model, "generation")
        assert (generation["state"], generation["ok"], generation["instance"]) == ("pass", True, name), generation
        assert generation["task_id"], generation
        [made] = control(sim_network.control_url, "/_sim/record")["generations"]
        assert made["prompt"] == PROMPT and made["model"] == model and made["outcome"] == "ok", made
        assert gateway.call("GET", f"/api/instances/{instance_id}/snapshots")["snapshots"] == []

        # 2) The page loses its Run button: the check is red, and says why, in every place that shows it.
        control(sim_network.control_url, "/_sim/config", {"missing_roles": ["run_button"]})
        _reload_page(gateway, instance_id)
        red = _run(gateway, model, "check")
        assert (red["state"], red["ok"], red["step"], red["instance"]) == ("fail", False, "missing_roles", name), red
        assert "run_button" in red["message"], red

        view = _model_view(gateway, model)
        last_check = view["last"]["check"]
        assert (last_check["state"], last_check["step"]) == ("fail", "missing_roles") and "run_button" in last_check["message"], view
        assert view["last"]["generation"]["state"] == "pass", view
        # Newest first; a run skipped while the instance was not idle (just after the generation) is left out.
        decided = [run["state"] for run in view["history"] if run["kind"] == "check" and run["state"] != "skipped"]
        assert decided == ["fail", "pass"], view["history"]

        failed = [e for e in gateway.events(instance_id) if e["kind"] == "canary_failed"]
        assert len(failed) == 1 and "run_button" in failed[0]["message"], failed
        assert _canary_ok(gateway) == {(model, "check"): 0.0, (model, "generation"): 1.0}

        [snap] = gateway.call("GET", f"/api/instances/{instance_id}/snapshots")["snapshots"]
        assert snap["reason"] == "canary" and snap["url"].startswith(sim_network.aistudio_url), snap
        download = gateway.http.get(f"/api/instances/{instance_id}/snapshots/{snap['id']}")
        assert download.status_code == 200 and download.headers["content-type"] == "application/zip", download.text[:300]
        archive = zipfile.ZipFile(io.BytesIO(download.content))
        assert {f"{snap['id']}/{part}" for part in ("page.html", "screenshot.png", "pagecheck.json")} <= set(archive.namelist())
        assert archive.read(f"{snap['id']}/screenshot.png")[:8] == b"\x89PNG\r\n\x1a\n"
        assert "run_button" in json.loads(archive.read(f"{snap['id']}/pagecheck.json"))["missing_expected"]
        assert "<html" in archive.read(f"{snap['id']}/page.html").decode().lower()

        # 3) The page comes back: green again, and the event says so.
        control(sim_network.control_url, "/_sim/config", {"missing_roles": []})
        _reload_page(gateway, instance_id)
        green = _run(gateway, model, "check")
        assert (green["state"], green["ok"], green["step"]) == ("pass", True, None), green
        assert _model_view(gateway, model)["last"]["check"]["state"] == "pass"
        kinds = [kind for kind in gateway.event_kinds(instance_id) if kind.startswith("canary_")]
        assert kinds == ["canary_failed", "canary_recovered"], kinds
        assert _canary_ok(gateway) == {(model, "check"): 1.0, (model, "generation"): 1.0}
        assert len(control(sim_network.control_url, "/_sim/record")["generations"]) == 1  # checks spend nothing
    finally:
        control(sim_network.control_url, "/_sim/reset", {})
        control(sim_network.control_url, "/_sim/config", {"signin_required": False})
