"""Kept results in the database: a task's images, readable by every gateway sharing it, until they expire.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-21 06:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0009'
down_revision: str | Sequence[str] | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('kept_results',
    sa.Column('task_id', sa.Uuid(), nullable=False),
    sa.Column('images_b64', sa.JSON(), nullable=False),
    sa.Column('text', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('task_id', name=op.f('pk_kept_results'))
    )
    with op.batch_alter_table('kept_results', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_kept_results_expires_at'), ['expires_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('kept_results', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_kept_results_expires_at'))
    op.drop_table('kept_results')
