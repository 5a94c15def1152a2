"""The canary's history: one row per canary run of a model (a small generation, or a free page check).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-20 06:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | Sequence[str] | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('canary_runs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('model', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ok', sa.Boolean(), nullable=True),
    sa.Column('step', sa.String(length=64), nullable=True),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('timings', sa.JSON(), nullable=True),
    sa.Column('instance_name', sa.String(length=64), nullable=True),
    sa.Column('task_id', sa.Uuid(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_canary_runs'))
    )
    op.create_index('ix_canary_runs_model_kind_started_at', 'canary_runs', ['model', 'kind', 'started_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_canary_runs_model_kind_started_at', table_name='canary_runs')
    op.drop_table('canary_runs')
