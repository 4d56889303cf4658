"""The relay's database: tables, engines and migrations for SQLite and PostgreSQL (SQLAlchemy Core
and Alembic); the statements themselves live in relay/store.py."""
