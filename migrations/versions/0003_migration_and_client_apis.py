"""Moving in and the client APIs: the old instance id of a migrated instance; per task its API face, output
format, image hashes, idempotency key, queued inputs and webhook.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 07:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | Sequence[str] | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('legacy_id', sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint(batch_op.f('uq_instances_legacy_id'), ['legacy_id'])
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('api', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('output_format', sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column('image_hashes', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('idempotency_key', sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column('request_hash', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('request_path', sa.String(length=512), nullable=True))
        batch_op.add_column(sa.Column('callback_url', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('callback_attempts', sa.JSON(), nullable=True))
        batch_op.create_unique_constraint(batch_op.f('uq_tasks_idempotency_key'), ['idempotency_key'])


def downgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_tasks_idempotency_key'), type_='unique')
        for column in ('callback_attempts', 'callback_url', 'request_path', 'request_hash', 'idempotency_key',
                       'image_hashes', 'output_format', 'api'):
            batch_op.drop_column(column)
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_instances_legacy_id'), type_='unique')
        batch_op.drop_column('legacy_id')
