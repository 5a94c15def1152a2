"""The kubernetes runtime against an HTTP stand-in of the Kubernetes API (tests/kube/apiserver.py).

No API server can be installed here: these tests assert the requests the runtime sends (bodies, label
selectors, 404/409 handling), its reading of pod states (image pulls, crash loops, scheduling, evictions), and
its behaviour when the API server is unreachable or forbids the gateway; then the shared protocol checks
(tests/gateway/runtime_contract.py) run with the stand-in playing scheduler and kubelet. Pods that really run
are in tests/e2e/test_kubernetes_e2e.py.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.app import Fleet
from gateway.runtime import build_runtime
from gateway.runtime.base import (
    LABEL_INSTANCE_ID,
    LABEL_MANAGED_BY,
    InstanceSpec,
    Runtime,
    RuntimeState,
    RuntimeUnavailable,
)
from gateway.runtime.kube_objects import (
    ANNOTATION_INSTANCE_ID,
    ANNOTATION_INSTANCE_NAME,
    LABEL_NAMESPACE,
    Names,
    PodTemplate,
    dns_label,
    claim_body,
    pod_body,
    pod_state,
    quantity,
)
from gateway.runtime.kubernetes import ApiPacer, KubernetesRuntime
from tests.gateway import runtime_contract
from tests.gateway.conftest import make_settings, passes_until
from tests.kube.apiserver import FakeApiServer, container_status
from tests.kube.kustomize import render
from tests.polling import await_until

NAMESPACE = "fleet"
DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
IMAGE = "aistudio-fleet-instance:latest"


def granted_by_the_role() -> set[tuple[str, str]]:
    """(verb, resource) the gateway's Role grants (deploy/kubernetes, as an overlay renders it)."""
    role = next(o for o in render(DEPLOY / "overlays" / "production") if o["kind"] == "Role")
    return {(verb, resource) for rule in role["rules"] for resource in rule["resources"] for verb in rule["verbs"]}


@pytest.fixture
async def server() -> AsyncIterator[FakeApiServer]:
    api = FakeApiServer()
    await api.start()
    yield api
    await api.stop()
    # Whatever a test made the runtime do, the Role grants it (a call it lacks would be a 403 in a cluster).
    beyond = api.rbac_calls() - granted_by_the_role()
    assert not beyond, f"the runtime called {sorted(beyond)}, which deploy/kubernetes/base/rbac.yaml does not grant"


@pytest.fixture
def kubeconfig(server: FakeApiServer, tmp_path: Path) -> Path:
    return server.kubeconfig(tmp_path / "kubeconfig", NAMESPACE)


@pytest.fixture
async def runtime(kubeconfig: Path) -> AsyncIterator[KubernetesRuntime]:
    rt = KubernetesRuntime(PodTemplate(image=IMAGE), kubeconfig=kubeconfig, name_prefix="fleet-")
    await rt.setup()
    yield rt
    await rt.close()


def _spec(instance_id: str | None = None, name: str = "实例-1", token: str = "tok-123", **env: str) -> InstanceSpec:
    return InstanceSpec(instance_id or str(uuid.uuid4()), name, token,
                        env={"INSTANCE_API_TOKEN": token, "INSTANCE_AISTUDIO_URL": "http://sim:9000", **env})


def _pod_name(rt: KubernetesRuntime, spec: InstanceSpec) -> str:
    return rt.names.pod(spec.instance_id)


# ---- the Role: exactly what the runtime calls ------------------------------------------------------------


