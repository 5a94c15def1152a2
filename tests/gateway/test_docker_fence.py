"""The docker runtime fences its instances: a read-only root file system (tmpfs where Chromium writes) and the
egress fence (gateway/runtime/egress.py: iptables rules on the engine's host). Real engine, real instance image,
on a network of this file's own; the simulator container stands in for the internet (it is AI Studio's URL, so
an opening), a gateway container from the built gateway image (its generation port open, as without API keys)
for the LAN and for the gateway's own container in deploy/compose.yaml, and a listener on the host's side of the
bridge for the host itself."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Iterator

import docker
import docker.errors
import pytest

from gateway.runtime.base import RuntimeError_
from gateway.runtime.docker import DockerRuntime, seccomp_profile
from tests.e2e.harness import SIMULATOR_IMAGE
from tests.gateway.http_wait import wait_http
from tests.gateway.test_docker_runtime import (  # noqa: F401 - `client` is a fixture
    IMAGE,
    NAME_PREFIX,
    READY_TIMEOUT_S,
    RUN,
    TEST_PREFIX,
    VOLUME_PREFIX,
    _exec,
    _spec,
    client,
)

pytestmark = pytest.mark.docker

GATEWAY_IMAGE = os.environ.get("AISTUDIO_GATEWAY_IMAGE", "aistudio-fleet-gateway:latest")
GENERATION_PORT = 8812  # the gateway's public listener, as in deploy/compose.yaml

# From inside an instance: connect to each host:port, print `host:port open` or `host:port refused <error>`.
CONNECT = r"""
import socket, sys
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
        print(target, "open")
    except OSError as e:
        print(target, "refused", type(e).__name__)
"""


class Fenced:
    def __init__(self, network: docker.models.networks.Network, simulator: str, lan: str, host_ip: str, host_port: int):
        self.network, self.simulator, self.lan, self.host_ip, self.host_port = network, simulator, lan, host_ip, host_port


@pytest.fixture(scope="module")
def fenced_network(client: docker.DockerClient) -> Iterator[Fenced]:  # noqa: F811
    """A network with the simulator, a gateway container (no engine: its listeners alone), and a listener on the
    host at the network's gateway address."""
    network = client.networks.create(f"{TEST_PREFIX}net-{RUN}-{uuid.uuid4().hex[:4]}", driver="bridge")
    made = []
    host_listener = None
    try:
        sim = client.containers.run(SIMULATOR_IMAGE, detach=True, name=f"{NAME_PREFIX}sim", network=network.name)
        made.append(sim)
        lan = client.containers.run(
            GATEWAY_IMAGE, detach=True, name=f"{NAME_PREFIX}gateway", network=network.name,
            environment={"GATEWAY_ADMIN_TOKEN": "fence-admin-token-0123456789"})
        made.append(lan)
        network.reload()
        gateway_ip = network.attrs["IPAM"]["Config"][0]["Gateway"]
        host_listener = socket.create_server((gateway_ip, 0))
        threading.Thread(target=_accept_forever, args=(host_listener,), daemon=True).start()
        yield Fenced(network, sim.name, lan.name, gateway_ip, host_listener.getsockname()[1])
    finally:
        if host_listener is not None:
            host_listener.close()
        for container in made:
            container.remove(force=True)
        network.remove()


def _accept_forever(server: socket.socket) -> None:
    while True:
        try:
            server.accept()[0].close()
        except OSError:
            return


@pytest.fixture(params=["on", "off", "allowed"])
async def runtime(client: docker.DockerClient, fenced_network: Fenced, request: pytest.FixtureRequest) -> AsyncIterator[DockerRuntime]:  # noqa: F811
    """`allowed`: fenced, with the operator's opening for the gateway container's generation port, by name."""
    allow = (f"{fenced_network.lan}:{GENERATION_PORT}",) if request.param == "allowed" else ()
    rt = DockerRuntime(fenced_network.network.name, IMAGE, name_prefix=NAME_PREFIX, volume_prefix=VOLUME_PREFIX,
                       connect_mode="host", seccomp_profile=seccomp_profile("sandbox"),
                       egress="off" if request.param == "off" else "on", egress_allow=allow)
    # As deploy/compose.yaml runs it, the gateway is a container on the instance network: here the gateway
    # container of the fixture stands for this runtime's own (found by the runtime itself in Compose).
    gateway = client.containers.get(fenced_network.lan)
    rt._own_addresses = [gateway.attrs["NetworkSettings"]["Networks"][fenced_network.network.name]["IPAddress"]]
    await rt.setup()
    try:
        yield rt
    finally:
        if rt.egress != "off":
            await rt.remove_fence()
        await rt.close()


