"""What each account's page offers: the model picker's entries and the run settings' options, per instance.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 07:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | Sequence[str] | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('instances', sa.Column('offered_models', sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column('instances', 'offered_models')
