"""Feedback, the jti replay store, and the audit trail.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("entry_key", sa.String(64), nullable=False, unique=True),
        sa.Column("service_id", sa.String(64), nullable=False),
        sa.Column("card_uuid", sa.String(128), nullable=False, index=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("accepted_suggestions", sa.JSON, nullable=True),
        sa.Column("override_reason_system", sa.String(255), nullable=True),
        sa.Column("override_reason_code", sa.String(128), nullable=True),
        sa.Column("override_reason_display", sa.String(255), nullable=True),
        sa.Column("user_comment", sa.Text, nullable=True),
        sa.Column("outcome_timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "jti_seen",
        sa.Column("token_key", sa.String(64), primary_key=True),
        sa.Column("expires_at", sa.Float, nullable=False, index=True),
    )
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("service_id", sa.String(64), nullable=False),
        sa.Column("hook", sa.String(32), nullable=False),
        sa.Column("hook_instance", sa.String(128), nullable=False),
        sa.Column("tenant", sa.String(255), nullable=True),
        sa.Column("consult_id", sa.String(64), nullable=False, unique=True),
        sa.Column("patient_key", sa.String(64), nullable=False, index=True),
        sa.Column("order_system", sa.String(255), nullable=False),
        sa.Column("order_code", sa.String(64), nullable=False),
        sa.Column("rating", sa.String(32), nullable=False),
        sa.Column("acr_category", sa.String(8), nullable=True),
        sa.Column("variant", sa.Integer, nullable=True),
        sa.Column("rules_fired", sa.JSON, nullable=False),
        sa.Column("card_topics", sa.JSON, nullable=False),
        sa.Column("fallback_used", sa.Boolean, nullable=False),
        sa.Column("silent", sa.Boolean, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
    )
    op.create_table(
        "audit_card",
        sa.Column("card_uuid", sa.String(64), primary_key=True),
        sa.Column("consult_id", sa.String(64), sa.ForeignKey("audit.consult_id"), nullable=False, index=True),
        sa.Column("topic", sa.String(64), nullable=False),
        sa.Column("rule_id", sa.String(16), nullable=False),
        sa.Column("indicator", sa.String(16), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_card")
    op.drop_table("audit")
    op.drop_table("jti_seen")
    op.drop_table("feedback")
