"""The docker runtime against the real engine and the real instance image.

Skipped when no engine answers or the image is missing, unless AISTUDIO_REQUIRE_ALL=1 (then they fail).
Every container and volume made here carries this run's own namespace (name prefix) and is removed at
the end; leftovers of earlier runs are removed at the start.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import docker
import docker.errors
import httpx
import pytest

from gateway.runtime.base import (
    LABEL_INSTANCE_ID,
    LABEL_INSTANCE_NAME,
    LABEL_MANAGED_BY,
    MANAGED_BY_VALUE,
    InstanceSpec,
    Runtime,
    RuntimeError_,
    RuntimeUnavailable,
)
from gateway.runtime.docker import LABEL_NAMESPACE, DockerRuntime
from tests.conftest import skip_or_fail
from tests.gateway.http_wait import wait_http
from tests.polling import await_until

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("AISTUDIO_INSTANCE_IMAGE", "aistudio-fleet-instance:latest")
TEST_PREFIX = "aistudio-fleet-rtest-"  # every namespace of this file starts so
RUN = uuid.uuid4().hex[:6]
NAME_PREFIX = f"{TEST_PREFIX}{RUN}-"
VOLUME_PREFIX = f"{TEST_PREFIX}{RUN}-data-"
STALE_AFTER_S = 1800  # leftovers older than this are from a dead run, not a concurrent one
READY_TIMEOUT_S = 90.0


# ---- engine, cleanup, diagnostics ---------------------------------------------------------------------


def _engine_problem() -> str | None:
    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except Exception as e:  # noqa: BLE001
        return f"no Docker engine answers: {e}"
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        return f"image {IMAGE} is not built (deploy/build-images.sh)"
    finally:
        client.close()
    return None


def _remove_ours(client: docker.DockerClient, *, only_run: bool) -> None:
    """Remove this file's containers and volumes: this run's, or stale ones of earlier runs."""
    now = time.time()

    def ours(namespace: str, created: str | None) -> bool:
        if not namespace.startswith(TEST_PREFIX):
            return False
        if namespace.startswith(NAME_PREFIX):
            return True
        if only_run or not created:
            return False
        stamp = time.mktime(time.strptime(created[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        return now - stamp > STALE_AFTER_S

    filters = {"label": f"{LABEL_MANAGED_BY}={MANAGED_BY_VALUE}"}
    for c in client.containers.list(all=True, filters=filters, ignore_removed=True):
        if ours(c.labels.get(LABEL_NAMESPACE, ""), c.attrs.get("Created")):
            try:
                c.remove(force=True)
            except docker.errors.NotFound:
                pass
    for v in client.volumes.list(filters=filters):
        if ours((v.attrs.get("Labels") or {}).get(LABEL_NAMESPACE, ""), v.attrs.get("CreatedAt")):
            try:
                v.remove(force=True)
            except docker.errors.APIError:
                pass
    for n in client.networks.list(names=[f"{TEST_PREFIX}net-"]):
        if n.name.startswith(f"{TEST_PREFIX}net-{RUN}"):
            try:
                n.remove()
            except docker.errors.APIError:
                pass


@pytest.fixture(scope="module")
def client() -> Iterator[docker.DockerClient]:
    problem = _engine_problem()
    if problem:
        skip_or_fail(problem)
    c = docker.from_env(timeout=60)
    _remove_ours(c, only_run=False)
    yield c
    _remove_ours(c, only_run=True)
    c.close()


@pytest.fixture
async def runtime(
    client: docker.DockerClient, request: pytest.FixtureRequest
) -> AsyncIterator[DockerRuntime]:
    rt = DockerRuntime(None, IMAGE, name_prefix=NAME_PREFIX, volume_prefix=VOLUME_PREFIX)
    await rt.setup()
    failed_before = request.session.testsfailed
    yield rt
    if request.session.testsfailed > failed_before:
        _print_logs(client, request)
    await rt.close()


def _print_logs(client: docker.DockerClient, request: pytest.FixtureRequest) -> None:
    """Like dockerspawner's conftest: show what the containers said when a test fails."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    filters = {"label": f"{LABEL_NAMESPACE}={NAME_PREFIX}"}
    for c in client.containers.list(all=True, filters=filters, ignore_removed=True):
        text = c.logs(tail=100).decode("utf-8", "replace")
        message = f"\n---- logs of {c.name} ({c.status}) after {request.node.name} ----\n{text}"
        if reporter is not None:
            reporter.write_line(message)
        else:
            print(message)


