"""The docker runtime fences its instances: a read-only root file system (tmpfs where Chromium writes) and the
egress fence (gateway/runtime/egress.py: iptables rules on the engine's host). Real engine, real instance image,
on a network of this file's own; the simulator container stands in for the internet (it is AI Studio's URL, so
an opening), another container on the network for the LAN and for the gateway's container with its generation
port, and a listener on the host's side of the bridge for the host itself."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import AsyncIterator, Iterator

import docker
import docker.errors
import pytest

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
    """A network with the simulator, a container standing for the LAN and the gateway's container (a listener on
    the generation port), and a listener on the host at the network's gateway address."""
    network = client.networks.create(f"{TEST_PREFIX}net-{RUN}-{uuid.uuid4().hex[:4]}", driver="bridge")
    made = []
    host_listener = None
    try:
        sim = client.containers.run(SIMULATOR_IMAGE, detach=True, name=f"{NAME_PREFIX}sim", network=network.name)
        made.append(sim)
        lan = client.containers.run(
            IMAGE, ["python", "-m", "http.server", str(GENERATION_PORT)], entrypoint=[], detach=True,
            name=f"{NAME_PREFIX}lan", network=network.name)
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


@pytest.fixture(params=["on", "off"])
async def runtime(client: docker.DockerClient, fenced_network: Fenced, request: pytest.FixtureRequest) -> AsyncIterator[DockerRuntime]:  # noqa: F811
    rt = DockerRuntime(fenced_network.network.name, IMAGE, name_prefix=NAME_PREFIX, volume_prefix=VOLUME_PREFIX,
                       connect_mode="host", seccomp_profile=seccomp_profile("sandbox"), egress=request.param)
    await rt.setup()
    try:
        yield rt
    finally:
        if rt.egress != "off":
            await rt.remove_fence()
        await rt.close()


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
        targets = [f"{fenced.simulator}:9000", f"{fenced.lan}:{GENERATION_PORT}",
                   f"{fenced.host_ip}:{fenced.host_port}", "169.254.169.254:80"]
        answers = dict(line.split(" ", 1) for line in
                       _exec(container, f"python -c '{CONNECT}' {' '.join(targets)}").splitlines())
        assert answers[targets[0]] == "open"  # the stand-in for the internet
        if runtime.egress == "on":
            assert runtime.egress_fence() == ("on", "")
            assert all(answers[t].startswith("refused") for t in targets[1:]), answers
        else:  # without the fence the LAN, the gateway's port and the host all answer
            assert runtime.egress_fence()[0] == "off"
            assert answers[targets[1]] == "open" and answers[targets[2]] == "open", answers
    finally:
        await runtime.remove(spec.instance_id, remove_volume=True)
