"""A proxy on this machine's loopback, relayed to the instance containers (docker runtime, real engine and image):
the relay container (host network, fleet labels) listens on the network's gateway address, is shared per port,
serves only the fleet network's subnets, and goes when no running instance uses it. The relay script alone is
checked in-process too."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import uuid
from collections.abc import AsyncIterator, Iterator

import docker
import docker.errors
import pytest

from gateway.runtime.base import LABEL_MANAGED_BY, MANAGED_BY_VALUE, InstanceSpec, RuntimeError_
from gateway.runtime.docker import LABEL_NAMESPACE, LABEL_RELAY_PORT, LABEL_ROLE, ROLE_RELAY, DockerRuntime, engine_is_local
from gateway.runtime.loopback_relay import _own_address, handler, serve
from tests.gateway.test_docker_runtime import IMAGE, _engine_problem
from tests.conftest import skip_or_fail
from tests.ports import free_port
from tests.proxies import ProxyThread

SECRET = "relay-s3cret"


def test_engine_is_local() -> None:
    for url in (None, "", "unix:///var/run/docker.sock", "npipe:////./pipe/docker_engine", "tcp://127.0.0.1:2375",
                "tcp://localhost:2376", "http://[::1]:2375"):
        assert engine_is_local(url), url
    for url in ("tcp://10.0.0.5:2376", "ssh://me@build-host", "tcp://docker.example:2376"):
        assert not engine_is_local(url), url


async def test_the_relay_serves_only_the_allowed_subnets() -> None:
    upstream = await asyncio.start_server(lambda r, w: (w.write(b"hello"), w.close()), "127.0.0.1", 0)
    port = upstream.sockets[0].getsockname()[1]

    async def through(allow: str) -> bytes:
        listen_port = free_port()
        task = asyncio.create_task(serve("127.0.0.1", port, [allow], port=listen_port))
        try:
            for _ in range(100):
                with contextlib.suppress(OSError):
                    reader, writer = await asyncio.open_connection("127.0.0.1", listen_port)
                    break
                await asyncio.sleep(0.02)
            data = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            return data
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    class Peer:
        def __init__(self, address: str) -> None:
            self.address, self.closed = address, False

        def get_extra_info(self, _name: str) -> tuple[str, int]:
            return (self.address, 40000)

        def close(self) -> None:
            self.closed = True

    try:
        assert await through("10.99.0.0/16") == b"hello"  # this host's own address: a process here
        stranger = Peer("192.0.2.123")  # neither on the fleet network nor this host's
        await handler(port, [ipaddress.ip_network("10.99.0.0/16")])(asyncio.StreamReader(), stranger)
        assert stranger.closed and _own_address(ipaddress.ip_address("127.0.0.1"))
        assert not _own_address(ipaddress.ip_address("192.0.2.123"))
    finally:
        upstream.close()


# ---- the real engine ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client() -> Iterator[docker.DockerClient]:
    problem = _engine_problem()
    if problem:
        skip_or_fail(problem)
    c = docker.from_env(timeout=60)
    yield c
    c.close()


@pytest.fixture
async def runtime(client: docker.DockerClient) -> AsyncIterator[DockerRuntime]:
    prefix = f"aistudio-fleet-rl-{uuid.uuid4().hex[:6]}-"
    rt = DockerRuntime(None, IMAGE, name_prefix=prefix, volume_prefix=f"{prefix}data-")
    await rt.setup()
    yield rt
    await rt.close()
    filters = {"label": [f"{LABEL_MANAGED_BY}={MANAGED_BY_VALUE}", f"{LABEL_NAMESPACE}={prefix}"]}
    for c in client.containers.list(all=True, filters=filters, ignore_removed=True):
        with contextlib.suppress(docker.errors.NotFound):
            c.remove(force=True)
    for v in client.volumes.list(filters=filters):
        with contextlib.suppress(docker.errors.APIError):
            v.remove(force=True)


@pytest.fixture
def proxy() -> Iterator[ProxyThread]:
    started = ProxyThread("socks5", username="u", password=SECRET).start()
    yield started
    started.close()


def _relays(client: docker.DockerClient, runtime: DockerRuntime) -> list[docker.models.containers.Container]:
    filters = {"label": [f"{LABEL_NAMESPACE}={runtime.name_prefix}", f"{LABEL_ROLE}={ROLE_RELAY}"]}
    return client.containers.list(all=True, filters=filters)


def bridge_gateway(client: docker.DockerClient) -> str:
    """The default bridge's address on the host. An engine that found docker0 already up may list only the subnet
    (no "Gateway"): the bridge then has the subnet's first address. The container below checks it either way."""
    (config, *_) = client.networks.get("bridge").attrs["IPAM"]["Config"]
    return config.get("Gateway") or str(next(ipaddress.ip_network(config["Subnet"]).hosts()))


async def test_a_loopback_proxy_is_relayed_shared_per_port_and_pruned(
    runtime: DockerRuntime, client: docker.DockerClient, proxy: ProxyThread
) -> None:
    assert runtime.loopback_proxy_problem() is None
    url = proxy.url()
    routed = await runtime.route_proxy(url)
    gateway_ip = bridge_gateway(client)
    assert routed == f"socks5://u:{SECRET}@{gateway_ip}:{proxy.port}"  # credentials kept, as written
    assert await runtime.route_proxy(url.replace("127.0.0.1", "localhost")) == routed  # one relay per port
    assert await runtime.route_proxy("socks5://10.0.0.2:1080") == "socks5://10.0.0.2:1080"  # others untouched
    (relay,) = _relays(client, runtime)
    assert relay.labels[LABEL_RELAY_PORT] == str(proxy.port) and relay.attrs["HostConfig"]["NetworkMode"] == "host"
    assert SECRET not in str(relay.attrs)

    # From a container on the fleet's network, the relay reaches the proxy on the host's loopback (login included).
    script = (
        "import socket; s = socket.create_connection(({!r}, {})); s.sendall(b'\\x05\\x01\\x02'); a = s.recv(2); "
        "s.sendall(b'\\x01\\x01u' + bytes([{}]) + {!r}); print(a.hex(), s.recv(2).hex())"
    ).format(gateway_ip, proxy.port, len(SECRET), SECRET.encode())
    out = client.containers.run(IMAGE, ["python", "-c", script], entrypoint=[], remove=True, network="bridge")
    assert out.decode().split() == ["0502", "0100"]

    # An instance with that proxy gets the relayed URL and the relay's label; the relay goes with its last user.
    spec = InstanceSpec(uuid.uuid4().hex[:12], "relayed", uuid.uuid4().hex, {"INSTANCE_PROXY": url})
    await runtime.start(spec)
    container = client.containers.get(runtime.container_name(spec.instance_id))
    assert f"INSTANCE_PROXY={routed}" in container.attrs["Config"]["Env"]
    assert container.labels[LABEL_RELAY_PORT] == str(proxy.port)
    await runtime.prune_relays()
    assert len(_relays(client, runtime)) == 1  # still in use
    await runtime.stop(spec.instance_id, timeout=2)
    assert _relays(client, runtime) == []
    await runtime.remove(spec.instance_id, remove_volume=True)


async def test_a_remote_engine_cannot_relay_the_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    remote = DockerRuntime(None, IMAGE, docker_host="ssh://me@build-host")
    assert remote.loopback_proxy_problem() == "remote_docker"
    with pytest.raises(RuntimeError_, match="allow LAN"):
        remote._routed("socks5://u:p@127.0.0.1:7890")
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.5:2376")
    assert DockerRuntime(None, IMAGE).loopback_proxy_problem() == "remote_docker"
    await remote.close()
