"""Whether the page reaches AI Studio is its own column, apart from the login state; the dispatcher's event for
a suspect attempt gets its own name.

Rows whose login_state was `unreachable` keep that fact in `aistudio_reach` and an `unknown` login state (the
next probe says what the page shows); events of kind `unreachable` become `attempt_suspect`.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07 03:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | Sequence[str] | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_LOGIN_STATES = "login_state IN ('unknown', 'logged_in', 'needs_login', 'signin_refused', 'unreachable')"
NEW_LOGIN_STATES = "login_state IN ('unknown', 'logged_in', 'needs_login', 'signin_refused')"
REACHES = "aistudio_reach IN ('unknown', 'reachable', 'unreachable', 'region_blocked')"


def upgrade() -> None:
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('aistudio_reach', sa.String(length=16), nullable=False, server_default='unknown'))
    op.execute("UPDATE instances SET aistudio_reach = 'unreachable', login_state = 'unknown' WHERE login_state = 'unreachable'")
    op.execute("UPDATE instance_events SET kind = 'attempt_suspect' WHERE kind = 'unreachable'")
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('ck_instances_login_state'), type_='check')
        batch_op.create_check_constraint(batch_op.f('ck_instances_login_state'), NEW_LOGIN_STATES)
        batch_op.create_check_constraint(batch_op.f('ck_instances_aistudio_reach'), REACHES)


def downgrade() -> None:
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('ck_instances_aistudio_reach'), type_='check')
        batch_op.drop_constraint(batch_op.f('ck_instances_login_state'), type_='check')
        batch_op.create_check_constraint(batch_op.f('ck_instances_login_state'), OLD_LOGIN_STATES)
    op.execute("UPDATE instances SET login_state = 'unreachable' WHERE aistudio_reach = 'unreachable'")
    op.execute("UPDATE instance_events SET kind = 'unreachable' WHERE kind = 'attempt_suspect'")
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_column('aistudio_reach')