def _spec(name: str = "实例-1", token: str | None = None) -> InstanceSpec:
    return InstanceSpec(
        instance_id=uuid.uuid4().hex[:12],
        name=name,
        token=token or uuid.uuid4().hex,
        env={"INSTANCE_LOG_LEVEL": "INFO"},
    )


def _exec(container, command: str) -> str:
    code, out = container.exec_run(["sh", "-c", command])
    assert code == 0, out
    return out.decode().strip()


# ---- tests --------------------------------------------------------------------------------------------


async def test_is_a_runtime(runtime: DockerRuntime) -> None:
    assert isinstance(runtime, Runtime)
    assert runtime.endpoint_mode == "host"  # these tests run on the host


async def test_start_makes_a_locked_down_labelled_container(
    runtime: DockerRuntime, client: docker.DockerClient
) -> None:
    spec = _spec()
    t0 = time.monotonic()
    state = await runtime.start(spec)
    assert state.phase == "running" and state.endpoint and state.handle
    assert state.endpoint.startswith("http://127.0.0.1:")
    await wait_http(f"{state.endpoint}/healthz")
    boot = time.monotonic() - t0
    print(f"start to /healthz: {boot:.2f} s")

    c = client.containers.get(state.handle)
    assert c.name == f"{NAME_PREFIX}{spec.instance_id}"
    assert c.labels[LABEL_MANAGED_BY] == MANAGED_BY_VALUE
    assert c.labels[LABEL_INSTANCE_ID] == spec.instance_id
    assert c.labels[LABEL_INSTANCE_NAME] == spec.name
    host = c.attrs["HostConfig"]
    assert host["Memory"] == 1024**3
    assert host["NanoCpus"] == 1_000_000_000
    assert host["PidsLimit"] == 512
    assert host["ShmSize"] == 512 * 1024**2
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["CapDrop"] == ["ALL"]
    assert host["RestartPolicy"]["Name"] in ("", "no")
    assert host["PortBindings"]["8000/tcp"][0]["HostIp"] == "127.0.0.1"
    assert c.attrs["Config"]["User"] == "10001:10001"
    assert f"INSTANCE_API_TOKEN={spec.token}" in c.attrs["Config"]["Env"]
    mounts = c.attrs["Mounts"]
    assert [(m["Type"], m["Name"], m["Destination"]) for m in mounts] == [
        ("volume", f"{VOLUME_PREFIX}{spec.instance_id}", "/data")
    ]
    assert not any("docker.sock" in (m.get("Source") or "") for m in mounts)
    assert _exec(c, "id -u") == "10001"
    assert _exec(c, "touch /data/written && echo ok") == "ok"  # the volume is the app user's

    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as http:
        assert (await http.get(f"{state.endpoint}/status")).status_code == 401
        bad = await http.get(f"{state.endpoint}/status", headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401
    # Chromium comes up with every capability dropped and no-new-privileges (it runs --no-sandbox).
    status = await wait_http(
        f"{state.endpoint}/status",
        token=spec.token,
        timeout=READY_TIMEOUT_S,
        until=lambda s: s.get("browser") in ("up", "down") and s.get("ready") is not None,
    )
    body = status.json()
    t_ready = time.monotonic() - t0
    print(f"start to /status browser={body['browser']} ready={body['ready']}: {t_ready:.2f} s")
    assert body["browser"] == "up", body
    shot = await wait_http(f"{state.endpoint}/screenshot", token=spec.token)  # and it renders a page
    assert shot.content.startswith(b"\x89PNG")
    procs = _exec(c, "ps -eo comm 2>/dev/null || ls /proc | grep -c '^[0-9]'")
    print("processes:", procs.replace("\n", " "))


async def test_stop_is_idempotent_and_start_reuses_container_and_volume(
    runtime: DockerRuntime, client: docker.DockerClient
) -> None:
    spec = _spec()
    first = await runtime.start(spec)
    await wait_http(f"{first.endpoint}/healthz")
    c = client.containers.get(first.handle)
    _exec(c, "echo kept > /data/marker")

    await runtime.stop(spec.instance_id, timeout=10)
    stopped = await runtime.inspect(spec.instance_id)
    assert stopped.phase == "exited" and stopped.endpoint is None
    await runtime.stop(spec.instance_id)  # stopped already: fine
    await runtime.stop("no-such-instance")  # missing: fine

    again = await runtime.start(spec)
    assert again.phase == "running"
    assert again.handle == first.handle  # the same container, started again
    await wait_http(f"{again.endpoint}/healthz")
    assert _exec(client.containers.get(again.handle), "cat /data/marker") == "kept"
    # Starting a running instance changes nothing.
    assert (await runtime.start(spec)).handle == first.handle
    await runtime.remove(spec.instance_id, remove_volume=True)


async def test_changed_spec_recreates_a_stopped_container_on_the_same_volume(
    runtime: DockerRuntime, client: docker.DockerClient
) -> None:
    spec = _spec()
    first = await runtime.start(spec)
    await wait_http(f"{first.endpoint}/healthz")
    _exec(client.containers.get(first.handle), "echo kept > /data/marker")
    await runtime.stop(spec.instance_id, timeout=5)

    rotated = InstanceSpec(spec.instance_id, spec.name, token="rotated-token", env=spec.env)
    second = await runtime.start(rotated)
    assert second.handle != first.handle
    await wait_http(f"{second.endpoint}/status", token="rotated-token")
    assert _exec(client.containers.get(second.handle), "cat /data/marker") == "kept"
    with pytest.raises(docker.errors.NotFound):
        client.containers.get(first.handle)
    await runtime.remove(spec.instance_id, remove_volume=True)


async def test_remove_with_and_without_volume(runtime: DockerRuntime, client: docker.DockerClient) -> None:
    spec = _spec()
    state = await runtime.start(spec)
    await wait_http(f"{state.endpoint}/healthz")
    _exec(client.containers.get(state.handle), "echo kept > /data/marker")
    volume = f"{VOLUME_PREFIX}{spec.instance_id}"

    await runtime.remove(spec.instance_id, remove_volume=False)  # removes a running container
    assert (await runtime.inspect(spec.instance_id)).phase == "missing"
    assert client.volumes.get(volume)

    state = await runtime.start(spec)  # a new container on the old volume
    await wait_http(f"{state.endpoint}/healthz")
    assert _exec(client.containers.get(state.handle), "cat /data/marker") == "kept"

    await runtime.remove(spec.instance_id, remove_volume=True)
    assert (await runtime.inspect(spec.instance_id)).phase == "missing"
    with pytest.raises(docker.errors.NotFound):
        client.volumes.get(volume)
    await runtime.remove(spec.instance_id, remove_volume=True)  # gone already: fine


async def test_list_managed_finds_its_own_by_label(
    runtime: DockerRuntime, client: docker.DockerClient
) -> None:
    a, b = _spec("a"), _spec("b")
    await asyncio.gather(runtime.start(a), runtime.start(b))
    await runtime.stop(b.instance_id, timeout=2)
    # Another gateway's namespace on the same engine is not ours to adopt or remove.
    other = DockerRuntime(
        None, IMAGE, name_prefix=f"{NAME_PREFIX}other-", volume_prefix=f"{VOLUME_PREFIX}other-"
    )
    c = _spec("c")
    await other.start(c)
    try:
        found = await runtime.list_managed()
        assert found[a.instance_id].phase == "running"
        assert found[a.instance_id].endpoint
        assert found[b.instance_id].phase == "exited"
        assert c.instance_id not in found
        assert set(await other.list_managed()) == {c.instance_id}
    finally:
        await other.remove(c.instance_id, remove_volume=True)
        await other.close()
    for s in (a, b):
        await runtime.remove(s.instance_id, remove_volume=True)
    assert not {a.instance_id, b.instance_id} & set(await runtime.list_managed())


async def test_logs_tail_and_follow(runtime: DockerRuntime, client: docker.DockerClient) -> None:
    spec = _spec()
    state = await runtime.start(spec)
    await wait_http(f"{state.endpoint}/healthz")
    c = client.containers.get(state.handle)
    # The instance logs its own start (browser, page loads) for a moment: let that burst pass first.
    await await_until(lambda: b"login state" in c.logs(), timeout=60,
                      what="the page's first load to end, one way or another (its 'login state' line)")
    await asyncio.sleep(0.5)
    for i in range(5):  # the container's own stdout
        _exec(c, f"echo tail-line-{i} > /proc/1/fd/1")

    lines = [line async for line in runtime.logs(spec.instance_id, tail=3)]
    assert lines == ["tail-line-2", "tail-line-3", "tail-line-4"]

    # Follow: a line written now arrives (after any the instance wrote meanwhile); closing the iterator ends
    # the reading thread.
    follower = runtime.logs(spec.instance_id, tail=1, follow=True)
    assert await asyncio.wait_for(anext(follower), 10) == "tail-line-4"
    _exec(c, "echo followed-line > /proc/1/fd/1")
    assert await asyncio.wait_for(_next_matching(follower, "followed-line"), 10) == "followed-line"
    await follower.aclose()
    await await_until(lambda: [t.name for t in threading.enumerate() if t.name.startswith("docker-logs-")],
                      until=lambda left: not left, timeout=15, what="the log reading threads to end")

    # Follow ends by itself when the container stops.
    follower = runtime.logs(spec.instance_id, tail=0, follow=True)
    collected: list[str] = []

    async def drain() -> None:
        async for line in follower:
            collected.append(line)

    task = asyncio.create_task(drain())
    await asyncio.sleep(0.3)  # a sleep: nothing shows when the follower is attached, and with tail=0 a line before is lost
    _exec(c, "echo last-words > /proc/1/fd/1")
    await runtime.stop(spec.instance_id, timeout=10)
    await asyncio.wait_for(task, 15)
    assert "last-words" in collected

    with pytest.raises(RuntimeError_):
        [line async for line in runtime.logs("no-such-instance")]
    await runtime.remove(spec.instance_id, remove_volume=True)


async def _next_matching(lines: AsyncIterator[str], wanted: str) -> str:
    async for line in lines:
        if line == wanted:
            return line
    raise AssertionError(f"the log ended before {wanted!r}")


async def test_container_killed_from_outside_shows_exited(
    runtime: DockerRuntime, client: docker.DockerClient
) -> None:
    spec = _spec()
    state = await runtime.start(spec)
    client.containers.get(state.handle).kill()
    await await_until(lambda: client.containers.get(state.handle).status, until=lambda status: status == "exited",
                      timeout=15, what="the killed container to show exited")
    seen = await runtime.inspect(spec.instance_id)
    assert seen.phase == "exited"
    assert seen.exit_code == 137
    assert seen.endpoint is None
    assert (await runtime.list_managed())[spec.instance_id].phase == "exited"
    # The reconciler's restart is a plain start.
    again = await runtime.start(spec)
    assert again.phase == "running" and again.handle == state.handle
    await runtime.remove(spec.instance_id, remove_volume=True)


async def test_network_mode_reaches_instances_by_name(client: docker.DockerClient) -> None:
    network = client.networks.create(f"{TEST_PREFIX}net-{RUN}", driver="bridge")
    by_name = DockerRuntime(
        network.name, IMAGE, name_prefix=NAME_PREFIX, volume_prefix=VOLUME_PREFIX, connect_mode="network"
    )
    by_port = DockerRuntime(
        network.name, IMAGE, name_prefix=NAME_PREFIX, volume_prefix=VOLUME_PREFIX, connect_mode="host"
    )
    a, b = _spec("by-name"), _spec("by-port")
    try:
        sa = await by_name.start(a)
        sb = await by_port.start(b)
        assert sa.endpoint == f"http://{NAME_PREFIX}{a.instance_id}:8000"
        assert sb.endpoint.startswith("http://127.0.0.1:")
        ca = client.containers.get(sa.handle)
        assert list(ca.attrs["NetworkSettings"]["Networks"]) == [network.name]
        assert not ca.attrs["HostConfig"].get("PortBindings")  # nothing published
        await wait_http(f"{sb.endpoint}/healthz")
        # A neighbour on the network (as the gateway's own container would be) reaches it by name.
        probe = (
            "import time, urllib.request\n"
            "for _ in range(300):\n"
            "    try:\n"
            f"        print(urllib.request.urlopen('{sa.endpoint}/healthz', timeout=2).read()); break\n"
            "    except OSError: time.sleep(0.1)\n"
        )
        out = client.containers.run(
            IMAGE,
            ["python", "-c", probe],
            network=network.name,
            remove=True,
            labels={LABEL_MANAGED_BY: MANAGED_BY_VALUE, LABEL_NAMESPACE: NAME_PREFIX},
        )
        assert b'"ok"' in out
    finally:
        await by_name.remove(a.instance_id, remove_volume=True)
        await by_port.remove(b.instance_id, remove_volume=True)
        await by_name.close()
        await by_port.close()
        network.remove()


GATEWAY_IN_A_CONTAINER = """
import asyncio, sys, time, urllib.request
from gateway.runtime.base import InstanceSpec
from gateway.runtime.docker import DockerRuntime

async def main(network, other, image, prefix):
    elsewhere = DockerRuntime(other, image, name_prefix=prefix, volume_prefix=prefix + "data-")
    await elsewhere.setup()
    print("mode on another network:", elsewhere.endpoint_mode)
    rt = DockerRuntime(network, image, name_prefix=prefix, volume_prefix=prefix + "data-")
    await rt.setup()
    print("mode on its own network:", rt.endpoint_mode)
    state = await rt.start(InstanceSpec("auto1", "auto", "tok"))
    print("endpoint:", state.endpoint)
    try:
        for _ in range(300):
            try:
                answer = urllib.request.urlopen(state.endpoint + "/healthz", timeout=2).read()
                print("healthz:", answer.decode())
                break
            except OSError:
                time.sleep(0.1)
    finally:
        await rt.remove("auto1", remove_volume=True)

asyncio.run(main(*sys.argv[1:]))
"""


async def test_auto_mode_detects_a_gateway_running_on_the_network(client: docker.DockerClient) -> None:
    """The gateway's own container on the network: instances are reached by name, nothing is
    published. Run with this source tree and the test venv's Docker SDK mounted into a container."""
    import docker as sdk
    import requests

    site = Path(sdk.__file__).parents[1]
    if Path(requests.__file__).parents[1] != site:
        skip_or_fail("the Docker SDK and requests are not in one site-packages folder")
    network = client.networks.create(f"{TEST_PREFIX}net-{RUN}-auto", driver="bridge")
    other = client.networks.create(f"{TEST_PREFIX}net-{RUN}-other", driver="bridge")
    try:
        out = client.containers.run(
            IMAGE,
            ["python", "-c", GATEWAY_IN_A_CONTAINER, network.name, other.name, IMAGE, NAME_PREFIX],
            network=network.name,
            user="0",  # to use the engine's socket
            environment={"PYTHONPATH": f"/src:{site}"},
            volumes={
                str(REPO / "gateway"): {"bind": "/src/gateway", "mode": "ro"},
                str(site): {"bind": str(site), "mode": "ro"},
                "/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"},
            },
            labels={LABEL_MANAGED_BY: MANAGED_BY_VALUE, LABEL_NAMESPACE: NAME_PREFIX},
            remove=True,
            stderr=True,
        ).decode()
    finally:
        network.remove()
        other.remove()
    print(out)
    assert "mode on another network: host" in out
    assert "mode on its own network: network" in out
    assert f"endpoint: http://{NAME_PREFIX}auto1:8000" in out
    assert 'healthz:{"ok":true}' in out.replace(" ", "")


