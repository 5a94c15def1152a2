"""Security defaults of the gateway's two listeners: the Host allowlist, the public /health without internal
error text, the admin token's minimum length."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from litestar.testing import AsyncTestClient

from gateway.app import Fleet, create_admin_app, create_api_app
from gateway.runtime.fake import FakeRuntime
from gateway.settings import ADMIN_TOKEN_MIN_LENGTH
from tests.gateway.conftest import make_settings
from tests.gateway.pool import serve as served

Client = httpx.AsyncClient
EN = {"Accept-Language": "en"}


@pytest.fixture
async def open_fleet(database_url: str, tmp_path: Path, fake: FakeRuntime) -> AsyncIterator[Fleet]:
    """A token-less fleet (loopback mode) that answers to loopback names only, and to `fleet.example`."""
    settings = make_settings(database_url, tmp_path, allowed_hosts="Fleet.Example:8443, ,")
    opened = await Fleet.open(settings, runtime=fake, reconcile=False)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def listeners(open_fleet: Fleet) -> AsyncIterator[tuple[Client, Client]]:
    """Both listeners on real uvicorn servers in this loop, sharing one fleet (as `python -m gateway` runs them)."""
    settings = open_fleet.settings
    async with (
        served(create_api_app(settings, fleet=open_fleet)) as api_base,
        served(create_admin_app(settings, fleet=open_fleet)) as admin_base,
        httpx.AsyncClient(base_url=api_base, timeout=30, trust_env=False) as api,
        httpx.AsyncClient(base_url=admin_base, timeout=30, trust_env=False) as admin,
    ):
        yield api, admin


# Addresses need no listing: a rebinding page sends its own name, never an address.
ALLOWED = ["127.0.0.1", "127.0.0.1:8813", "localhost", "LOCALHOST:8812", "localhost.", "[::1]:8813", "[::1]",
           "fleet.example", "fleet.example:80", "10.1.2.3:8812", "[fd00::5]:8813"]
REFUSED = ["evil.example", "evil.example:8813", "127.0.0.1.evil.example", "fleet.example.evil",
           "localhost.evil.example", "sub.fleet.example", "127.0.0.1.nip.io:8813", ""]


async def test_both_listeners_answer_to_loopback_names_and_the_allowed_ones(listeners: tuple[Client, Client]) -> None:
    api, admin = listeners
    for host in ALLOWED:
        assert (await api.get("/health", headers={"Host": host})).status_code == 200, host
        assert (await admin.get("/api/instances", headers={"Host": host})).status_code == 200, host


async def test_a_rebound_name_gets_a_clear_400_and_changes_nothing(
    listeners: tuple[Client, Client], open_fleet: Fleet
) -> None:
    api, admin = listeners
    for host in REFUSED:
        health = await api.get("/health", headers={"Host": host, **EN})
        assert health.status_code == 400 and health.json()["error"] == "host_not_allowed", host
        assert "GATEWAY_ALLOWED_HOSTS" in health.json()["message"]
        # What a rebinding page is after: the accounts' sessions, and changes through the open management API.
        created = await admin.post("/api/instances", json={"name": "rebound"}, headers={"Host": host})
        assert created.status_code == 400 and "GATEWAY_ALLOWED_HOSTS" in created.json()["message"], host
        assert "主机名" in created.json()["message"]  # Chinese by default, like every message
        assert (await admin.get("/api/instances/x/session", headers={"Host": host})).status_code == 400
        assert (await admin.get("/", headers={"Host": host})).status_code == 400  # the panel too
    assert await open_fleet.instances.list() == []


async def test_the_wildcard_lets_any_host_through(database_url: str, tmp_path: Path, fake: FakeRuntime) -> None:
    app = create_api_app(make_settings(database_url, tmp_path, allowed_hosts="*"), runtime=fake)
    async with AsyncTestClient(app) as api:
        assert (await api.get("/health", headers={"Host": "fleet.behind-a-proxy.example"})).status_code == 200


async def websocket_handshake(base: str, path: str, host: str) -> bytes:
    """The status line a WebSocket handshake with this Host gets (a client library would send its own Host)."""
    address = urlsplit(base)
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()


async def test_the_live_view_socket_checks_the_host_too(open_fleet: Fleet) -> None:
    path = "/api/instances/00000000-0000-0000-0000-000000000000/liveview"
    async with served(create_admin_app(open_fleet.settings, fleet=open_fleet)) as base:
        assert (await websocket_handshake(base, path, "evil.example")).startswith(b"HTTP/1.1 403")
        assert (await websocket_handshake(base, path, urlsplit(base).netloc)).startswith(b"HTTP/1.1 101")


async def test_public_health_hides_the_engine_error_the_admin_api_shows_it(
    listeners: tuple[Client, Client], open_fleet: Fleet, fake: FakeRuntime
) -> None:
    api, admin = listeners
    fake.engine_down("connection refused on /var/run/docker.sock")
    await open_fleet.reconciler.reconcile_once()
    health = (await api.get("/health")).json()
    assert health["engine"] == {"name": "fake", "ok": False, "reason": "unavailable", "egress_fence": "off"}
    assert "docker.sock" not in str(health)
    stats = (await admin.get("/api/stats")).json()["stats"]
    assert stats["engine"]["ok"] is False and "docker.sock" in stats["engine"]["reason"]
    fake.engine_up()
    await open_fleet.reconciler.reconcile_once()
    assert (await api.get("/health")).json()["engine"] == {"name": "fake", "ok": True, "reason": "", "egress_fence": "off"}


@pytest.mark.parametrize(
    ("token", "refused"),
    [(None, False), ("", False), ("x" * (ADMIN_TOKEN_MIN_LENGTH - 1), True), ("t0ken", True),
     ("x" * ADMIN_TOKEN_MIN_LENGTH, False)],
)
def test_a_short_admin_token_is_refused(token: str | None, refused: bool, tmp_path: Path) -> None:
    settings = make_settings("sqlite+aiosqlite://", tmp_path, admin_token=token)
    problem = settings.admin_token_problem()
    assert (problem is not None) == refused
    if problem:
        assert "GATEWAY_ADMIN_TOKEN" in problem and str(ADMIN_TOKEN_MIN_LENGTH) in problem


async def test_an_egress_fence_that_cannot_be_written_is_reported(
    listeners: tuple[Client, Client], fake: FakeRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The docker runtime's fence (here the fake's, told it failed): the public /health says `unavailable`
    without the engine's words, the admin API and the panel's overview say why."""
    api, admin = listeners
    why = "no DOCKER-USER chain in the host's iptables"
    monkeypatch.setattr(fake, "egress_fence", lambda: ("unavailable", why), raising=False)
    monkeypatch.setattr(fake, "security_warnings", lambda: [f"egress fence unavailable: {why}"], raising=False)
    assert (await api.get("/health")).json()["engine"]["egress_fence"] == "unavailable"
    assert "DOCKER-USER" not in (await api.get("/health")).text
    stats = (await admin.get("/api/stats")).json()["stats"]["engine"]
    assert stats["egress_fence"] == "unavailable" and stats["warnings"] == [f"egress fence unavailable: {why}"]
    overview = (await admin.get("/", headers=EN)).text
    assert "Instances are less isolated than configured: egress fence unavailable: no DOCKER-USER chain" in overview
