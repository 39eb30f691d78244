"""outbox attempts and job lineage

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 03:49:50.745350
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("attempted_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True)
        )

    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("parent_job_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key("fk_job_parent_job_id", "job", ["parent_job_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_constraint("fk_job_parent_job_id", type_="foreignkey")
        batch_op.drop_column("parent_job_id")

    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.drop_column("attempted_at")
