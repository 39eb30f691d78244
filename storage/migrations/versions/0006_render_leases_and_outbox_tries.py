"""render leases and outbox tries

Render requests (generation, iteration, comparison) get what jobs have: an attempt count, a
claim time and a heartbeat, so a dead worker's render is requeued. The outbox keeps each event's
failed tries, so a restart does not grant a fresh round.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

RENDER_TABLES = ("generation", "iteration", "comparison")


def upgrade() -> None:
    for table in RENDER_TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(
                sa.Column("attempts", sa.Integer(), nullable=False, server_default="0")
            )
            batch_op.add_column(
                sa.Column("claimed_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True)
            )
            batch_op.add_column(
                sa.Column("heartbeat_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True)
            )
    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tries", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.drop_column("tries")
    for table in reversed(RENDER_TABLES):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("heartbeat_at")
            batch_op.drop_column("claimed_at")
            batch_op.drop_column("attempts")
