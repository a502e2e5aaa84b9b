"""Operations: destinations an operator paused, and when retention purged files.

* ``paused_destinations``: one row per paused destination (the outbox skips it).
* ``series.purged_at``: retention removed the series' instance files (rows kept).
* ``outputs.purged_at``: retention removed the output's file (rows kept).

Plain ``ADD COLUMN`` of nullable columns and a new table: the same on SQLite and PostgreSQL.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('paused_destinations',
    sa.Column('destination', sa.String(length=512), nullable=False),
    sa.Column('paused_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('destination')
    )
    op.add_column('series', sa.Column('purged_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('outputs', sa.Column('purged_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('outputs', schema=None) as batch_op:
        batch_op.drop_column('purged_at')
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.drop_column('purged_at')
    op.drop_table('paused_destinations')
