"""Shared fixtures: databases. Postgres comes from AISTUDIO_TEST_POSTGRES_URL (an admin URL, e.g.
postgresql+asyncpg://postgres@127.0.0.1:5544/postgres); each test gets a fresh database of its own.
Without it the Postgres cases skip, unless AISTUDIO_REQUIRE_ALL=1 makes them fail."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

POSTGRES_ENV = "AISTUDIO_TEST_POSTGRES_URL"


def require_all() -> bool:
    return os.environ.get("AISTUDIO_REQUIRE_ALL") == "1"


def skip_or_fail(reason: str) -> None:
    """Missing infrastructure: a skip locally, a failure when everything is required (CI)."""
    if require_all():
        pytest.fail(f"{reason} (AISTUDIO_REQUIRE_ALL=1)")
    pytest.skip(reason)


def run_in_thread(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine to completion on its own loop, whatever loop the caller is in."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = asyncio.run(coro)
        except BaseException as exc:  # handed back to the caller below
            result["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


async def _admin_sql(admin_url: str, statement: str) -> None:
    import asyncpg
    from sqlalchemy.engine import make_url

    url = make_url(admin_url)
    connection = await asyncpg.connect(
        host=url.host, port=url.port or 5432, user=url.username, password=url.password, database=url.database
    )
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The SQLAlchemy URL of a new, empty Postgres database, dropped after the test."""
    admin_url = os.environ.get(POSTGRES_ENV)
    if not admin_url:
        skip_or_fail(f"{POSTGRES_ENV} is not set")
    from sqlalchemy.engine import make_url

    name = f"test_{uuid.uuid4().hex[:20]}"
    run_in_thread(_admin_sql(admin_url, f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        run_in_thread(_admin_sql(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{(tmp_path / 'gateway.db').as_posix()}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each database the gateway supports, fresh for the test."""
    return request.getfixturevalue(f"{request.param}_url")