async def test_the_role_grants_exactly_what_the_runtime_calls_in_a_whole_lifecycle(
    runtime: KubernetesRuntime, server: FakeApiServer
) -> None:
    spec = _spec(INSTANCE_PROXY="socks5://user:secret@10.0.0.2:1080")
    await runtime.start(spec)
    await runtime.inspect(spec.instance_id)  # still pending: its Events are read for the start's progress
    server.run_pod(NAMESPACE, _pod_name(runtime, spec))
    assert (await runtime.inspect(spec.instance_id)).phase == "running"
    assert spec.instance_id in await runtime.list_managed()
    server.log(NAMESPACE, _pod_name(runtime, spec)).append("instance ready")
    assert [line async for line in runtime.logs(spec.instance_id, tail=10)] == ["instance ready"]
    await runtime.start(spec)  # already running: read, not made again
    await runtime.stop(spec.instance_id, timeout=0)
    await runtime.start(spec)  # again after a stop: the claim is kept, a new Secret and pod
    await runtime.remove(spec.instance_id, remove_volume=True)
    # No more (the fixture checks that for every test) and no less: a grant nothing uses is a grant too many.
    assert server.rbac_calls() == granted_by_the_role()


async def test_a_secret_made_meanwhile_is_replaced_without_being_read(runtime: KubernetesRuntime, server: FakeApiServer) -> None:
    spec = _spec()
    server.fail_next("POST", "/secrets$", 409, "AlreadyExists", "made by another start")
    await runtime.start(spec)
    assert ("get", "secrets") not in server.rbac_calls()
    assert [r.method for r in server.calls(path="/secrets")] == ["DELETE", "POST", "DELETE", "POST"]
    (secret,) = server.items("secrets", NAMESPACE).values()
    assert base64.b64decode(secret["data"]["token"]).decode() == "tok-123"


# ---- what is sent -------------------------------------------------------------------------------------


