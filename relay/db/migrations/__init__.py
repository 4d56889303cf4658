"""Alembic's environment and revisions for the relay's database (run by relay/db/migrate.py)."""
