"""The database's sealed secrets as a whole (gateway/db/sealing.py seals one value): the key check at start, and
sealing every secret again with the first key (a rotation, or plain values from before sealing)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Text, select, type_coerce, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.db.models import FleetMarker, Instance, Task
from gateway.db.sealing import CHECK_MARKER, CHECK_TEXT, SIGNING_MARKER, SecretBox, SecretKeyProblem, is_sealed

_INSTANCES = Instance.__table__.c
# The secrets as stored (type Text: read without opening), so a value that does not open is counted, not raised.
_STORED = (
    type_coerce(_INSTANCES.token, Text).label("token"),
    type_coerce(_INSTANCES.proxy_url, Text).label("proxy_url"),
    type_coerce(_INSTANCES.pending_session, Text).label("pending_session"),
)

WRONG_KEY = (
    "the database's secrets were sealed with another encryption key than this gateway's (GATEWAY_ENCRYPTION_KEY, "
    "GATEWAY_ENCRYPTION_KEY_FILE or GATEWAY_DATA_DIR/encryption_key): every gateway of one database needs the same "
    "key; configure the key that sealed them (during a rotation: the new key, a comma, then the old one)"
)


async def check_key(engine: AsyncEngine, box: SecretBox) -> None:
    """Stops the start (SecretKeyProblem) unless this gateway's keys open what the database holds: the check row
    (the first gateway's key writes it) and every sealed secret, so a wrong key never shows up later as a 500."""
    async with engine.begin() as connection:
        await _insert_missing(connection, CHECK_MARKER, box.seal(CHECK_TEXT))
        check = await connection.scalar(select(FleetMarker.value).where(FleetMarker.key == CHECK_MARKER))
        rows = (await connection.execute(select(*_STORED))).all()
    if not _opens(box, str(check)):
        raise SecretKeyProblem(WRONG_KEY)
    unopened = sum(1 for row in rows for value in row if is_sealed(value) and not _opens(box, value))
    if unopened:
        raise SecretKeyProblem(f"{unopened} secret(s) of the instances table do not open: {WRONG_KEY}")


async def _insert_missing(connection: AsyncConnection, key: str, value: str) -> None:
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    await connection.execute(dialect.insert(FleetMarker).values(key=key, value=value).on_conflict_do_nothing())


def _opens(box: SecretBox, value: str) -> bool:
    try:
        box.open(value)
    except SecretKeyProblem:
        return False
    return True


async def reseal_all(engine: AsyncEngine, box: SecretBox) -> int:
    """Every secret sealed again with the first key (the second step of a rotation; plain values sealed), and the
    proxy exits fingerprinted again with it; returns how many values were written. Stops, writing nothing, when a
    value does not open with any of the keys."""
    written = 0
    async with engine.begin() as connection:
        for row in (await connection.execute(select(_INSTANCES.id, *_STORED))).all():
            values: dict[str, Any] = {
                name: box.reseal(value) for name, value in row._mapping.items() if name != "id" and value is not None
            }
            values["proxy_exit"] = box.exit_of(box.open(row.proxy_url)) if row.proxy_url is not None else None
            # SealedText passes a sealed value through as it is.
            await connection.execute(update(Instance).where(Instance.id == row.id).values(**values))
            written += len(values) - 1
        callback = type_coerce(Task.callback_url, Text)
        for task_id, url in (await connection.execute(select(Task.id, callback).where(callback.is_not(None)))).all():
            await connection.execute(update(Task).where(Task.id == task_id).values(callback_url=box.reseal(url)))
            written += 1
        for key in (CHECK_MARKER, SIGNING_MARKER):
            value = await connection.scalar(select(FleetMarker.value).where(FleetMarker.key == key))
            if value:
                await connection.execute(update(FleetMarker).where(FleetMarker.key == key).values(value=box.reseal(value)))
                written += 1
    return written
