"""Sessions keep the SSH public key their technician may log in to the host with.

Revision ID: 0002
Revises: 0001
Created: issue 15 (key login for the technician who created a session)

Existing sessions get none (NULL): their technicians log in with the session password, as
before.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sessions", sa.Column("technician_key", sa.Text()))


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("technician_key")
