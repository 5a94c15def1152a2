"""The gateway's signing key: configured, or made once and kept (in the database on Postgres, else in the data
folder), for the panel's cookies and CSRF tokens and the signed image URLs. A neutral module, so that the API
and the panel both use it and neither imports the other."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.db.models import FleetMarker
from gateway.db.sealing import SIGNING_MARKER, SecretBox
from gateway.settings import ListenerSettings

log = logging.getLogger(__name__)

SECRET_FILE = "secret_key"
SECRET_MARKER = SIGNING_MARKER  # its fleet_markers row on Postgres, sealed like the other secrets


async def shared_secret(settings: ListenerSettings, engine: AsyncEngine, box: SecretBox) -> str:
    """The key every gateway on this database signs with: GATEWAY_SECRET_KEY when set, else on Postgres one
    kept in the database (the first gateway's, sealed with `box`), else the data folder's (SQLite: one gateway)."""
    if settings.secret_key is not None and settings.secret_key.get_secret_value():
        return settings.secret_key.get_secret_value()
    if engine.dialect.name != "postgresql":
        return await asyncio.to_thread(load_secret, settings)
    # In the database, so replicas agree with nothing to copy; one derived from the admin token would change
    # every URL and panel session whenever that token is rotated.
    candidate = await asyncio.to_thread(_existing_secret, Path(settings.data_dir) / SECRET_FILE)
    async with engine.begin() as connection:
        await connection.execute(
            insert(FleetMarker).values(key=SECRET_MARKER, value=box.seal(candidate or secrets.token_hex(32)))
            .on_conflict_do_nothing()
        )
        return box.open(str(await connection.scalar(select(FleetMarker.value).where(FleetMarker.key == SECRET_MARKER))))


def _existing_secret(path: Path) -> str | None:
    """The data folder's key of a gateway from before: the first replica to start keeps its panel sessions."""
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def load_secret(settings: ListenerSettings) -> str:
    """The key that signs the panel's cookies: configured, else made once and kept in the data folder, so
    sessions and CSRF tokens survive a restart (a fresh key would leave open pages with dead tokens)."""
    if settings.secret_key is not None and settings.secret_key.get_secret_value():
        return settings.secret_key.get_secret_value()
    path = Path(settings.data_dir) / SECRET_FILE
    try:
        return path.read_text().strip() or _write_secret(path)
    except FileNotFoundError:
        return _write_secret(path)
    except OSError as exc:
        log.warning("cannot read %s (%s); panel sessions end when the gateway restarts", path, exc)
        return secrets.token_hex(32)


def _write_secret(path: Path) -> str:
    secret = secrets.token_hex(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secret)
    except FileExistsError:
        return path.read_text().strip()  # another process wrote it first
    except OSError as exc:
        log.warning("cannot keep the panel key in %s (%s); panel sessions end when the gateway restarts", path, exc)
    return secret
