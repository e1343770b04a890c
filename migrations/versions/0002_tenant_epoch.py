"""tenant epoch: changes whenever a tenant's seq starts again from 1

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 16:40:00

Every tenant row gets a random ``epoch`` when it is inserted (also by plain SQL, hence a server
default); deleting a tenant and creating it again gives a new one. Clients send it back as
``auth.epoch`` so that a ``seq`` that started again from 1 is never taken for one already seen.
"""
from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

POSTGRESQL_RANDOM_EPOCH = "substr(md5(random()::text || clock_timestamp()::text), 1, 16)"


def upgrade():
    if op.get_bind().dialect.name == "postgresql":
        default = sa.text(POSTGRESQL_RANDOM_EPOCH)
        op.add_column("tenants", sa.Column("epoch", sa.String(length=32), nullable=False, server_default=default))
        return
    # SQLite (the demo) adds no column with a non-constant default, and copying the table would
    # cascade-delete every campaign: a constant default, then one random value per existing row.
    # The demo inserts tenants through the model, whose default is random too.
    op.add_column("tenants", sa.Column("epoch", sa.String(length=32), nullable=False, server_default=""))
    op.execute("UPDATE tenants SET epoch = lower(hex(randomblob(8)))")


def downgrade():
    op.drop_column("tenants", "epoch")
