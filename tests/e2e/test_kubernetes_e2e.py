"""The kubernetes runtime with pods that really run: `python -m gateway` (GATEWAY_RUNTIME=kubernetes, a kubeconfig
pointing at the API stand-in of tests/kube) and a kubelet stand-in that runs each pod as a container of the real
instance image on the local Docker engine, beside the simulator container.

A generation goes through the gateway to the pod's address; the panel's logs come from the pod log API, the
screenshot through the instance's HTTP API, as with Docker. Not a cluster: no scheduler, no CNI, no CSI, no
admission (see the README's Kubernetes section for what that leaves untested).
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import docker
import pytest
import requests

from tests.e2e.conftest import FAST_SETTINGS
from tests.e2e.harness import GatewayProcess, SimulatorNetwork, new_namespace
from tests.kube.apiserver import FakeApiServer
from tests.kube.kubelet import LABEL, DockerKubelet, remove_stale
from tests.polling import wait_until

pytestmark = [pytest.mark.docker]

T = TypeVar("T")
NAMESPACE = "aistudio-fleet"
PREFIX = "k8s-e2e-"


class Cluster:
    """The API stand-in and the kubelet on an event loop of their own, in a thread (the test itself blocks)."""

    def __init__(self, engine: docker.DockerClient, network: str) -> None:
        self.run = uuid.uuid4().hex[:6]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="kube-standin")
        self.thread.start()
        self.server = FakeApiServer()
        self.call(self.server.start())
        self.kubelet = DockerKubelet(self.server, engine, network=network, run=self.run)

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=120)

    def read(self, fn: Any) -> Any:
        """Read the stand-in's state on its own loop's thread."""

        async def read() -> Any:
            return fn()

        return self.call(read())

    def close(self) -> None:
        try:
            self.call(self.server.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.kubelet.remove_all()


@pytest.fixture
def cluster(engine: docker.DockerClient, sim_network: SimulatorNetwork) -> Iterator[Cluster]:
    remove_stale(engine)
    made = Cluster(engine, sim_network.network)
    try:
        yield made
    finally:
        made.close()


def test_a_generation_runs_in_a_pod(cluster: Cluster, sim_network: SimulatorNetwork, sqlite_url: str, tmp_path: Path,
                                    engine: docker.DockerClient) -> None:
    kubeconfig = cluster.server.kubeconfig(tmp_path / "kubeconfig", NAMESPACE)
    settings = {**FAST_SETTINGS, "RUNTIME": "kubernetes", "KUBERNETES_KUBECONFIG": str(kubeconfig),
                "KUBERNETES_NAME_PREFIX": PREFIX}
    gateway = GatewayProcess(sqlite_url, tmp_path / "data", sim_network, new_namespace("k8s"), settings=settings)
    try:
        gateway.start()
        instance_id = gateway.create("集群-1")
        gateway.call("POST", f"/api/instances/{instance_id}/start")
        gateway.wait_running(instance_id)

        pod_name = f"{PREFIX}{instance_id}"
        pod = cluster.read(lambda: cluster.server.pod(NAMESPACE, pod_name))
        assert pod["status"]["podIP"].startswith("127.")  # the stand-in's address for the pod
        container = engine.containers.get(cluster.kubelet.container_name(pod_name))
        attrs = container.attrs["HostConfig"]
        assert attrs["ReadonlyRootfs"] is True and attrs["CapDrop"] == ["ALL"]  # Chromium runs so
        assert attrs["ShmSize"] == 512 * 1024**2 and container.attrs["Config"]["User"] == "10001:10001"
        assert "INSTANCE_API_TOKEN=" in " ".join(container.attrs["Config"]["Env"])  # from the Secret

        answer = requests.post(f"{gateway.api_url}/generate", json={"prompt": "a red square", "aspect_ratio": "1:1"},
                               timeout=180)
        body = answer.json()
        assert answer.status_code == 200 and body["success"] is True, body
        assert body["generated_images"] and body["instance"]

        logs = gateway.call("GET", f"/api/instances/{instance_id}/logs?tail=50")["lines"]
        assert any("Uvicorn running" in line or "browser up" in line for line in logs), logs[-10:]
        assert cluster.read(lambda: cluster.server.calls("GET", f"/pods/{pod_name}/log"))
        shot = gateway.http.get(f"/api/instances/{instance_id}/screenshot")
        assert shot.status_code == 200 and shot.content.startswith(b"\x89PNG")

        # One list call per reconcile pass, with the fleet's selector, never a get per instance.
        lists = cluster.read(lambda: [c for c in cluster.server.calls("GET") if c.path.endswith("/pods")])
        assert lists and all("io.aistudio-fleet.managed-by=aistudio-fleet" in c.query["labelSelector"] for c in lists)

        gateway.call("POST", f"/api/instances/{instance_id}/stop")
        gateway.wait_status(instance_id, "stopped", timeout=60)
        wait_until(lambda: cluster.read(lambda: cluster.server.pod(NAMESPACE, pod_name)) is None, timeout=30, what="the pod gone")
        claims = cluster.read(lambda: cluster.server.items("persistentvolumeclaims", NAMESPACE))
        assert f"{PREFIX}data-{instance_id}" in claims  # the login outlives the pod
        assert not engine.containers.list(all=True, filters={"label": [f"{LABEL}={cluster.run}", f"io.kubernetes.pod.name={pod_name}"]})

        gateway.call("DELETE", f"/api/instances/{instance_id}")
        wait_until(lambda: f"{PREFIX}data-{instance_id}" not in cluster.read(
            lambda: cluster.server.items("persistentvolumeclaims", NAMESPACE)), timeout=30, what="the claim deleted")
    except BaseException:
        print(f"\n---- gateway log ----\n{gateway.log_tail(150)}")
        for c in engine.containers.list(all=True, filters={"label": f"{LABEL}={cluster.run}"}):
            print(f"---- {c.name} ({c.status}) ----\n{c.logs(tail=40).decode('utf-8', 'replace')}")
        raise
    finally:
        gateway.stop()
