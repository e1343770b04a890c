"""failures by reason: counts per (tenant, campaign, reason bucket), kept by the worker

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 17:45:00
"""
from alembic import op
import sqlalchemy as sa

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "campaign_failure_reasons",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("campaign_id", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id", "campaign_id"], ["campaigns.tenant_id", "campaigns.id"], ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("tenant_id", "campaign_id", "reason"),
    )


def downgrade():
    op.drop_table("campaign_failure_reasons")
