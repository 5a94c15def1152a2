"""Alembic environment, after Alembic's async template.

The URL comes from the gateway's settings; when the gateway migrates at start it hands over its own
connection in `config.attributes["connection"]` instead.
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from gateway.db.engine import create_db_engine
from gateway.db.models import Base
from gateway.db.sealing import SealedText
from gateway.db.types import UTCDateTime

config = context.config
if config.config_file_name is not None and not config.attributes.get("skip_logging_config"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def database_url() -> str:
    url = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from gateway.settings import Settings  # read once here: Alembic's CLI is an entry point of its own

    return Settings().database_url


def secret_box() -> object:
    """The key that seals secrets (revision 0011): the migrating gateway's, else one from the settings (made in
    the data folder when none is configured, as the gateway would at start)."""
    box = config.attributes.get("secret_box")
    if box is None:
        from gateway.db.sealing import box_for
        from gateway.settings import Settings

        box = config.attributes["secret_box"] = box_for(Settings().sealing)
    return box


config.attributes["secret_box_provider"] = secret_box


def render_item(type_: str, obj: object, autogen_context: object) -> str | bool:
    # Revisions use plain SQLAlchemy types, so they never import the gateway's code.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    if type_ == "type" and isinstance(obj, SealedText):
        return "sa.Text()"
    return False


def configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        render_item=render_item,
        render_as_batch=True,  # SQLite alters tables by copying them
        compare_type=True,
        compare_server_default=True,
        **kwargs,
    )


def run_migrations_offline() -> None:
    configure(url=database_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    engine = create_db_engine(database_url())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        do_run_migrations(connection)
    else:
        asyncio.run(run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
