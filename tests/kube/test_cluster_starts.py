"""The kubernetes engine as a cluster runs it, against the HTTP stand-in of the API server (apiserver.py) playing
scheduler and kubelet: a first image pull longer than the start timeout, pull errors and the pod's Events in the
instance's start progress, and the pod spec's liveness probe, memory-backed /dev/shm and placement settings.

The pod that finally runs is served by a small stand-in instance (its /status only) on a loopback address of its
own, port 8000, as tests/kube/kubelet.py publishes real containers.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from fleet_contract import messages as m
from fleet_contract.codes import BrowserState, LoginState, Reach
from gateway.app import Fleet
from gateway.runtime import build_runtime
from gateway.runtime.kube_objects import INSTANCE_PORT
from gateway.runtime.kubernetes import KubernetesRuntime
from tests.gateway.conftest import make_settings
from tests.kube.apiserver import FakeApiServer, container_status
from tests.polling import await_until

NAMESPACE = "fleet"
PULLING = 'Pulling image "registry.example/aistudio-fleet-instance:1.2"'
TOLERATIONS = [{"key": "browsers", "operator": "Exists", "effect": "NoSchedule"},
               {"key": "spot", "operator": "Equal", "value": "yes", "effect": "NoExecute", "tolerationSeconds": 60}]


@pytest.fixture
async def server() -> AsyncIterator[FakeApiServer]:
    api = FakeApiServer()
    await api.start()
    yield api
    await api.stop()


@pytest.fixture
def kubeconfig(server: FakeApiServer, tmp_path: Path) -> Path:
    return server.kubeconfig(tmp_path / "kubeconfig", NAMESPACE)


@pytest.fixture
async def pod_ip() -> AsyncIterator[str]:
    """A stand-in instance that answers /status ready, on a loopback address of its own at the instance port."""
    ip = f"127.{random.randrange(200, 250)}.{random.randrange(1, 250)}.{random.randrange(2, 250)}"

    async def status(_request: web.Request) -> web.Response:
        body = m.encode(m.Status(ready=True, browser=BrowserState.UP, login_state=LoginState.LOGGED_IN,
                                 reach=Reach.REACHABLE, version="stand-in"))
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/status", status)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, ip, INSTANCE_PORT).start()
    try:
        yield ip
    finally:
        await runner.cleanup()


@pytest.fixture
async def fleet(server: FakeApiServer, kubeconfig: Path, tmp_path: Path, sqlite_url: str) -> AsyncIterator[Fleet]:
    """A gateway on the kubernetes engine with a short start timeout (2 s) and a pull allowance of 60 s."""
    settings = make_settings(sqlite_url, tmp_path, runtime="kubernetes", kubernetes_kubeconfig=kubeconfig,
                             start_timeout=2.0, kubernetes_pull_timeout=60.0, max_restarts=0)
    opened = await Fleet.open(settings, runtime=build_runtime(settings.engine), reconcile=True)
    try:
        yield opened
    finally:
        await opened.close()


def pending(reason: str, message: str = "") -> dict[str, Any]:
    """A scheduled pod whose container waits (ContainerCreating while its image is pulled, ErrImagePull, ...)."""
    return {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [container_status({"waiting": {"reason": reason, "message": message}})]}


async def instance(fleet: Fleet, instance_id: str) -> Any:
    return await fleet.instances.get(instance_id)


async def test_a_pull_longer_than_the_start_timeout_shows_its_progress_and_does_not_give_up(
    fleet: Fleet, server: FakeApiServer, pod_ip: str
) -> None:
    async def pulling(pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        server.add_event(NAMESPACE, name, "Scheduled", f"Successfully assigned {NAMESPACE}/{name} to node-7",
                         at="2026-12-07T15:00:00Z")
        server.add_event(NAMESPACE, name, "Pulling", PULLING, at="2026-12-07T15:00:01Z")
        server.set_pod_status(NAMESPACE, name, pending("ContainerCreating"))

    server.on_pod_created = pulling
    view = await fleet.instances.create("first-pull")
    await fleet.instances.start(view.instance_id)

    async def progress() -> str:
        return (await instance(fleet, view.instance_id)).start_progress or ""

    shown = await await_until(progress, until=lambda text: "Pulling" in text, timeout=15, what="the pull in the progress")
    assert shown.startswith("pending: ContainerCreating") and PULLING in shown and "Scheduled" in shown
    # Three start timeouts later the pull still goes on, and the instance still starts: no error, no restart.
    await asyncio.sleep(6)
    during = await instance(fleet, view.instance_id)
    assert (during.status, during.error_message, during.restart_count) == ("starting", None, 0), during
    pod = server.pod(NAMESPACE, fleet.runtime.names.pod(view.instance_id))  # type: ignore[attr-defined]
    server.add_event(NAMESPACE, pod["metadata"]["name"], "Pulled", "Successfully pulled image in 8m1s")
    server.run_pod(NAMESPACE, pod["metadata"]["name"], ip=pod_ip)

    ready = await await_until(lambda: instance(fleet, view.instance_id), until=lambda v: v.status == "running",
                              timeout=15, what="the instance running once its pod runs")
    assert ready.start_progress is None and ready.error_message is None and ready.restart_count == 0
    events = [e.kind for e in (await fleet.instances.events(view.instance_id))]
    assert "gave_up" not in events and "start_failed" not in events


async def test_an_image_pull_error_shows_with_the_pods_events(
    server: FakeApiServer, kubeconfig: Path, tmp_path: Path, sqlite_url: str
) -> None:
    failure = 'Failed to pull image "registry.example/nope:1": not found'

    async def pull_fails(pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        server.add_event(NAMESPACE, name, "Pulling", 'Pulling image "registry.example/nope:1"', at="2026-12-07T15:00:01Z")
        server.add_event(NAMESPACE, name, "Failed", failure, kind="Warning", at="2026-12-07T15:00:02Z")
        server.set_pod_status(NAMESPACE, name, pending("ErrImagePull", "rpc error: not found"))

    server.on_pod_created = pull_fails
    settings = make_settings(sqlite_url, tmp_path, runtime="kubernetes", kubernetes_kubeconfig=kubeconfig, max_restarts=0)
    opened = await Fleet.open(settings, runtime=build_runtime(settings.engine), reconcile=True)
    try:
        view = await opened.instances.create("bad-image")
        await opened.instances.start(view.instance_id)
        failed = await await_until(lambda: instance(opened, view.instance_id), until=lambda v: v.status == "error",
                                   timeout=15, what="the instance in error")
        assert "ErrImagePull: rpc error: not found" in failed.error_message
        assert f"Failed: {failure}" in failed.error_message and failed.start_progress is None
    finally:
        await opened.close()


async def test_a_pod_that_cannot_be_scheduled_yet_shows_why_and_waits(fleet: Fleet, server: FakeApiServer) -> None:
    why = "0/3 nodes are available: 3 node(s) had untolerated taint {browsers: true}."

    async def waiting_for_a_node(pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        server.add_event(NAMESPACE, name, "FailedScheduling", why, kind="Warning", count=4)
        server.set_pod_status(NAMESPACE, name, {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "SchedulingGated", "message": "waiting for a node"}]})

    server.on_pod_created = waiting_for_a_node
    view = await fleet.instances.create("no-node-yet")
    await fleet.instances.start(view.instance_id)
    shown = await await_until(lambda: instance(fleet, view.instance_id), until=lambda v: v.start_progress,
                              timeout=15, what="the scheduling in the progress")
    assert shown.start_progress.startswith("pending: scheduling: waiting for a node")
    assert f"FailedScheduling: {why} (x4)" in shown.start_progress
    await asyncio.sleep(4)  # two start timeouts
    assert (await instance(fleet, view.instance_id)).status == "starting"


async def test_the_pull_allowance_ends_a_start_that_never_runs(
    server: FakeApiServer, kubeconfig: Path, tmp_path: Path, sqlite_url: str
) -> None:
    async def pulling_for_ever(pod: dict[str, Any]) -> None:
        server.add_event(NAMESPACE, pod["metadata"]["name"], "Pulling", PULLING)
        server.set_pod_status(NAMESPACE, pod["metadata"]["name"], pending("ContainerCreating"))

    server.on_pod_created = pulling_for_ever
    settings = make_settings(sqlite_url, tmp_path, runtime="kubernetes", kubernetes_kubeconfig=kubeconfig,
                             start_timeout=1.0, kubernetes_pull_timeout=3.0, max_restarts=0)
    opened = await Fleet.open(settings, runtime=build_runtime(settings.engine), reconcile=True)
    try:
        view = await opened.instances.create("slow-registry")
        await opened.instances.start(view.instance_id)
        failed = await await_until(lambda: instance(opened, view.instance_id), until=lambda v: v.status == "error",
                                   timeout=20, what="the start ended by the pull allowance")
        assert "did not start within 3s" in failed.error_message and PULLING in failed.error_message
    finally:
        await opened.close()


async def test_the_pod_spec_carries_the_probe_the_shm_volume_and_the_placement(
    server: FakeApiServer, kubeconfig: Path, tmp_path: Path, sqlite_url: str
) -> None:
    settings = make_settings(
        sqlite_url, tmp_path, runtime="kubernetes", kubernetes_kubeconfig=kubeconfig,
        kubernetes_node_selector="pool=browsers, topology.kubernetes.io/zone=eu-1a",
        kubernetes_tolerations=json.dumps(TOLERATIONS), kubernetes_priority_class="aistudio-instances",
        instance_shm_size="1g",
    )
    runtime = build_runtime(settings.engine)
    assert isinstance(runtime, KubernetesRuntime)
    opened = await Fleet.open(settings, runtime=runtime, reconcile=True)
    try:
        view = await opened.instances.create("placed")
        await opened.instances.start(view.instance_id)
        await await_until(lambda: server.calls("POST", "/pods"), timeout=15, what="the pod created")
    finally:
        await opened.close()
    spec = server.calls("POST", "/pods")[0].body["spec"]
    container = spec["containers"][0]
    probe = container["livenessProbe"]
    assert probe["httpGet"] == {"path": "/healthz", "port": INSTANCE_PORT}
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 120  # minutes of a busy page never fail it
    shm = next(v for v in spec["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Gi"}
    assert {"name": "shm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert spec["nodeSelector"] == {"pool": "browsers", "topology.kubernetes.io/zone": "eu-1a"}
    assert spec["tolerations"] == TOLERATIONS and spec["priorityClassName"] == "aistudio-instances"


@pytest.mark.parametrize(("setting", "value", "reason"), [
    ("kubernetes_node_selector", "pool", "write label=value"),
    ("kubernetes_node_selector", "pool=a b", "is not a label value"),
    ("kubernetes_tolerations", "{not json", "not JSON"),
    ("kubernetes_tolerations", '{"key": "a"}', "a JSON list"),
    ("kubernetes_tolerations", '[{"key": "a", "operator": "Maybe"}]', "operator must be Equal or Exists"),
    ("kubernetes_tolerations", '[{"key": "a", "effect": "NoSchedul"}]', "effect must be one of"),
    ("kubernetes_tolerations", '[{"key": "a", "tolerationSeconds": 5}]', "NoExecute effect only"),
    ("kubernetes_tolerations", '[{"key": "a", "colour": "red"}]', "unknown field(s) colour"),
    ("kubernetes_priority_class", "High_Priority", "is not a PriorityClass name"),
])
def test_a_placement_setting_that_cannot_work_stops_the_gateway_with_the_reason(
    setting: str, value: str, reason: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError) as refused:
        make_settings("sqlite+aiosqlite:///unused.db", tmp_path, **{setting: value})
    assert f"GATEWAY_{setting.upper()}" in str(refused.value) and reason in str(refused.value)
