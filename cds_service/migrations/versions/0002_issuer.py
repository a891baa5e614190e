"""Who was shown a card and who reported on it: the client issuer on audit rows, issuer and tenant
on feedback rows (feedback is accepted only from the client that was shown the card).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit") as table:
        table.add_column(sa.Column("issuer", sa.String(255), nullable=True))
    with op.batch_alter_table("feedback") as table:
        table.add_column(sa.Column("issuer", sa.String(255), nullable=True))
        table.add_column(sa.Column("tenant", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("feedback") as table:
        table.drop_column("tenant")
        table.drop_column("issuer")
    with op.batch_alter_table("audit") as table:
        table.drop_column("issuer")
