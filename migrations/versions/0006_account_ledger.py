"""The account ledger: usage per account, model and Pacific day; timed, per-model blocks; per-account pacing.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 06:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | Sequence[str] | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('account_usage',
    sa.Column('instance_id', sa.Uuid(), nullable=False),
    sa.Column('model', sa.String(length=64), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('made', sa.Integer(), nullable=False),
    sa.Column('failed', sa.Integer(), nullable=False),
    sa.Column('quota_answers', sa.Integer(), nullable=False),
    sa.Column('first_quota_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('made_at_quota', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['instance_id'], ['instances.id'], name=op.f('fk_account_usage_instance_id_instances'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('instance_id', 'model', 'day', name=op.f('pk_account_usage'))
    )
    with op.batch_alter_table('model_blocks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.String(length=16), server_default='unavailable', nullable=False))
        batch_op.add_column(sa.Column('until', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('strikes', sa.Integer(), server_default='0', nullable=False))
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pace_seconds', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('daily_cap', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_column('daily_cap')
        batch_op.drop_column('pace_seconds')
    with op.batch_alter_table('model_blocks', schema=None) as batch_op:
        batch_op.drop_column('strikes')
        batch_op.drop_column('until')
        batch_op.drop_column('kind')
    op.drop_table('account_usage')
