"""`/livez` and `/readyz` on the generation listener: what the Kubernetes probes and Compose healthchecks ask."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from gateway.app import create_api_app
from gateway.runtime.fake import FakeRuntime
from tests.gateway.conftest import make_settings
from tests.pgserver import postgres_server


async def test_live_and_ready(api: AsyncTestClient[Any]) -> None:
    live = await api.get("/livez")
    assert (live.status_code, live.json()) == (200, {"status": "alive"})
    ready = await api.get("/readyz")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready", "database": "ok", "engine": "ok"})


async def test_not_ready_while_the_engine_is_down_but_alive(sqlite_url: str, tmp_path: Path) -> None:
    fake = FakeRuntime()
    fake.engine_down("dial unix /var/run/docker.sock: connect: permission denied")
    async with AsyncTestClient(create_api_app(make_settings(sqlite_url, tmp_path), runtime=fake)) as api:
        ready = await api.get("/readyz")
        assert ready.status_code == 503
        assert ready.json() == {"status": "not ready", "database": "ok", "engine": "unavailable"}
        assert "docker.sock" not in ready.text  # this port may be public
        assert (await api.get("/livez")).status_code == 200  # a restart would not mend the engine


@pytest.mark.postgres
async def test_not_ready_while_the_database_is_down(tmp_path: Path) -> None:
    with postgres_server() as server:
        name = f"probes_{uuid.uuid4().hex[:8]}"
        server.psql(f'CREATE DATABASE "{name}"')
        url = server.url.rsplit("/", 1)[0] + f"/{name}"
        async with AsyncTestClient(create_api_app(make_settings(url, tmp_path), runtime=FakeRuntime())) as api:
            assert (await api.get("/readyz")).status_code == 200
            server.stop()
            try:
                ready = await api.get("/readyz")
                assert ready.status_code == 503
                assert ready.json()["database"] == "unavailable" and ready.json()["engine"] == "ok"
                assert "5432" not in ready.text and "connect" not in ready.text
                assert (await api.get("/livez")).status_code == 200
            finally:
                server.start()
