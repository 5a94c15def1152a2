"""deploy/compose.yaml + deploy/compose.simulator.yaml brought up for real, as the README tells a newcomer:
Postgres, the gateway in its container (Docker socket mounted), the simulator; an instance created and
started through the management API runs on the fleet network and is logged in. Then deploy/down.sh -v,
and nothing of it is left on the engine.

A project, network, namespace and ports of its own, so a fleet a developer runs on the same engine (the
default `aistudio-fleet` project) is never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import httpx
import pytest

from tests.conftest import skip_or_fail
from tests.e2e.harness import (
    E2E_PREFIX,
    INSTANCE_IMAGE,
    SIMULATOR_IMAGE,
    container_of,
    engine_problem,
    fleet_containers,
    fleet_volumes,
    new_namespace,
    remove_namespace,
)
from tests.instance.harness import require_chromium
from tests.legacy.old_system import EXPIRED, NO_COOKIES, SIGNED_IN, OldInstance, write_old_data, zip_directory
from tests.panel.harness import launch_browser, login, sign_in_through_the_live_view
from tests.polling import wait_until
from tests.simulator.fixtures import control, free_port, signin_field_centres

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
GATEWAY_IMAGE = os.environ.get("AISTUDIO_GATEWAY_IMAGE", "aistudio-fleet-gateway:latest")
POSTGRES_IMAGE = os.environ.get("AISTUDIO_POSTGRES_IMAGE", "aistudio-fleet-postgres:15")
PROJECT_LABEL = "com.docker.compose.project"


def _compose_command() -> list[str] | None:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@dataclass
class ComposeFleet:
    project: str
    namespace: str
    network: str
    env: dict[str, str]
    admin_url: str
    api_url: str
    command: list[str]

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        files = ["-f", str(DEPLOY / "compose.yaml"), "-f", str(DEPLOY / "compose.simulator.yaml")]
        return subprocess.run(
            [*self.command, "--env-file", self.env["FLEET_ENV_FILE"], *files, *args],
            env=self.env, cwd=REPO, capture_output=True, text=True, timeout=timeout,
        )

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail=60").stdout


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeFleet]:
    command = _compose_command()
    if command is None:
        skip_or_fail("neither `docker compose` nor `docker-compose` is installed")
    problem = engine_problem(INSTANCE_IMAGE, SIMULATOR_IMAGE, GATEWAY_IMAGE, POSTGRES_IMAGE)
    if problem:
        skip_or_fail(problem)
    tag = uuid.uuid4().hex[:6]
    env_file = tmp_path_factory.mktemp("compose") / "empty.env"  # a developer's deploy/.env stays out
    env_file.write_text("")
    api_port, admin_port = free_port(), free_port()
    project, namespace, network = (f"{E2E_PREFIX}compose-{tag}", new_namespace("co"), f"{E2E_PREFIX}compose-net-{tag}")
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "FLEET_", "POSTGRES_", "COMPOSE_"))}
    env = {
        **inherited,
        "FLEET_ENV_FILE": str(env_file),
        "COMPOSE_PROJECT_NAME": project,
        "GATEWAY_ADMIN_TOKEN": f"compose-token-{tag}",
        "POSTGRES_PASSWORD": f"pw{tag}",
        "FLEET_NETWORK": network,
        "FLEET_NAMESPACE": namespace,
        "FLEET_API_PORT": str(api_port),
        "FLEET_ADMIN_PORT": str(admin_port),
        "FLEET_SIMULATOR_PORT": str(free_port()),
        "FLEET_GATEWAY_IMAGE": GATEWAY_IMAGE,
        "FLEET_INSTANCE_IMAGE": INSTANCE_IMAGE,
        "FLEET_SIMULATOR_IMAGE": SIMULATOR_IMAGE,
        "FLEET_POSTGRES_IMAGE": POSTGRES_IMAGE,
    }
    fleet = ComposeFleet(
        project, namespace, network, env, f"http://127.0.0.1:{admin_port}", f"http://127.0.0.1:{api_port}", command
    )
    engine = docker.from_env(timeout=60)
    try:
        up = fleet.compose("up", "-d")
        assert up.returncode == 0, up.stdout + up.stderr
        yield fleet
    finally:
        down = subprocess.run(
            ["bash", str(DEPLOY / "down.sh"), "-v"], env=fleet.env, cwd=REPO, capture_output=True, text=True, timeout=300
        )
        if down.returncode != 0:
            print(down.stdout, down.stderr)
        _remove_leftovers(engine, fleet)  # in case down.sh failed: never leave anything behind
        engine.close()
    assert down.returncode == 0, down.stdout + down.stderr


def _project_objects(engine: docker.DockerClient, fleet: ComposeFleet) -> list[str]:
    label = {"label": f"{PROJECT_LABEL}={fleet.project}"}
    return [
        *(f"container {c.name}" for c in engine.containers.list(all=True, filters=label)),
        *(f"volume {v.name}" for v in engine.volumes.list(filters=label)),
        *(f"network {n.name}" for n in engine.networks.list(filters=label)),
        *(f"container {c.name}" for c in fleet_containers(engine, fleet.namespace)),
        *(f"volume {v.name}" for v in fleet_volumes(engine, fleet.namespace)),
    ]


def _remove_leftovers(engine: docker.DockerClient, fleet: ComposeFleet) -> None:
    remove_namespace(engine, fleet.namespace)
    label = {"label": f"{PROJECT_LABEL}={fleet.project}"}
    for container in engine.containers.list(all=True, filters=label):
        container.remove(force=True, v=True)
    for volume in engine.volumes.list(filters=label):
        volume.remove(force=True)
    for network in engine.networks.list(filters=label):
        network.remove()


def _admin(fleet: ComposeFleet) -> httpx.Client:
    token = fleet.env["GATEWAY_ADMIN_TOKEN"]
    return httpx.Client(base_url=fleet.admin_url, timeout=30, trust_env=False,
                        headers={"Authorization": f"Bearer {token}", "Accept-Language": "en"})


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=3, trust_env=False).json().get("database") == "ok"
    except (httpx.HTTPError, ValueError):
        return False


def test_compose_runs_the_fleet_on_postgres_with_the_simulator(fleet: ComposeFleet) -> None:
    engine = docker.from_env(timeout=60)
    try:
        wait_until(lambda: _healthy(f"{fleet.api_url}/health"), timeout=120, what=lambda: f"the gateway\n{fleet.logs()}")
        # The admin listener binds every interface in its container, so the token compose sets is required.
        assert httpx.get(f"{fleet.admin_url}/api/instances", trust_env=False).status_code == 401
        with _admin(fleet) as admin:
            created = admin.post("/api/instances", json={"name": "compose-1"})
            assert created.status_code == 200, created.text
            instance_id = created.json()["instance_id"]
            assert admin.post(f"/api/instances/{instance_id}/start").status_code == 200

            def running() -> dict | None:
                view = admin.get(f"/api/instances/{instance_id}").json()["instance"]
                assert view["status"] != "error", f"{view['error_message']}\n{fleet.logs()}"
                return view if view["status"] == "running" and view["login_state"] == "logged_in" else None

            wait_until(running, timeout=120, what="the instance running and logged in")
            health = httpx.get(f"{fleet.api_url}/health", trust_env=False).json()
            assert health["browser_instances"]["available"] == 1
            assert health["engine"] == {"name": "docker", "ok": True, "reason": "", "egress_fence": "on"}

        instance = container_of(engine, fleet.namespace, instance_id)
        assert instance is not None and instance.status == "running"
        # On the fleet network only, reached by name: nothing of the instance is published on the host.
        assert list(instance.attrs["NetworkSettings"]["Networks"]) == [fleet.network]
        assert not instance.attrs["HostConfig"].get("PortBindings")
        gateway = engine.containers.list(filters={"label": [f"{PROJECT_LABEL}={fleet.project}",
                                                            "com.docker.compose.service=gateway"]})[0]
        top = gateway.top(ps_args="-o pid,uid,args")
        uids = {row[1] for row in top["Processes"]}
        assert uids == {"10002"}, top  # tini and the gateway; root was its entrypoint's only, to join the socket's group
        # Both ports on loopback by default, each by its own variable (FLEET_API_BIND, FLEET_ADMIN_BIND).
        bindings = gateway.attrs["HostConfig"]["PortBindings"]
        assert {port: [b["HostIp"] for b in bound] for port, bound in bindings.items()} == {
            "8812/tcp": ["127.0.0.1"], "8813/tcp": ["127.0.0.1"]}
        # Its service name is an allowed Host (for a neighbour on its network); a foreign name is not.
        fetch = ("import sys, urllib.request, urllib.error\n"
                 "request = urllib.request.Request('http://127.0.0.1:8812/health', headers={'Host': sys.argv[1]})\n"
                 "try: print(urllib.request.urlopen(request, timeout=5).status)\n"
                 "except urllib.error.HTTPError as exc: print(exc.code)")
        for host, status in (("gateway:8812", b"200"), ("evil.example", b"400")):
            answer = gateway.exec_run(["python", "-c", fetch, host], user="gateway")
            assert answer.output.strip() == status, (host, answer.output)
        assert sorted(gateway.attrs["NetworkSettings"]["Networks"]) == sorted([fleet.network, f"{fleet.project}_backend"])
        postgres = engine.containers.list(filters={"label": [f"{PROJECT_LABEL}={fleet.project}",
                                                             "com.docker.compose.service=postgres"]})[0]
        assert fleet.network not in postgres.attrs["NetworkSettings"]["Networks"]  # instances cannot reach it
        # The egress fence: from the instance, the simulator (AI Studio's URL) answers, the gateway's ports do not.
        assert instance.attrs["HostConfig"]["ReadonlyRootfs"] is True
        connect = ("import socket, sys\n"
                   "try: socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close(); print('open')\n"
                   "except OSError: print('refused')")
        for host, port, answer in (("simulator", "9000", b"open"), ("gateway", "8812", b"refused"), ("gateway", "8813", b"refused")):
            reached = instance.exec_run(["python", "-c", connect, host, port])
            assert reached.output.strip() == answer, (host, port, reached.output)
    finally:
        engine.close()


def test_sign_in_through_the_panels_live_view(fleet: ComposeFleet, tmp_path: Path) -> None:
    """What a user of the compose deployment does first: an instance container from the built image, signed in
    to (the simulator's) Google by hand, through the live view that the gateway container relays."""
    require_chromium()
    from playwright.sync_api import expect, sync_playwright

    simulator = f"http://127.0.0.1:{fleet.env['FLEET_SIMULATOR_PORT']}"
    control(simulator, "/_sim/config", {"signin_required": True})
    try:
        with _admin(fleet) as admin, sync_playwright() as playwright:
            browser = launch_browser(playwright)
            centres = signin_field_centres(browser, simulator)
            instance_id = admin.post("/api/instances", json={"name": "compose-live"}).json()["instance_id"]
            assert admin.post(f"/api/instances/{instance_id}/start").status_code == 200
            page = browser.new_context(viewport={"width": 1280, "height": 900}, locale="zh-CN").new_page()
            page.set_default_timeout(30_000)
            login(page, fleet.admin_url, fleet.env["GATEWAY_ADMIN_TOKEN"])
            page.goto(f"{fleet.admin_url}/instances/{instance_id}")
            badge = page.locator("#summary [data-login]")
            expect(badge).to_have_attribute("data-login", "needs_login", timeout=120_000)
            sign_in_through_the_live_view(page, fleet.admin_url, centres, "compose-live")
            expect(badge).to_have_attribute("data-login", "logged_in", timeout=60_000)
            page.screenshot(path=str(tmp_path / "compose-liveview.png"))
            browser.close()
            state = admin.get(f"/api/instances/{instance_id}/session").json()
            assert {c["name"]: c["value"] for c in state["cookies"]}["SID"] == "acct-live"
            assert admin.post(f"/api/instances/{instance_id}/stop").status_code == 200
    finally:
        control(simulator, "/_sim/config", {"signin_required": False})


def test_an_old_deployment_moves_in_with_one_command(fleet: ComposeFleet, tmp_path: Path) -> None:
    """deploy/migrate.sh: `aistudio-fleet migrate` in a one-off container of the gateway image (its entrypoint and
    user), the old data/ directory mounted read-only; the instance containers come up signed in as before."""
    simulator = f"http://127.0.0.1:{fleet.env['FLEET_SIMULATOR_PORT']}"
    wait_until(lambda: _healthy(f"{fleet.api_url}/health"), timeout=120, what=lambda: f"the gateway\n{fleet.logs()}")
    control(simulator, "/_sim/config", {"signin_required": True})
    try:
        old = write_old_data(tmp_path / "data", "http://simulator:9000")  # the instances' name for the simulator

        def migrate(*args: str) -> dict:
            run = subprocess.run(["bash", str(DEPLOY / "migrate.sh"), str(old), *args, "--json"], env=fleet.env, cwd=REPO,
                                 capture_output=True, text=True, timeout=300)
            assert run.returncode == 0, run.stdout + run.stderr
            return json.loads(run.stdout)

        report = migrate("--start")
        assert [i["result"] for i in report["instances"]] == ["created"] * 3 and report["summary"]["started_total"] == 3
        assert len(report["stray_cookie_files"]) == 1
        ids = {i["name"]: i["instance_id"] for i in report["instances"]}
        with _admin(fleet) as admin:
            def state(name: str) -> tuple[str, str]:
                view = admin.get(f"/api/instances/{ids[name]}").json()["instance"]
                assert view["status"] != "error", f"{view['error_message']}\n{fleet.logs()}"
                return view["status"], view["login_state"]

            wait_until(lambda: state(SIGNED_IN.name) == ("running", "logged_in"), timeout=180, what="the migrated account signed in")
            wait_until(lambda: state(EXPIRED.name) == ("running", "needs_login"), timeout=180, what="the expired account running")
            session = admin.get(f"/api/instances/{ids[SIGNED_IN.name]}/session").json()
            assert {c["name"]: c["value"] for c in session["cookies"]}["SID"] == SIGNED_IN.account

        again = migrate("--start")
        assert [i["result"] for i in again["instances"]] == ["skipped"] * 3 and again["summary"]["created"] == 0

        # The CLI inside the running gateway container, as its user, with the token its environment holds.
        engine = docker.from_env(timeout=60)
        try:
            gateway = engine.containers.list(filters={"label": [f"{PROJECT_LABEL}={fleet.project}",
                                                                "com.docker.compose.service=gateway"]})[0]
            listed = gateway.exec_run(["aistudio-fleet", "instances", "ls", "--json"], user="gateway")
            assert listed.exit_code == 0, listed.output
            legacy = {v["name"]: v["legacy_id"] for v in json.loads(listed.output)["instances"] if v["legacy_id"]}
            assert legacy == {SIGNED_IN.name: SIGNED_IN.instance_id, EXPIRED.name: EXPIRED.instance_id,
                              "gamma-one": NO_COOKIES.instance_id}
            for name in ids:
                stopped = gateway.exec_run(["aistudio-fleet", "instances", "stop", name], user="gateway")
                assert stopped.exit_code == 0, stopped.output
        finally:
            engine.close()
    finally:
        control(simulator, "/_sim/config", {"signin_required": False})


PANEL_MOVER = OldInstance("f00dcafe", "账号-panel", "acct-panel")


def test_an_old_deployment_moves_in_through_the_panel(fleet: ComposeFleet, tmp_path: Path) -> None:
    """The panel's "Move in" page in Chromium, the gateway in its container: a zip of an old data/ directory,
    previewed, confirmed, and its account signed in inside an instance container."""
    require_chromium()
    from playwright.sync_api import expect, sync_playwright

    simulator = f"http://127.0.0.1:{fleet.env['FLEET_SIMULATOR_PORT']}"
    control(simulator, "/_sim/config", {"signin_required": True})
    try:
        old = write_old_data(tmp_path / "data", "http://simulator:9000", (PANEL_MOVER,), stray=False)
        archive = tmp_path / "data.zip"
        archive.write_bytes(zip_directory(old))
        with _admin(fleet) as admin, sync_playwright() as playwright:
            browser = launch_browser(playwright)
            page = browser.new_context(viewport={"width": 1280, "height": 900}, locale="zh-CN").new_page()
            page.set_default_timeout(30_000)
            login(page, fleet.admin_url, fleet.env["GATEWAY_ADMIN_TOKEN"])
            page.goto(fleet.admin_url + "/migrate")
            page.set_input_files("[data-migrate-file]", str(archive))
            page.check("[data-migrate-start]")
            page.click("[data-action=migrate-preview]")
            result = page.locator("[data-migrate-result]")
            expect(result.locator("tr[data-result=would_create]")).to_have_count(1)
            page.click("[data-action=migrate-confirm]")
            expect(result.locator("tr[data-result=created]")).to_have_count(1)
            browser.close()

            def migrated() -> dict | None:
                views = admin.get("/api/instances").json()["instances"]
                view = next((v for v in views if v["legacy_id"] == PANEL_MOVER.instance_id), None)
                assert view is None or view["status"] != "error", f"{view}\n{fleet.logs()}"
                return view if view and (view["status"], view["login_state"]) == ("running", "logged_in") else None

            view = wait_until(migrated, timeout=180, what="the account moved in through the panel, signed in")
            assert view["name"] == PANEL_MOVER.name
            session = admin.get(f"/api/instances/{view['instance_id']}/session").json()
            assert {c["name"]: c["value"] for c in session["cookies"]}["SID"] == PANEL_MOVER.account
            assert admin.post(f"/api/instances/{view['instance_id']}/stop").status_code == 200
    finally:
        control(simulator, "/_sim/config", {"signin_required": False})


def test_down_removes_everything(fleet: ComposeFleet) -> None:
    """Runs last in this module: the fixture's own teardown (deploy/down.sh -v) is what it checks."""
    engine = docker.from_env(timeout=60)
    try:
        assert _project_objects(engine, fleet)  # the fleet is up: there is something to remove
        down = subprocess.run(["bash", str(DEPLOY / "down.sh"), "-v"], env=fleet.env, cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        assert down.returncode == 0, down.stdout + down.stderr
        assert _project_objects(engine, fleet) == []
        with pytest.raises(docker.errors.NotFound):
            engine.networks.get(fleet.network)
    finally:
        engine.close()
