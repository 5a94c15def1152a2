"""The whole system on the real Docker engine: a network with the simulator container on it, and the gateway
(`python -m gateway`, runtime `docker`) as a subprocess on the host in front of real instance containers.

Used by the end-to-end tests (tests/e2e/conftest.py) and by tests/bench/bench_control_plane_docker.py.
Everything made here carries the prefix `aistudio-e2e-` (containers, volumes, networks; instance
containers also the gateway's namespace label), so cleanup never touches anything else on the engine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx

from gateway.runtime.base import LABEL_INSTANCE_ID, LABEL_MANAGED_BY, MANAGED_BY_VALUE
from gateway.runtime.docker import LABEL_NAMESPACE
from gateway.runtime.egress import FenceTarget, remove_script
from tests.polling import wait_until
from tests.simulator.fixtures import control, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTANCE_IMAGE = os.environ.get("AISTUDIO_INSTANCE_IMAGE", "aistudio-fleet-instance:latest")
SIMULATOR_IMAGE = os.environ.get("AISTUDIO_SIMULATOR_IMAGE", "aistudio-fleet-simulator:latest")
E2E_PREFIX = "aistudio-e2e-"
E2E_LABEL = "io.aistudio-fleet.e2e"  # on what this harness makes itself (networks, the simulator)
STALE_AFTER_S = 1800  # leftovers older than this are from a dead run, not a concurrent one
ADMIN_TOKEN = "e2e-admin-token-0123456789"  # at least 16 characters, or the gateway refuses to start


def engine_problem(*images: str) -> str | None:
    """Why the real engine cannot be used (no engine, an image missing), or None."""
    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any reason means "no engine"
        return f"no Docker engine answers: {exc}"
    try:
        for image in images:
            try:
                client.images.get(image)
            except docker.errors.ImageNotFound:
                return f"image {image} is not built (deploy/build-images.sh)"
    finally:
        client.close()
    return None


def new_namespace(kind: str) -> str:
    """A fresh gateway namespace (container name prefix, at most 27 characters) under the e2e prefix."""
    namespace = f"{E2E_PREFIX}{kind}-{uuid.uuid4().hex[:6]}-"
    assert len(namespace) <= 27, namespace
    return namespace


# ---- engine objects ----------------------------------------------------------------------------------


def fleet_containers(client: docker.DockerClient, namespace: str) -> list[Any]:
    """Every container (any state) a gateway with this namespace owns, by label."""
    filters = {"label": [f"{LABEL_MANAGED_BY}={MANAGED_BY_VALUE}", f"{LABEL_NAMESPACE}={namespace}"]}
    return client.containers.list(all=True, filters=filters, ignore_removed=True)


def fleet_volumes(client: docker.DockerClient, namespace: str) -> list[Any]:
    filters = {"label": [f"{LABEL_MANAGED_BY}={MANAGED_BY_VALUE}", f"{LABEL_NAMESPACE}={namespace}"]}
    return client.volumes.list(filters=filters)


def container_of(client: docker.DockerClient, namespace: str, instance_id: str) -> Any | None:
    found = [c for c in fleet_containers(client, namespace) if c.labels.get(LABEL_INSTANCE_ID) == instance_id]
    assert len(found) <= 1, f"{len(found)} containers for instance {instance_id}"
    return found[0] if found else None


def print_fleet_logs(engine: docker.DockerClient, gateway: Any, *, extra: str = "") -> None:
    """What the gateway and its containers said, printed for a test that failed (like dockerspawner's conftest)."""
    print(f"\n---- gateway log ----\n{gateway.log_tail(150)}{extra}")
    for container in fleet_containers(engine, gateway.namespace):
        print(f"---- {container.name} ({container.status}) ----\n{container.logs(tail=40).decode('utf-8', 'replace')}")


def remove_namespace(client: docker.DockerClient, namespace: str) -> None:
    """Remove a gateway namespace's containers and volumes (the gateway's labels say whose they are)."""
    for container in fleet_containers(client, namespace):
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)
    for volume in fleet_volumes(client, namespace):
        with contextlib.suppress(docker.errors.NotFound):
            volume.remove(force=True)


