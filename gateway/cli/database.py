"""`aistudio-fleet db upgrade`: Alembic's upgrade to head, run directly against the gateway's database;
`aistudio-fleet db reseal`: every secret sealed again with the first encryption key (a rotation's second step)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.cli.client import CliError, Unreachable, UsageProblem
from gateway.db.engine import create_db_engine
from gateway.db.migrate import SchemaMismatch, prepare_schema
from gateway.db.outage import database_unreachable
from gateway.db.sealed_rows import reseal_all
from gateway.db.sealing import SecretBox, SecretKeyProblem, attach, box_for
from gateway.settings import Settings

# Not the gateway's own prefix: a gateway counts connections by that name to tell whether others run.
APPLICATION_NAME = "aistudio-fleet-cli"
T = TypeVar("T")


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise UsageProblem(f"the gateway's settings are not valid: {exc}") from None


def upgrade() -> tuple[str, str]:
    """Upgrades the database GATEWAY_DATABASE_URL names; returns its revision and the URL without password."""
    settings = _settings()
    return asyncio.run(_run(settings, lambda engine, box: prepare_schema(engine, upgrade=True, secret_box=box)))


def reseal() -> tuple[int, str]:
    """Seals every secret of the database again with the first key of GATEWAY_ENCRYPTION_KEY(_FILE); returns how
    many values it wrote and the URL without password."""
    settings = _settings()
    return asyncio.run(_run(settings, _reseal))


async def _reseal(engine: AsyncEngine, box: SecretBox) -> int:
    await prepare_schema(engine, upgrade=False, secret_box=box)  # a schema this version knows, with the sealed columns
    return await reseal_all(engine, box)


async def _run(settings: Settings, work: Callable[[AsyncEngine, SecretBox], Awaitable[T]]) -> tuple[T, str]:
    try:
        box = box_for(settings.sealing)
    except SecretKeyProblem as exc:
        raise UsageProblem(str(exc)) from None
    engine = create_db_engine(settings.database_url, application_name=APPLICATION_NAME)
    attach(engine, box)
    shown = engine.url.render_as_string(hide_password=True)
    try:
        return await work(engine, box), shown
    except SchemaMismatch as exc:
        raise CliError(str(exc), code="schema_mismatch") from None
    except SecretKeyProblem as exc:
        raise CliError(str(exc), code="wrong_encryption_key") from None
    except Exception as exc:
        if database_unreachable(exc) or isinstance(exc, OSError):
            raise Unreachable(f"cannot reach the database {shown}: {str(exc).splitlines()[0][:300]}") from None
        raise
    finally:
        await engine.dispose()
