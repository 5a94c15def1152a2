"""Secrets sealed at rest: instance tokens, proxy URLs, pending sessions, tasks' callback URLs and the fleet's
signing key are stored
sealed with the fleet's encryption key (gateway/db/sealing.py); the token column grows to hold a sealed value, and
a keyed fingerprint of the proxy URL lets the dispatcher count tasks per proxy exit in SQL.

The key comes from the migrating gateway (`secret_box` in Alembic's attributes), else from the gateway's settings
(migrations/env.py), asked only when there is a row to seal. Downgrading opens them again (the same key is needed).

Revision ID: 0011
Revises: 0009
Create Date: 2026-12-07 15:00:00
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import context, op

revision: str = '0011'
down_revision: str | Sequence[str] | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The revision's own view of the tables, frozen here: the models may change after it.
_instances = sa.table(
    'instances', sa.column('id', sa.Uuid()), sa.column('token', sa.Text()), sa.column('proxy_url', sa.Text()),
    sa.column('pending_session', sa.Text()), sa.column('proxy_exit', sa.String(32)),
)
_tasks = sa.table('tasks', sa.column('id', sa.Uuid()), sa.column('callback_url', sa.Text()))
_markers = sa.table('fleet_markers', sa.column('key', sa.String(128)), sa.column('value', sa.Text()))
_SECRETS = ('token', 'proxy_url', 'pending_session')
_MARKERS = ('signing_key',)


def _box() -> Any:
    """The SecretBox: seal(str), open(str), exit_of(str | None)."""
    return context.config.attributes['secret_box_provider']()


def upgrade() -> None:
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.alter_column('token', existing_type=sa.String(length=128), type_=sa.Text(), existing_nullable=True)
        batch_op.add_column(sa.Column('proxy_exit', sa.String(length=32), nullable=True))
    _rewrite(lambda box, value: value if value.startswith('fernet:') else box.seal(value), with_exit=True)


def downgrade() -> None:
    _rewrite(lambda box, value: box.open(value), with_exit=False)
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_column('proxy_exit')
        batch_op.alter_column('token', existing_type=sa.Text(), type_=sa.String(length=128), existing_nullable=True)


def _rewrite(change: Any, *, with_exit: bool) -> None:
    """Every secret (and the signing key's marker, and tasks' callback URLs) through `change`; the key is asked for
    only when there is one."""
    bind = op.get_bind()
    rows = bind.execute(sa.select(_instances.c.id, *(_instances.c[name] for name in _SECRETS))).all()
    markers = bind.execute(sa.select(_markers.c.key, _markers.c.value).where(_markers.c.key.in_(_MARKERS))).all()
    callbacks = bind.execute(sa.select(_tasks.c.id, _tasks.c.callback_url).where(_tasks.c.callback_url.is_not(None))).all()
    if not any(value for row in rows for value in row[1:]) and not markers and not callbacks:
        return
    box = _box()
    for row in rows:
        values = {name: change(box, value) for name, value in zip(_SECRETS, row[1:], strict=True) if value is not None}
        if with_exit and row.proxy_url is not None:
            values['proxy_exit'] = box.exit_of(box.open(values['proxy_url']))
        if values:
            bind.execute(sa.update(_instances).where(_instances.c.id == row.id).values(**values))
    for task in callbacks:
        bind.execute(sa.update(_tasks).where(_tasks.c.id == task.id).values(callback_url=change(box, task.callback_url)))
    for marker in markers:
        bind.execute(sa.update(_markers).where(_markers.c.key == marker.key).values(value=change(box, marker.value)))