async def test_missing_network_or_image_is_a_clear_error(client: docker.DockerClient) -> None:
    no_net = DockerRuntime(
        f"{TEST_PREFIX}no-such-net", IMAGE, name_prefix=NAME_PREFIX, volume_prefix=VOLUME_PREFIX
    )
    with pytest.raises(RuntimeError_, match="no-such-net"):
        await no_net.start(_spec())
    await no_net.close()
    no_image = DockerRuntime(
        None, "aistudio-fleet-no-such-image:0", name_prefix=NAME_PREFIX, volume_prefix=VOLUME_PREFIX
    )
    with pytest.raises(RuntimeError_, match="no-such-image"):
        await no_image.start(_spec())
    await no_image.close()


@pytest.mark.parametrize("host", ["unix:///tmp/aistudio-fleet-nonexistent.sock", "tcp://127.0.0.1:9"])
async def test_engine_down_is_runtime_unavailable(host: str) -> None:
    rt = DockerRuntime(None, IMAGE, docker_host=host, name_prefix=NAME_PREFIX)
    with pytest.raises(RuntimeUnavailable) as info:
        await rt.setup()
    assert info.value.engine == "docker"
    assert "docker" in str(info.value)
    # The runtime stays usable: every call says the same until the engine answers.
    with pytest.raises(RuntimeUnavailable):
        await rt.inspect("abc")
    with pytest.raises(RuntimeUnavailable):
        await rt.list_managed()
    with pytest.raises(RuntimeUnavailable):
        await rt.start(_spec())
    await rt.close()
