"""Sign-in for real: egress proxies, page reachability, session health, fleet settings (selectors override),
models an account cannot use, and each task's model and image size.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03 07:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | Sequence[str] | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_LOGIN_STATES = "login_state IN ('unknown', 'logged_in', 'needs_login')"
NEW_LOGIN_STATES = "login_state IN ('unknown', 'logged_in', 'needs_login', 'signin_refused', 'unreachable')"
NEW_COLUMNS = ('proxy_url', 'page_error', 'login_checked_at', 'signed_in_since', 'session_saved_at',
               'session_expires_at', 'last_success_at')


def upgrade() -> None:
    op.create_table('fleet_settings',
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('value', sa.JSON(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_fleet_settings'))
    )
    op.create_table('model_blocks',
    sa.Column('instance_id', sa.Uuid(), nullable=False),
    sa.Column('model', sa.String(length=64), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['instance_id'], ['instances.id'], name=op.f('fk_model_blocks_instance_id_instances'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('instance_id', 'model', name=op.f('pk_model_blocks'))
    )
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('proxy_url', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('page_error', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('login_checked_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('signed_in_since', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('session_saved_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('session_expires_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('last_success_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.drop_constraint(op.f('ck_instances_login_state'), type_='check')
        batch_op.create_check_constraint(op.f('ck_instances_login_state'), sa.text(NEW_LOGIN_STATES))
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('model', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('image_size', sa.String(length=8), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_column('image_size')
        batch_op.drop_column('model')
    op.execute("UPDATE instances SET login_state = 'unknown' WHERE login_state IN ('signin_refused', 'unreachable')")
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_instances_login_state'), type_='check')
        batch_op.create_check_constraint(op.f('ck_instances_login_state'), sa.text(OLD_LOGIN_STATES))
        for column in reversed(NEW_COLUMNS):
            batch_op.drop_column(column)
    op.drop_table('model_blocks')
    op.drop_table('fleet_settings')
