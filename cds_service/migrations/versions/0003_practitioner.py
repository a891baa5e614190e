"""Who ordered: the ordering user as a keyed hash (or in clear, or not at all: CDS_AUDIT_PRACTITIONER).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit") as table:
        table.add_column(sa.Column("practitioner", sa.String(255), nullable=True))
        table.add_column(sa.Column("department", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit") as table:
        table.drop_column("department")
        table.drop_column("practitioner")
