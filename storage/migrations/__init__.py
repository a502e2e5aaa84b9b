"""Alembic revisions of the provenance schema (run by ``storage.database.open_database``)."""