async def test_start_sends_a_claim_a_secret_and_a_locked_down_pod(runtime: KubernetesRuntime, server: FakeApiServer) -> None:
    spec = _spec(INSTANCE_PROXY="socks5://user:proxy-secret@10.0.0.2:1080")
    state = await runtime.start(spec)
    assert (state.phase, state.endpoint, state.handle) == ("running", None, f"fleet-{spec.instance_id}")
    assert state.detail.startswith("pending")

    posts = server.calls("POST")
    assert [p.path.rsplit("/", 1)[1] for p in posts] == ["persistentvolumeclaims", "secrets", "pods"]
    claim, secret, pod = (p.body for p in posts)
    labels = {LABEL_MANAGED_BY: "aistudio-fleet", LABEL_NAMESPACE: "fleet", LABEL_INSTANCE_ID: spec.instance_id}
    for body in (claim, secret, pod):
        assert labels.items() <= body["metadata"]["labels"].items()
        assert body["metadata"]["annotations"][ANNOTATION_INSTANCE_NAME] == "实例-1"
        assert "ownerReferences" not in body["metadata"]  # the claim outlives every pod
    assert claim["spec"] == {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    assert secret["stringData"] == {"token": "tok-123", "proxy": "socks5://user:proxy-secret@10.0.0.2:1080"}
    assert "tok-123" not in json.dumps(pod) and "proxy-secret" not in json.dumps(pod)  # in the Secret only

    spec_ = pod["spec"]
    assert spec_["automountServiceAccountToken"] is False
    assert spec_["restartPolicy"] == "Never"
    assert spec_["securityContext"]["runAsNonRoot"] is True and spec_["securityContext"]["runAsUser"] == 10001
    assert spec_["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = spec_["containers"]
    assert container["image"] == IMAGE
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    assert container["resources"]["limits"] == {"cpu": "1000m", "memory": "1Gi"}
    env = {e["name"]: e for e in container["env"]}
    assert env["INSTANCE_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": f"fleet-token-{spec.instance_id}", "key": "token"}
    assert env["INSTANCE_PROXY"]["valueFrom"]["secretKeyRef"] == {"name": f"fleet-token-{spec.instance_id}", "key": "proxy"}
    assert env["INSTANCE_AISTUDIO_URL"]["value"] == "http://sim:9000"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts == {"/data": "data", "/tmp": "tmp", "/home/app": "home", "/dev/shm": "shm"}
    volumes = {v["name"]: v for v in spec_["volumes"]}
    assert volumes["shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "512Mi"}
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": f"fleet-data-{spec.instance_id}"}
    # What the API server stored: the token, base64 as ever.
    stored = server.items("secrets", NAMESPACE)[f"fleet-token-{spec.instance_id}"]
    assert base64.b64decode(stored["data"]["token"]) == b"tok-123"


async def test_a_name_that_is_no_dns_label_becomes_a_safe_pod_name(runtime: KubernetesRuntime, server: FakeApiServer) -> None:
    spec = _spec(instance_id="Legacy_Instance.7/ÜBER", name="账号 7 (备用)")
    state = await runtime.start(spec)
    pod = server.calls("POST", "/pods")[0].body
    name = pod["metadata"]["name"]
    assert name == state.handle and dns_label(name) == name and len(name) <= 63
    assert pod["metadata"]["annotations"][ANNOTATION_INSTANCE_ID] == spec.instance_id
    assert pod["metadata"]["annotations"][ANNOTATION_INSTANCE_NAME] == "账号 7 (备用)"
    assert set(await runtime.list_managed()) == {spec.instance_id}  # found again by its original id
    assert (await runtime.inspect(spec.instance_id)).handle == name
    # Two names that clean up alike still get two pods.
    assert dns_label("a_b") != dns_label("a.b") and dns_label("a_b") != dns_label("a-b")


async def test_one_list_call_with_the_fleet_selector_for_a_pass_over_500(runtime: KubernetesRuntime, server: FakeApiServer) -> None:
    names = Names("fleet-")
    for i in range(500):
        spec = _spec(instance_id=str(uuid.UUID(int=i)))
        server.objects[("pods", NAMESPACE, names.pod(spec.instance_id))] = {**pod_body(names, spec, NAMESPACE, runtime.template),
                                                                            "status": {"phase": "Pending"}}
    other = pod_body(Names("other-"), _spec(), NAMESPACE, runtime.template)  # another gateway's pod, same namespace
    server.objects[("pods", NAMESPACE, other["metadata"]["name"])] = other
    before = len(server.requests)
    found = await runtime.list_managed()
    assert len(found) == 500
    (call,) = server.requests[before:]
    assert (call.method, call.path) == ("GET", f"/api/v1/namespaces/{NAMESPACE}/pods")
    terms = set(call.query["labelSelector"].split(","))
    assert terms == {f"{LABEL_MANAGED_BY}=aistudio-fleet", f"{LABEL_NAMESPACE}=fleet"}


async def test_404_and_409_count_as_done(runtime: KubernetesRuntime, server: FakeApiServer) -> None:
    await runtime.stop("never-made")
    await runtime.remove("never-made", remove_volume=True)
    deleted = {c.path.split("/")[-2] for c in server.calls("DELETE")}
    assert deleted == {"pods", "secrets", "persistentvolumeclaims"}  # each answered 404, none raised

    # Another replica makes the claim between our read and our create: the create answers 409, theirs is used.
    spec = _spec()
    claim = claim_body(runtime.names, spec, NAMESPACE, runtime.template)
    server.objects[("persistentvolumeclaims", NAMESPACE, claim["metadata"]["name"])] = claim
    server.fail_next("GET", r"/persistentvolumeclaims/", 404, "NotFound")
    state = await runtime.start(spec)
    assert state.phase == "running"
    assert [c.method for c in server.calls(path="/persistentvolumeclaims")][-3:] == ["GET", "POST", "GET"]
    server.run_pod(NAMESPACE, _pod_name(runtime, spec))
    before = len(server.requests)
    again = await runtime.start(spec)  # running, from the same spec: one read, nothing else
    assert again.handle == state.handle and again.endpoint == "http://10.0.0.7:8000"
    assert [(c.method, c.path) for c in server.requests[before:]] == [("GET", f"/api/v1/namespaces/{NAMESPACE}/pods/{state.handle}")]


async def test_pod_states_become_phases_with_their_reasons(runtime: KubernetesRuntime, server: FakeApiServer) -> None:
    spec = _spec()
    await runtime.start(spec)
    name = _pod_name(runtime, spec)

    async def seen(status: dict[str, Any]) -> RuntimeState:
        server.set_pod_status(NAMESPACE, name, status)
        return await runtime.inspect(spec.instance_id)

    state = await seen({"phase": "Pending", "containerStatuses": [_waiting("ErrImagePull", 'pull access denied for "nope"')]})
    assert state.phase == "exited" and state.detail == 'ErrImagePull: pull access denied for "nope"'
    state = await seen({"phase": "Pending", "containerStatuses": [_waiting("ImagePullBackOff", 'Back-off pulling image "nope"')]})
    assert state.phase == "exited" and state.detail.startswith("ImagePullBackOff: Back-off pulling image")
    state = await seen({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                                          "message": "0/3 nodes are available: 3 Insufficient memory."}]})
    assert state.phase == "exited" and state.detail == "unschedulable: 0/3 nodes are available: 3 Insufficient memory."
    crash = _waiting("CrashLoopBackOff", "back-off 40s restarting failed container")
    crash["lastState"] = {"terminated": {"exitCode": 3, "reason": "Error"}}
    state = await seen({"phase": "Running", "podIP": "10.0.0.9", "containerStatuses": [crash]})
    assert state.phase == "exited" and state.exit_code == 3 and "CrashLoopBackOff" in state.detail
    state = await seen({"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory."})
    assert state.phase == "exited" and state.detail == "evicted: The node was low on resource: memory."
    state = await seen({"phase": "Failed", "containerStatuses": [container_status({"terminated": {"exitCode": 137, "reason": "OOMKilled"}})]})
    assert (state.phase, state.exit_code, state.detail) == ("exited", 137, "killed: out of memory (raise the memory limit)")
    state = await seen({"phase": "Pending", "containerStatuses": [_waiting("ContainerCreating", "")]})
    assert (state.phase, state.endpoint, state.detail) == ("running", None, "pending: ContainerCreating")
    state = await seen({"phase": "Running", "podIP": "fd00::7", "containerStatuses": [container_status({"running": {}})]})
    assert state.endpoint == "http://[fd00::7]:8000"


def test_an_eviction_in_progress_says_so() -> None:
    pod = {"metadata": {"name": "p", "deletionTimestamp": "2026-01-01T00:00:00Z",
                        "annotations": {ANNOTATION_INSTANCE_ID: "i"}},
           "status": {"phase": "Running", "podIP": "10.0.0.1",
                      "conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
                                      "message": "Eviction API: evicting"}]}}
    state = pod_state(pod)
    assert (state.instance_id, state.phase, state.endpoint) == ("i", "exited", None)
    assert state.detail == "evicted (EvictionByEvictionAPI): Eviction API: evicting"
    del pod["status"]["conditions"]
    assert pod_state(pod).detail == "terminating: the pod is being deleted"


