"""Alembic's entry point: run the revisions on the connection relay/db/migrate.py hands over.

The relay always migrates inside its own transaction (and, on PostgreSQL, under an advisory
lock), so several relay processes starting at once migrate the database exactly once.
"""

from alembic import context

from relay.db.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the relay's migrations through relay.db.migrate, which supplies "
                       "the database connection")
context.configure(connection=connection, target_metadata=metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
