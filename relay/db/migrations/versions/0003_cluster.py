"""The cluster: the relays that share the database, and which relay holds each agent.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

from relay.db.tables import StoredText

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Timestamp = sa.Double().with_variant(sa.REAL(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("name", StoredText(), primary_key=True),
        sa.Column("peer_address", StoredText(), nullable=False),
        sa.Column("ssh_address", StoredText()),
        sa.Column("http_url", StoredText(), nullable=False),
        sa.Column("started_at", Timestamp, nullable=False),
        sa.Column("seen_at", Timestamp, nullable=False),
        sa.Column("draining", sa.Integer(), nullable=False, server_default=sa.text("0")),
    )
    op.create_table(
        "agent_holders",
        sa.Column("session_id", StoredText(), sa.ForeignKey("sessions.id"), primary_key=True),
        sa.Column("node", StoredText(), nullable=False),
        sa.Column("since", Timestamp, nullable=False),
    )
    op.create_index("agent_holders_by_node", "agent_holders", ["node"])


def downgrade() -> None:
    op.drop_index("agent_holders_by_node", "agent_holders")
    op.drop_table("agent_holders")
    op.drop_table("nodes")
