"""The runtime protocol's behaviour, written once and run against each engine through a small harness.

Each check takes an `EngineHarness`, which knows how to make a runtime in a namespace of its own and how to do
what only the engine's outside world can do (kill an instance, look at its volume, make it print a line).
A test module runs every check with `@pytest.mark.parametrize("check", CONTRACT)`: see
tests/gateway/test_kubernetes_runtime.py (the API stand-in) and tests/gateway/test_docker_runtime_contract.py (the
real engine).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Protocol

import pytest

from gateway.runtime.base import InstanceSpec, Runtime, RuntimeError_, RuntimeState
from tests.polling import await_until


class EngineHarness(Protocol):
    # Phases a stopped instance may show: Docker keeps an exited container, Kubernetes deletes the pod.
    stopped_phases: frozenset[str]

    async def runtime(self, namespace: str) -> Runtime:
        """A new runtime (set up) whose objects carry `namespace`; closed by the harness at the end."""

    async def running(self, runtime: Runtime, instance_id: str) -> RuntimeState:
        """Wait until the engine runs the instance and gives an endpoint."""

    async def kill(self, runtime: Runtime, instance_id: str) -> None:
        """The instance dies from outside (OOM killer, `docker kill`, a node)."""

    async def volume_exists(self, runtime: Runtime, instance_id: str) -> bool:
        """Whether the instance's /data volume is still there."""

    async def print_line(self, runtime: Runtime, instance_id: str, line: str) -> None:
        """The instance writes one line to its log."""


def new_spec(name: str = "实例-1") -> InstanceSpec:
    return InstanceSpec(uuid.uuid4().hex[:12], name, uuid.uuid4().hex, env={"INSTANCE_LOG_LEVEL": "INFO"})


# ---- the checks ----------------------------------------------------------------------------------------


async def start_is_idempotent(h: EngineHarness) -> None:
    rt = await h.runtime("a")
    assert isinstance(rt, Runtime)
    spec = new_spec()
    first = await rt.start(spec)
    assert first.phase == "running" and first.handle and first.instance_id == spec.instance_id
    running = await h.running(rt, spec.instance_id)
    assert running.endpoint and running.handle == first.handle
    again = await rt.start(spec)  # a running instance: nothing changes
    assert again.handle == first.handle and again.endpoint == running.endpoint
    await rt.remove(spec.instance_id, remove_volume=True)


async def stop_is_idempotent_and_start_again_runs(h: EngineHarness) -> None:
    rt = await h.runtime("a")
    spec = new_spec()
    await rt.start(spec)
    await h.running(rt, spec.instance_id)
    await rt.stop(spec.instance_id, timeout=5)
    stopped = await rt.inspect(spec.instance_id)
    assert stopped.phase in h.stopped_phases and stopped.endpoint is None
    await rt.stop(spec.instance_id)  # stopped already: fine
    await rt.stop("no-such-instance")  # never existed: fine
    assert await h.volume_exists(rt, spec.instance_id)  # a stop keeps the login
    await rt.start(spec)
    assert (await h.running(rt, spec.instance_id)).endpoint
    await rt.remove(spec.instance_id, remove_volume=True)


async def remove_with_and_without_volume(h: EngineHarness) -> None:
    rt = await h.runtime("a")
    spec = new_spec()
    await rt.start(spec)
    await h.running(rt, spec.instance_id)
    await rt.remove(spec.instance_id, remove_volume=False)  # a running instance goes too
    assert (await rt.inspect(spec.instance_id)).phase == "missing"
    assert await h.volume_exists(rt, spec.instance_id)
    await rt.start(spec)  # on the old volume
    await h.running(rt, spec.instance_id)
    await rt.remove(spec.instance_id, remove_volume=True)
    assert (await rt.inspect(spec.instance_id)).phase == "missing"
    assert not await h.volume_exists(rt, spec.instance_id)
    await rt.remove(spec.instance_id, remove_volume=True)  # gone already: fine


async def list_managed_sees_only_its_namespace(h: EngineHarness) -> None:
    ours, theirs = await h.runtime("a"), await h.runtime("b")
    a, b, c = new_spec("a"), new_spec("b"), new_spec("c")
    await asyncio.gather(ours.start(a), ours.start(b), theirs.start(c))
    await h.running(ours, a.instance_id)
    await h.running(ours, b.instance_id)
    await h.kill(ours, b.instance_id)
    found = await ours.list_managed()
    assert set(found) == {a.instance_id, b.instance_id}
    assert found[a.instance_id].phase == "running" and found[a.instance_id].endpoint
    assert found[b.instance_id].phase == "exited"
    assert set(await theirs.list_managed()) == {c.instance_id}
    for rt, spec in ((ours, a), (ours, b), (theirs, c)):
        await rt.remove(spec.instance_id, remove_volume=True)
    assert await ours.list_managed() == {}


async def killed_from_outside_shows_exited_and_restarts(h: EngineHarness) -> None:
    rt = await h.runtime("a")
    spec = new_spec()
    await rt.start(spec)
    await h.running(rt, spec.instance_id)
    await h.kill(rt, spec.instance_id)

    async def exited() -> bool:
        return (await rt.inspect(spec.instance_id)).phase == "exited"

    await await_until(exited, timeout=30, what="the killed instance to show exited")
    seen = await rt.inspect(spec.instance_id)
    assert seen.endpoint is None and seen.exit_code == 137, seen
    again = await rt.start(spec)  # the reconciler's restart is a plain start
    assert again.phase == "running"
    assert (await h.running(rt, spec.instance_id)).endpoint
    await rt.remove(spec.instance_id, remove_volume=True)


async def logs_tail_and_follow(h: EngineHarness) -> None:
    """The instance logs on its own meanwhile (its browser starting): only the lines printed here are compared."""
    rt = await h.runtime("a")
    spec = new_spec()
    await rt.start(spec)
    await h.running(rt, spec.instance_id)
    for i in range(5):
        await h.print_line(rt, spec.instance_id, f"tail-line-{i}")
    printed = [line async for line in rt.logs(spec.instance_id, tail=200) if line.startswith("tail-line-")]
    assert printed == [f"tail-line-{i}" for i in range(5)]  # oldest first
    assert len([line async for line in rt.logs(spec.instance_id, tail=3)]) == 3

    follower = rt.logs(spec.instance_id, tail=1, follow=True)
    await asyncio.wait_for(anext(follower), 10)  # the last line so far: the stream is open
    await h.print_line(rt, spec.instance_id, "followed-line")

    async def followed() -> None:
        async for line in follower:
            if line == "followed-line":
                return

    await asyncio.wait_for(followed(), 10)
    await follower.aclose()
    with pytest.raises(RuntimeError_):
        [line async for line in rt.logs("no-such-instance")]
    await rt.remove(spec.instance_id, remove_volume=True)


CONTRACT = [
    start_is_idempotent,
    stop_is_idempotent_and_start_again_runs,
    remove_with_and_without_volume,
    list_managed_sees_only_its_namespace,
    killed_from_outside_shows_exited_and_restarts,
    logs_tail_and_follow,
]