def remove_stale(client: docker.DockerClient) -> None:
    """Leftovers of earlier runs that died before cleaning up (older than STALE_AFTER_S)."""
    now = time.time()

    def stale(name_or_namespace: str, created: str | None) -> bool:
        if not name_or_namespace.startswith(E2E_PREFIX) or not created:
            return False
        stamp = time.mktime(time.strptime(created[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        return now - stamp > STALE_AFTER_S

    managed = {"label": f"{LABEL_MANAGED_BY}={MANAGED_BY_VALUE}"}
    for c in client.containers.list(all=True, filters=managed, ignore_removed=True):
        if stale(c.labels.get(LABEL_NAMESPACE, ""), c.attrs.get("Created")):
            with contextlib.suppress(docker.errors.APIError):
                c.remove(force=True)
    for v in client.volumes.list(filters=managed):
        if stale((v.attrs.get("Labels") or {}).get(LABEL_NAMESPACE, ""), v.attrs.get("CreatedAt")):
            with contextlib.suppress(docker.errors.APIError):
                v.remove(force=True)
    ours = {"label": E2E_LABEL}
    for c in client.containers.list(all=True, filters=ours, ignore_removed=True):
        if stale(c.name, c.attrs.get("Created")):
            with contextlib.suppress(docker.errors.APIError):
                c.remove(force=True)
    for n in client.networks.list(filters=ours):
        if stale(n.name, n.attrs.get("Created")):
            with contextlib.suppress(docker.errors.APIError):
                n.remove()


def started_at(container: Any) -> str:
    container.reload()
    return container.attrs["State"]["StartedAt"]


# ---- the simulator on a network of its own -----------------------------------------------------------


@dataclass
class SimulatorNetwork:
    network: str  # instances join it (GATEWAY_DOCKER_NETWORK)
    aistudio_url: str  # the simulator as the instances see it, by container name
    control_url: str  # the simulator as this process sees it, on a loopback port


@contextlib.contextmanager
def simulator_network(client: docker.DockerClient, *, signin_required: bool = False) -> Iterator[SimulatorNetwork]:
    """A bridge network with the simulator container on it; `signin_required: false` by default, so an
    instance is logged in as soon as its page loads (no Google account, no session import)."""
    tag = uuid.uuid4().hex[:6]
    labels = {E2E_LABEL: "1"}
    network = client.networks.create(f"{E2E_PREFIX}net-{tag}", driver="bridge", labels=labels)
    sim = None
    try:
        sim = client.containers.run(
            SIMULATOR_IMAGE,
            detach=True,
            name=f"{E2E_PREFIX}sim-{tag}",
            network=network.name,
            labels=labels,
            ports={"9000/tcp": ("127.0.0.1", None)},
        )
        control_url = _published(sim, "9000/tcp")
        wait_until(lambda: _answers(control_url + "/_sim/record"), timeout=30, what="the simulator")
        control(control_url, "/_sim/config", {"signin_required": signin_required})
        yield SimulatorNetwork(network.name, f"http://{sim.name}:9000", control_url)
    finally:
        if sim is not None:
            with contextlib.suppress(docker.errors.NotFound):
                sim.remove(force=True)
        remove_fence(client, network)
        with contextlib.suppress(docker.errors.APIError):
            network.remove()


def remove_fence(client: docker.DockerClient, network: Any) -> None:
    """Delete the egress fence's host rules the gateways wrote for this network (gateway/runtime/egress.py)."""
    target = FenceTarget(network_id=network.id, bridge=f"br-{network.id[:12]}", ipv6=False)
    client.containers.run(INSTANCE_IMAGE, entrypoint=["sh", "-c", remove_script(target)], user="0:0",
                          network_mode="host", cap_drop=["ALL"], cap_add=["NET_ADMIN", "NET_RAW"], remove=True)


def _published(container: Any, port: str) -> str:
    def host_port() -> str | None:
        container.reload()
        bindings = container.ports.get(port)
        return bindings[0]["HostPort"] if bindings else None

    return f"http://127.0.0.1:{wait_until(host_port, timeout=15, what=f'{container.name} to publish {port}')}"


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


# ---- the gateway as a process on the host ------------------------------------------------------------


@dataclass
class GatewayProcess:
    """`python -m gateway` with runtime docker; start, SIGKILL and start again with the same settings."""

    database_url: str
    data_dir: Path
    network: SimulatorNetwork
    namespace: str
    settings: dict[str, str] = field(default_factory=dict)  # extra GATEWAY_* (without the prefix)
    api_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    _http: httpx.Client | None = None

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def environment(self) -> dict[str, str]:
        # A developer's own GATEWAY_* variables must not leak into the gateway under test.
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("GATEWAY_")}
        gateway = {
            "RUNTIME": "docker",
            "DATABASE_URL": self.database_url,
            "DATA_DIR": str(self.data_dir),
            "API_HOST": "127.0.0.1",
            "API_PORT": str(self.api_port),
            "ADMIN_HOST": "127.0.0.1",
            "ADMIN_PORT": str(self.admin_port),
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "INSTANCE_IMAGE": INSTANCE_IMAGE,
            "AISTUDIO_URL": self.network.aistudio_url,
            "SIGNIN_URL": f"{self.network.aistudio_url}/ServiceLogin?continue={{continue}}",
            "DOCKER_NETWORK": self.network.network,
            "DOCKER_NAME_PREFIX": self.namespace,
            "DOCKER_VOLUME_PREFIX": f"{self.namespace}data-",
            **self.settings,
        }
        env.update({f"GATEWAY_{key}": value for key, value in gateway.items()})
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        return env

    def start(self, timeout: float = 60.0) -> float:
        """Start it and wait until both listeners answer; returns the seconds that took."""
        assert self.process is None or self.process.poll() is not None, "already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.log_path is None:
            self.log_path = Path(tempfile.mkstemp(prefix="aistudio-e2e-gateway-", suffix=".log")[1])
        began = time.monotonic()
        with self.log_path.open("ab") as log:
            log.write(f"\n==== gateway start at {time.strftime('%H:%M:%S')}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway"], cwd=REPO_ROOT, env=self.environment(),
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

        def up() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"gateway exited with {self.process.returncode}:\n{self.log_tail()}")
            return _answers(f"{self.api_url}/health") and self._admin_answers()

        wait_until(up, timeout=timeout, what="the gateway to listen", pause=0.05)
        return time.monotonic() - began

    def _admin_answers(self) -> bool:
        try:
            return self.http.get("/api/stats").status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as when the host or the OOM killer takes it."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._http is not None:
            self._http.close()
            self._http = None

    def log_tail(self, lines: int = 80) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    # ---- the management API ----

    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(
                base_url=self.admin_url, timeout=30, trust_env=False,
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Accept-Language": "en"},
            )
        return self._http

    def call(self, method: str, path: str, *, expect: int = 200, **kwargs: Any) -> dict[str, Any]:
        response = self.http.request(method, path, **kwargs)
        assert response.status_code == expect, f"{method} {path}: {response.status_code} {response.text[:500]}"
        return response.json()

    def create(self, name: str) -> str:
        return self.call("POST", "/api/instances", json={"name": name})["instance_id"]

    def instance(self, instance_id: str) -> dict[str, Any]:
        return self.call("GET", f"/api/instances/{instance_id}")["instance"]

    def events(self, instance_id: str) -> list[dict[str, Any]]:
        """Oldest first."""
        return list(reversed(self.call("GET", f"/api/instances/{instance_id}/events?limit=1000")["events"]))

    def event_kinds(self, instance_id: str) -> list[str]:
        return [event["kind"] for event in self.events(instance_id)]

    def wait_running(
        self, instance_id: str, *, timeout: float = 120.0, pause: float = 0.05, fail_on_error: bool = True
    ) -> dict[str, Any]:
        """Until running and logged in; with `fail_on_error`, fails at once when the instance lands in error."""

        def view() -> dict[str, Any]:
            current = self.instance(instance_id)
            if fail_on_error and current["status"] == "error":
                raise AssertionError(f"instance {instance_id} failed: {current['error_message']}\n{self.log_tail()}")
            return current

        return wait_until(view, until=lambda v: (v["status"], v["login_state"]) == ("running", "logged_in"), timeout=timeout,
                          what=f"instance {instance_id} running and logged in", pause=pause)

    def wait_status(self, instance_id: str, status: str, *, timeout: float = 60.0) -> dict[str, Any]:
        return wait_until(lambda: self.instance(instance_id), until=lambda view: view["status"] == status, timeout=timeout,
                          what=f"instance {instance_id} {status}")