async def test_a_failed_pod_is_replaced_on_start_and_its_claim_kept(runtime: KubernetesRuntime, server: FakeApiServer) -> None:
    spec = _spec()
    first = await runtime.start(spec)
    name = _pod_name(runtime, spec)
    server.set_pod_status(NAMESPACE, name, {"phase": "Failed", "reason": "Evicted", "message": "disk pressure"})
    uid = server.pod(NAMESPACE, name)["metadata"]["uid"]
    again = await runtime.start(spec)
    assert again.handle == first.handle and server.pod(NAMESPACE, name)["metadata"]["uid"] != uid
    delete = [c for c in server.calls("DELETE", f"/pods/{name}")]
    assert delete and delete[0].query.get("gracePeriodSeconds") == "0"  # nothing runs in it any more
    assert len(server.calls("POST", "/persistentvolumeclaims")) == 1  # the claim was there already


async def test_stop_waits_for_a_terminating_pod(runtime: KubernetesRuntime, server: FakeApiServer) -> None:
    spec = _spec()
    await runtime.start(spec)
    name = _pod_name(runtime, spec)
    server.run_pod(NAMESPACE, name)
    server.hold_deletions = True  # the kubelet takes its time to stop the container
    stopping = asyncio.create_task(runtime.stop(spec.instance_id, timeout=7))
    await await_until(lambda: server.pod(NAMESPACE, name)["metadata"].get("deletionTimestamp"), timeout=30,
                      what="the pod marked for deletion")
    assert (await runtime.inspect(spec.instance_id)).detail == "terminating: the pod is being deleted"
    assert not stopping.done()
    assert server.calls("DELETE", f"/pods/{name}")[0].query["gracePeriodSeconds"] == "7"
    server.finish_deletion(NAMESPACE, name)
    await asyncio.wait_for(stopping, 10)
    assert (await runtime.inspect(spec.instance_id)).phase == "missing"
    assert f"fleet-token-{spec.instance_id}" not in server.items("secrets", NAMESPACE)  # the token goes with the pod
    assert f"fleet-data-{spec.instance_id}" in server.items("persistentvolumeclaims", NAMESPACE)


