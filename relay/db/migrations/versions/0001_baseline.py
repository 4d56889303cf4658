"""The baseline: the schema the relay had before SQLAlchemy (SQLite PRAGMA user_version 1).

Revision ID: 0001
Revises:
Created: the first Alembic revision

A new database is created from relay/db/tables.py and stamped at the newest revision; a
database made before Alembic is stamped here, then upgraded. So this revision has nothing to
do: it names the starting point of every later one.
"""

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
