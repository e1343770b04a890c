"""server presence: each Socket.IO server's connection counts, heartbeated for the ops page

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 18:00:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade():
    json_type = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
    op.create_table(
        "server_presence",
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("clients", json_type, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_server_presence_seen_at", "server_presence", ["seen_at"])


def downgrade():
    op.drop_index("ix_server_presence_seen_at", table_name="server_presence")
    op.drop_table("server_presence")