async def test_logs_come_from_the_pod_log_api(runtime: KubernetesRuntime, server: FakeApiServer) -> None:
    spec = _spec()
    await runtime.start(spec)
    name = _pod_name(runtime, spec)
    from gateway.runtime.base import RuntimeError_

    with pytest.raises(RuntimeError_, match="waiting to start"):  # a pod still pulling its image has no log yet
        [line async for line in runtime.logs(spec.instance_id)]
    server.run_pod(NAMESPACE, name)
    for line in ("one", "two", "three"):
        server.log(NAMESPACE, name).append(line)
    assert [line async for line in runtime.logs(spec.instance_id, tail=2)] == ["two", "three"]
    call = server.calls("GET", f"/pods/{name}/log")[-1]
    assert call.query == {"container": "instance", "follow": "false", "tailLines": "2", "timestamps": "false"}

    follower = runtime.logs(spec.instance_id, tail=0, follow=True)
    collected: list[str] = []

    async def drain() -> None:
        async for line in follower:
            collected.append(line)

    task = asyncio.create_task(drain())
    await asyncio.sleep(0.2)  # a sleep: nothing shows when the stream has begun, and with tail=0 a line before is lost
    server.log(NAMESPACE, name).append("followed")
    await await_until(lambda: "followed" in collected, timeout=30, what="the followed line")
    server.set_pod_status(NAMESPACE, name, {"phase": "Succeeded"})  # the stream ends with the container
    await asyncio.wait_for(task, 10)
    assert server.calls("GET", f"/pods/{name}/log")[-1].query["follow"] == "true"


# ---- the API server unreachable, refusing, forbidding ----------------------------------------------------


async def test_an_unreachable_api_server_is_engine_unavailable(server: FakeApiServer, tmp_path: Path) -> None:
    server.url = "http://127.0.0.1:9"  # nothing listens there
    config = server.kubeconfig(tmp_path / "dead", NAMESPACE)
    rt = KubernetesRuntime(PodTemplate(image=IMAGE), kubeconfig=config)
    with pytest.raises(RuntimeUnavailable) as info:
        await rt.setup()
    assert info.value.engine == "kubernetes" and "kubernetes engine unavailable" in str(info.value)
    for call in (rt.inspect("x"), rt.list_managed(), rt.start(_spec()), rt.stop("x")):
        with pytest.raises(RuntimeUnavailable):
            await call
    await rt.close()


