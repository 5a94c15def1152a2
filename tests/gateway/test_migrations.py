"""Alembic: the revisions match the models on each database, and the gateway refuses a schema it does not know."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from gateway.app import Fleet
from gateway.db.engine import create_db_engine
from gateway.db.migrate import SchemaMismatch
from gateway.runtime.fake import FakeRuntime
from tests.gateway.conftest import make_settings

REPO = Path(__file__).resolve().parents[2]


def alembic(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The Alembic CLI as an operator runs it, with the URL from the gateway's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["GATEWAY_DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )


def test_upgrade_head_then_check_finds_nothing_to_do(database_url: str) -> None:
    upgrade = alembic(database_url, "upgrade", "head")
    assert upgrade.returncode == 0, upgrade.stderr
    check = alembic(database_url, "check")
    assert check.returncode == 0, check.stderr + check.stdout
    assert "No new upgrade operations detected" in check.stdout + check.stderr
    current = alembic(database_url, "current")
    assert "(head)" in current.stdout


def test_downgrade_to_base_and_back(database_url: str) -> None:
    assert alembic(database_url, "upgrade", "head").returncode == 0
    down = alembic(database_url, "downgrade", "base")
    assert down.returncode == 0, down.stderr
    assert alembic(database_url, "upgrade", "head").returncode == 0


async def test_gateway_refuses_a_schema_newer_than_it_knows(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(database_url, tmp_path)
    fleet = await Fleet.open(settings, runtime=FakeRuntime(), reconcile=False)
    await fleet.close()
    engine = create_db_engine(database_url)
    async with engine.begin() as connection:
        await connection.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    await engine.dispose()
    with pytest.raises(SchemaMismatch, match="9999_from_the_future.*does not know"):
        await Fleet.open(settings, runtime=FakeRuntime(), reconcile=False)


async def test_gateway_without_migrate_on_start_refuses_an_old_schema(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(database_url, tmp_path, migrate_on_start=False)
    with pytest.raises(SchemaMismatch, match="alembic upgrade head"):
        await Fleet.open(settings, runtime=FakeRuntime(), reconcile=False)
    engine = create_db_engine(database_url)
    async with engine.connect() as connection:  # and it created nothing
        tables = await connection.run_sync(lambda c: c.dialect.get_table_names(c))
    await engine.dispose()
    assert "instances" not in tables


async def test_gateways_starting_together_migrate_one_after_the_other(postgres_url: str, tmp_path: Path) -> None:
    """Replicas share a Postgres (SQLite is one process by design)."""
    import asyncio

    settings = make_settings(postgres_url, tmp_path)
    fleets = await asyncio.gather(
        *(Fleet.open(settings, runtime=FakeRuntime(), reconcile=False) for _ in range(3)), return_exceptions=True
    )
    try:
        assert not [f for f in fleets if isinstance(f, BaseException)], fleets
        assert (await fleets[0].instances.create("after-migration")).name == "after-migration"  # type: ignore[union-attr]
    finally:
        for fleet in fleets:
            if isinstance(fleet, Fleet):
                await fleet.close()
