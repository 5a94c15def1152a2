"""The shared protocol checks (runtime_contract.py) on the real Docker engine and instance image: the same checks the
kubernetes runtime passes against its API stand-in (test_kubernetes_runtime.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import docker
import docker.errors
import pytest

from gateway.runtime.base import Runtime, RuntimeState
from gateway.runtime.docker import DockerRuntime
from tests.conftest import skip_or_fail
from tests.gateway import runtime_contract
from tests.gateway.http_wait import wait_http
from tests.gateway.test_docker_runtime import IMAGE, NAME_PREFIX, _engine_problem, _remove_ours

pytestmark = pytest.mark.docker


class DockerHarness:
    stopped_phases = frozenset({"exited"})  # the container stays, stopped, until removed

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        self.runtimes: list[DockerRuntime] = []

    async def runtime(self, namespace: str) -> Runtime:
        # Under test_docker_runtime's run prefix, so its cleanup finds whatever a failed check leaves.
        prefix = f"{NAME_PREFIX}c{namespace}-"
        rt = DockerRuntime(None, IMAGE, name_prefix=prefix, volume_prefix=f"{prefix}data-")
        await rt.setup()
        self.runtimes.append(rt)
        return rt

    async def running(self, runtime: Runtime, instance_id: str) -> RuntimeState:
        state = await runtime.inspect(instance_id)
        assert state.endpoint, state
        await wait_http(f"{state.endpoint}/healthz", timeout=60)
        return state

    async def kill(self, runtime: Runtime, instance_id: str) -> None:
        handle = (await runtime.inspect(instance_id)).handle
        await asyncio.to_thread(lambda: self.client.containers.get(handle).kill())

    async def volume_exists(self, runtime: Runtime, instance_id: str) -> bool:
        assert isinstance(runtime, DockerRuntime)
        try:
            await asyncio.to_thread(self.client.volumes.get, runtime.volume_name(instance_id))
            return True
        except docker.errors.NotFound:
            return False

    async def print_line(self, runtime: Runtime, instance_id: str, line: str) -> None:
        handle = (await runtime.inspect(instance_id)).handle
        container = self.client.containers.get(handle)
        code, out = await asyncio.to_thread(container.exec_run, ["sh", "-c", f"echo {line} > /proc/1/fd/1"])
        assert code == 0, out

    async def close(self) -> None:
        for rt in self.runtimes:
            for instance_id in await rt.list_managed():
                await rt.remove(instance_id, remove_volume=True)
            await rt.close()


@pytest.fixture(scope="module")
def client() -> Iterator[docker.DockerClient]:
    problem = _engine_problem()
    if problem:
        skip_or_fail(problem)
    c = docker.from_env(timeout=60)
    yield c
    _remove_ours(c, only_run=True)
    c.close()


@pytest.fixture
async def harness(client: docker.DockerClient) -> AsyncIterator[DockerHarness]:
    made = DockerHarness(client)
    yield made
    await made.close()


@pytest.mark.parametrize("check", runtime_contract.CONTRACT, ids=lambda c: c.__name__)
async def test_protocol(check: Any, harness: DockerHarness) -> None:
    await check(harness)
