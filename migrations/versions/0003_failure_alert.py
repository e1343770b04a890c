"""failure alert: the campaign's alert and its window of message counts

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 17:15:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    json_type = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
    op.add_column("campaigns", sa.Column("failure_alert", json_type, nullable=True))
    op.add_column("campaigns", sa.Column("failure_window", json_type, nullable=True))


def downgrade():
    op.drop_column("campaigns", "failure_window")
    op.drop_column("campaigns", "failure_alert")
