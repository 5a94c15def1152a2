"""`aistudio-fleet db upgrade`: Alembic's upgrade to head, run directly against the gateway's database."""

from __future__ import annotations

import asyncio

from pydantic import ValidationError

from gateway.cli.client import CliError, Unreachable, UsageProblem
from gateway.db.engine import create_db_engine
from gateway.db.migrate import SchemaMismatch, prepare_schema
from gateway.db.outage import database_unreachable
from gateway.settings import Settings

# Not the gateway's own prefix: a gateway counts connections by that name to tell whether others run.
APPLICATION_NAME = "aistudio-fleet-cli"


def upgrade() -> tuple[str, str]:
    """Upgrades the database GATEWAY_DATABASE_URL names; returns its revision and the URL without password."""
    try:
        settings = Settings()
    except ValidationError as exc:
        raise UsageProblem(f"the gateway's settings are not valid: {exc}") from None
    return asyncio.run(_upgrade(settings.database_url))


async def _upgrade(url: str) -> tuple[str, str]:
    engine = create_db_engine(url, application_name=APPLICATION_NAME)
    shown = engine.url.render_as_string(hide_password=True)
    try:
        return await prepare_schema(engine, upgrade=True), shown
    except SchemaMismatch as exc:
        raise CliError(str(exc), code="schema_mismatch") from None
    except Exception as exc:
        if database_unreachable(exc) or isinstance(exc, OSError):
            raise Unreachable(f"cannot reach the database {shown}: {str(exc).splitlines()[0][:300]}") from None
        raise
    finally:
        await engine.dispose()
