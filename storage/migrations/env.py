"""Alembic environment, configured in code by ``storage.database`` (no alembic.ini).

``open_database`` passes an open connection in ``config.attributes["connection"]``; a
developer writing a new revision may instead set ``sqlalchemy.url`` on the config.
"""
from alembic import context
from sqlalchemy import create_engine

from storage.models import Base

config = context.config


def run_migrations(connection) -> None:
    context.configure(connection=connection, target_metadata=Base.metadata,
                      render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run_migrations(connection)
else:
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.begin() as own_connection:
        run_migrations(own_connection)
    engine.dispose()