async def test_forbidden_and_unauthorized_are_engine_unavailable_with_the_reason(server: FakeApiServer, tmp_path: Path) -> None:
    rt = KubernetesRuntime(PodTemplate(image=IMAGE), kubeconfig=server.kubeconfig(tmp_path / "k", NAMESPACE))
    await rt.setup()
    server.forbidden = 'pods is forbidden: User "system:serviceaccount:fleet:gateway" cannot list resource "pods"'
    with pytest.raises(RuntimeUnavailable) as info:
        await rt.list_managed()
    assert info.value.reason.startswith("forbidden (403): pods is forbidden")
    server.forbidden = None
    assert await rt.list_managed() == {}  # back as soon as the rights are
    await rt.close()

    wrong = KubernetesRuntime(PodTemplate(image=IMAGE), kubeconfig=server.kubeconfig(tmp_path / "w", NAMESPACE, token="stale"))
    with pytest.raises(RuntimeUnavailable, match="unauthorized"):
        await wrong.setup()
    await wrong.close()
    missing = KubernetesRuntime(PodTemplate(image=IMAGE), kubeconfig=tmp_path / "no-such-kubeconfig")
    with pytest.raises(RuntimeUnavailable, match="no usable Kubernetes configuration"):
        await missing.setup()


async def test_a_forbidden_api_server_shows_in_health_and_the_gateway_keeps_serving(
    server: FakeApiServer, kubeconfig: Path, tmp_path: Path, sqlite_url: str
) -> None:
    settings = make_settings(sqlite_url, tmp_path, runtime="kubernetes", kubernetes_kubeconfig=kubeconfig,
                             kubernetes_name_prefix="gw-")
    runtime = build_runtime(settings.engine)
    assert isinstance(runtime, KubernetesRuntime) and runtime.names.prefix == "gw-"
    server.forbidden = "pods is forbidden"
    fleet = await Fleet.open(settings, runtime=runtime, reconcile=False)
    try:
        assert fleet.engine_health.ok is False and "forbidden" in fleet.engine_health.reason
        report = await fleet.reconciler.reconcile_once()
        assert report.engine_ok is False
        view = await fleet.instances.create("first")  # the database side still works
        assert view.instance_id
        server.forbidden = None
        await fleet.reconciler.reconcile_once()
        assert fleet.engine_health.ok is True
    finally:
        await fleet.close()


async def test_an_image_that_cannot_be_pulled_is_an_instance_error_with_the_reason(
    server: FakeApiServer, kubeconfig: Path, tmp_path: Path, sqlite_url: str
) -> None:
    async def pull_fails(pod: dict[str, Any]) -> None:
        server.set_pod_status(pod["metadata"]["namespace"], pod["metadata"]["name"], {
            "phase": "Pending", "containerStatuses": [_waiting("ImagePullBackOff", 'Back-off pulling image "registry.invalid/x"')]})

    server.on_pod_created = pull_fails
    settings = make_settings(sqlite_url, tmp_path, runtime="kubernetes", kubernetes_kubeconfig=kubeconfig, max_restarts=0)
    fleet = await Fleet.open(settings, runtime=build_runtime(settings.engine), reconcile=False)
    try:
        view = await fleet.instances.create("pull")
        await fleet.instances.start(view.instance_id)

        async def errored() -> bool:
            return (await fleet.instances.get(view.instance_id)).status == "error"

        await passes_until(fleet, errored, timeout=20)
        message = (await fleet.instances.get(view.instance_id)).error_message or ""
        assert "ImagePullBackOff" in message and "registry.invalid/x" in message, message
    finally:
        await fleet.close()


# ---- pacing ---------------------------------------------------------------------------------------------


