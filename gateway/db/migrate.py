"""Schema upgrades at gateway start, and the refusal to run against a schema newer than this code."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
MIGRATION_LOCK_KEY = 0x41495347  # distinct from the reconciler's leader lock


class SchemaMismatch(Exception):
    """The database's schema is not one this gateway can run against; the message says what to do."""


def alembic_config(migrations_dir: Path = MIGRATIONS_DIR) -> Config:
    if not (migrations_dir / "env.py").is_file():
        raise SchemaMismatch(f"migration scripts not found in {migrations_dir}")
    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    config.attributes["skip_logging_config"] = True
    return config


async def prepare_schema(
    engine: AsyncEngine, *, upgrade: bool, migrations_dir: Path = MIGRATIONS_DIR, secret_box: Any = None
) -> str:
    """Upgrade to head (when asked) after checking the database is not ahead of us; returns the revision.
    `secret_box` (gateway.db.sealing.SecretBox) seals the secrets of earlier rows (revision 0011); without one,
    Alembic's environment makes it from the settings when there is something to seal."""
    config = alembic_config(migrations_dir)
    if secret_box is not None:
        config.attributes["secret_box"] = secret_box
    async with engine.connect() as connection:
        exclusive = connection.dialect.name == "postgresql"
        if exclusive:
            # Gateways starting together on one Postgres migrate one after the other, not over each other.
            await connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        try:
            current = await connection.run_sync(_check_known, config, upgrade)
            if upgrade:
                await connection.run_sync(_upgrade, config)
                await connection.commit()
                current = await connection.run_sync(_current_heads)
        finally:
            await connection.rollback()
            if exclusive:
                await connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
                await connection.commit()
    return ",".join(sorted(current)) or "base"


def _current_heads(connection: Connection) -> tuple[str, ...]:
    return MigrationContext.configure(connection).get_current_heads()


def _check_known(connection: Connection, config: Config, will_upgrade: bool) -> tuple[str, ...]:
    script = ScriptDirectory.from_config(config)
    current = _current_heads(connection)
    heads = set(script.get_heads())
    for revision in current:
        try:
            known = script.get_revision(revision)
        except CommandError:
            known = None
        if known is None:
            raise SchemaMismatch(
                f"the database is at schema revision {revision!r}, which this gateway does not know "
                f"(its newest is {', '.join(sorted(heads))}): it was upgraded by a newer gateway. "
                "Run that newer gateway, or point GATEWAY_DATABASE_URL at another database."
            )
    if not will_upgrade and set(current) != heads:
        raise SchemaMismatch(
            f"the database is at schema revision {', '.join(current) or 'base (empty)'} but this gateway needs "
            f"{', '.join(sorted(heads))}; run `alembic upgrade head` or set GATEWAY_MIGRATE_ON_START=true."
        )
    return current


def _upgrade(connection: Connection, config: Config) -> None:
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
    log.info("database schema at head")