async def _until(check, timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "the gateway container did not listen"
        await asyncio.sleep(0.5)


async def _started(runtime: DockerRuntime, client: docker.DockerClient, fenced: Fenced):  # noqa: F811
    spec = _spec()
    spec.env["INSTANCE_AISTUDIO_URL"] = f"http://{fenced.simulator}:9000"
    state = await runtime.start(spec)
    await wait_http(f"{state.endpoint}/status", token=spec.token, timeout=READY_TIMEOUT_S,
                    until=lambda s: s.get("browser") == "up" and s.get("ready"))
    return spec, client.containers.get(state.handle)


@pytest.mark.parametrize("runtime", ["on"], indirect=True)
async def test_the_instance_root_is_read_only_and_chromium_still_runs(runtime: DockerRuntime, client, fenced_network: Fenced) -> None:  # noqa: F811
    spec, container = await _started(runtime, client, fenced_network)
    try:
        assert container.attrs["HostConfig"]["ReadonlyRootfs"] is True
        assert set(container.attrs["HostConfig"]["Tmpfs"]) == {"/tmp", "/home/app"}
        code, out = container.exec_run(["sh", "-c", "touch /usr/evil"])
        assert code != 0 and b"Read-only file system" in out, out
        assert _exec(container, "touch /tmp/ok /home/app/ok /data/ok && echo written") == "written"
        shot = await wait_http(f"{(await runtime.inspect(spec.instance_id)).endpoint}/screenshot", token=spec.token)
        assert shot.content.startswith(b"\x89PNG")  # the browser drew AI Studio's page, loaded from the simulator
    finally:
        await runtime.remove(spec.instance_id, remove_volume=True)


async def test_an_instance_reaches_the_internet_but_no_private_address(runtime: DockerRuntime, client, fenced_network: Fenced) -> None:  # noqa: F811
    fenced = fenced_network
    spec, container = await _started(runtime, client, fenced)
    try:
        lan = client.containers.get(f"{NAME_PREFIX}gateway")
        wait_for_listener = f"python -c 'import socket; socket.create_connection((\"127.0.0.1\", {GENERATION_PORT}), 5)'"
        await _until(lambda: lan.exec_run(["sh", "-c", wait_for_listener]).exit_code == 0)
        targets = [f"{fenced.simulator}:9000", f"{fenced.lan}:{GENERATION_PORT}",
                   f"{fenced.host_ip}:{fenced.host_port}", "169.254.169.254:80"]
        answers = dict(line.split(" ", 1) for line in
                       _exec(container, f"python -c '{CONNECT}' {' '.join(targets)}").splitlines())
        assert answers[targets[0]] == "open"  # the stand-in for the internet
        if runtime.egress == "on":
            assert runtime.egress_fence() == ("on", "")
            opened = targets[1:2] if runtime._allow else []  # the operator's opening, and nothing else
            assert all(answers[t] == "open" for t in opened), answers
            assert all(answers[t].startswith("refused") for t in targets[1:] if t not in opened), answers
        else:  # without the fence the LAN, the gateway's port and the host all answer
            assert runtime.egress_fence()[0] == "off"
            assert answers[targets[1]] == "open" and answers[targets[2]] == "open", answers
        # The gateway's own container still calls the instance; another container on the network cannot.
        instance = f"{container.attrs['NetworkSettings']['Networks'][fenced.network.name]['IPAddress']}:8000"
        from_gateway = _exec(client.containers.get(fenced.lan), f"python -c '{CONNECT}' {instance}")
        from_simulator = _exec(client.containers.get(fenced.simulator), f"python -c '{CONNECT}' {instance}")
        assert from_gateway == f"{instance} open"
        assert from_simulator.split()[1] == ("open" if runtime.egress == "off" else "refused"), from_simulator
    finally:
        await runtime.remove(spec.instance_id, remove_volume=True)


async def test_a_fence_that_cannot_be_written_is_reported_and_on_refuses_to_start_unfenced(client) -> None:  # noqa: F811
    """On Docker's default bridge (shared with other containers) there is no fence: `auto` says so and starts,
    `on` refuses, and neither writes a rule."""
    for mode in ("on", "auto"):
        runtime = DockerRuntime(None, IMAGE, name_prefix=NAME_PREFIX, volume_prefix=VOLUME_PREFIX, egress=mode)
        await runtime.setup()
        spec = _spec()
        try:
            state, why = runtime.egress_fence()
            assert state == "unavailable" and "GATEWAY_DOCKER_NETWORK" in why
            assert runtime.security_warnings() == [f"egress fence unavailable: {why}"]
            if mode == "on":
                with pytest.raises(RuntimeError_, match="not started unfenced"):
                    await runtime.start(spec)
                assert (await runtime.inspect(spec.instance_id)).phase == "missing"
            else:
                assert (await runtime.start(spec)).phase == "running"
        finally:
            await runtime.remove(spec.instance_id, remove_volume=True)
            await runtime.close()