async def test_the_pacer_lets_a_burst_through_then_spaces_calls() -> None:
    now = [100.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(round(seconds, 6))
        now[0] += seconds

    pacer = ApiPacer(rate=10, burst=3, clock=lambda: now[0], sleep=sleep)
    for _ in range(6):
        async with pacer:
            pass
    assert slept == [0.1, 0.1, 0.1]  # three at once, then one per 1/rate
    now[0] += 10  # an idle spell refills the bucket, but never past the burst
    for _ in range(3):
        async with pacer:
            pass
    assert slept == [0.1, 0.1, 0.1]
    async with pacer:
        pass
    assert slept[-1] == 0.1
    with pytest.raises(ValueError):
        ApiPacer(rate=0, burst=1)


def test_quantities_and_settings() -> None:
    assert [quantity(s) for s in ("1g", "512m", "1.5g", "2Gi", "100k")] == ["1Gi", "512Mi", "1536Mi", "2Gi", "100Ki"]
    with pytest.raises(ValueError):
        PodTemplate(image="x", seccomp="Localhost").seccomp_profile()
    assert PodTemplate(image="x", seccomp="Localhost:profiles/aistudio-instance.json").seccomp_profile() == {
        "type": "Localhost", "localhostProfile": "profiles/aistudio-instance.json"}
    assert Names("aistudio-fleet-").namespace_label == "aistudio-fleet"  # a label value cannot end in "-"
    longest = str(uuid.uuid4())
    names = Names("x" * 21)
    assert all(len(n) <= 63 and dns_label(n) == n for n in (names.pod(longest), names.claim(longest), names.secret(longest)))


# ---- the shared protocol checks -------------------------------------------------------------------------


class StandInHarness:
    """The API stand-in as scheduler and kubelet: each pod runs as soon as it is made, at an address of its own."""

    stopped_phases = frozenset({"missing"})  # a stopped instance has no pod; its claim stays

    def __init__(self, server: FakeApiServer, kubeconfig: Path) -> None:
        self.server, self.kubeconfig = server, kubeconfig
        self.run = uuid.uuid4().hex[:4]
        self.runtimes: list[KubernetesRuntime] = []
        self._ips = itertools.count(10)
        server.on_pod_created = self._schedule

    async def _schedule(self, pod: dict[str, Any]) -> None:
        self.server.run_pod(NAMESPACE, pod["metadata"]["name"], ip=f"10.1.0.{next(self._ips)}")

    async def runtime(self, namespace: str) -> Runtime:
        rt = KubernetesRuntime(PodTemplate(image=IMAGE), kubeconfig=self.kubeconfig, name_prefix=f"t{self.run}{namespace}-")
        await rt.setup()
        self.runtimes.append(rt)
        return rt

    async def running(self, runtime: Runtime, instance_id: str) -> RuntimeState:
        return await await_until(lambda: runtime.inspect(instance_id), until=lambda state: state.endpoint, timeout=30,
                                 what="the pod running with an endpoint")

    async def kill(self, runtime: Runtime, instance_id: str) -> None:
        assert isinstance(runtime, KubernetesRuntime)
        self.server.set_pod_status(NAMESPACE, runtime.names.pod(instance_id), {
            "phase": "Failed", "containerStatuses": [container_status({"terminated": {"exitCode": 137, "reason": "Error"}})]})

    async def volume_exists(self, runtime: Runtime, instance_id: str) -> bool:
        assert isinstance(runtime, KubernetesRuntime)
        return runtime.names.claim(instance_id) in self.server.items("persistentvolumeclaims", NAMESPACE)

    async def print_line(self, runtime: Runtime, instance_id: str, line: str) -> None:
        assert isinstance(runtime, KubernetesRuntime)
        self.server.log(NAMESPACE, runtime.names.pod(instance_id)).append(line)

    async def close(self) -> None:
        for rt in self.runtimes:
            await rt.close()


@pytest.mark.parametrize("check", runtime_contract.CONTRACT, ids=lambda c: c.__name__)
async def test_protocol(check: Any, server: FakeApiServer, kubeconfig: Path) -> None:
    harness = StandInHarness(server, kubeconfig)
    try:
        await check(harness)
    finally:
        await harness.close()


def _waiting(reason: str, message: str) -> dict[str, Any]:
    return container_status({"waiting": {"reason": reason, "message": message}})
