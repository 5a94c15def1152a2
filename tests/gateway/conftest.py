"""Gateway fixtures: settings isolated from the environment, the fake runtime, a Fleet, a management client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from gateway.app import Fleet, create_admin_app, create_api_app
from gateway.runtime.fake import FakeRuntime
from gateway.settings import Settings
from tests.polling import await_until


class IsolatedSettings(Settings):
    """Only what the test passes: a developer's GATEWAY_* variables must not leak into tests."""

    @classmethod
    def settings_customise_sources(cls, settings_cls: Any, init_settings: Any, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        return (init_settings,)


FAST = {
    "runtime": "fake",
    "reconcile_interval": 0.05,
    "start_timeout": 2.0,
    "stop_timeout": 0.1,
    "probe_timeout": 0.2,
    "restart_backoff_base": 0.01,
    "restart_backoff_max": 0.05,
    "max_restarts": 2,
    "probe_failures_before_restart": 2,
}


# Gateways sharing one database share its encryption key (as the Kubernetes deployment's Secret gives it to each
# replica); each data folder would otherwise make its own, and the second gateway would refuse to start.
REPLICA_ENCRYPTION_KEY = "cmVwbGljYXMtb2Ytb25lLWRhdGFiYXNlLXNoYXJlLWs="


# Litestar's AsyncTestClient sends `Host: testserver.local`, which the gateway answers only when allowed.
TEST_CLIENT_HOST = "testserver.local"


def make_settings(database_url: str, data_dir: Path, **overrides: Any) -> Settings:
    return IsolatedSettings(
        database_url=database_url, data_dir=data_dir, **{**FAST, "allowed_hosts": TEST_CLIENT_HOST, **overrides}
    )


@pytest.fixture
def fake() -> FakeRuntime:
    return FakeRuntime()


@pytest.fixture
async def fleet(database_url: str, tmp_path: Path, fake: FakeRuntime) -> AsyncIterator[Fleet]:
    """A Fleet whose reconciler does not loop: tests drive passes themselves; on each database."""
    opened = await Fleet.open(make_settings(database_url, tmp_path), runtime=fake, reconcile=False)
    try:
        yield opened
    finally:
        await opened.close()


async def passes_until(
    fleet: Fleet, check: Callable[[], Awaitable[bool]], *, timeout: float = 5.0, pause: float = 0.01
) -> None:
    """Run reconcile passes (and let their actions finish) until `check` holds."""

    async def after_a_pass() -> bool:
        await fleet.reconciler.reconcile_once()
        await fleet.reconciler.drain()
        return await check()

    await await_until(after_a_pass, timeout=timeout, what="the condition after a reconcile pass", pause=pause)


async def status_is(fleet: Fleet, instance_id: str, status: str) -> bool:
    return (await fleet.instances.get(instance_id)).status == status


async def event_kinds(fleet: Fleet, instance_id: str) -> list[str]:
    """Oldest first."""
    return [e.kind for e in reversed(await fleet.instances.events(instance_id, limit=1000))]


@pytest.fixture
async def admin(database_url: str, tmp_path: Path, fake: FakeRuntime) -> AsyncIterator[AsyncTestClient[Any]]:
    """The management API with its own Fleet (reconciler looping fast) on each database."""
    app = create_admin_app(make_settings(database_url, tmp_path), runtime=fake)
    async with AsyncTestClient(app) as client:
        yield client


@pytest.fixture
async def api(database_url: str, tmp_path: Path, fake: FakeRuntime) -> AsyncIterator[AsyncTestClient[Any]]:
    app = create_api_app(make_settings(database_url, tmp_path), runtime=fake)
    async with AsyncTestClient(app) as client:
        yield client
