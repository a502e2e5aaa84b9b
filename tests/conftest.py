"""Shared fixtures.

``database_url``: a fresh, empty database URL for one test, once for SQLite (a file under
tmp_path) and once for PostgreSQL (127.0.0.1:5432, user postgres, trust auth; override
the server with ``SPINE_NODE_TEST_PG``, a libpq connection string). For PostgreSQL one
database ``spine_node_test_<random>`` is created per test session and dropped at its
end, and each test gets its own schema in it (``?options=-csearch_path=...`` in the URL),
so tests never see each other's rows. The PostgreSQL case is skipped, with the reason,
when the server cannot be reached.
"""
from __future__ import annotations

import os
import secrets
from urllib.parse import quote

import pytest

PG_DSN = os.environ.get("SPINE_NODE_TEST_PG", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")


@pytest.fixture(scope="session")
def _postgres_database():
    """Create one throw-away PostgreSQL database for the session; yield its connection parameters."""
    try:
        import psycopg

        admin = psycopg.connect(PG_DSN, autocommit=True, connect_timeout=3)
    except Exception as exc:  # noqa: BLE001 - any failure to connect means "no server here"
        pytest.skip(f"PostgreSQL not reachable ({PG_DSN}): {str(exc).strip().splitlines()[0]}")
    name = f"spine_node_test_{secrets.token_hex(4)}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        info = admin.info
        yield {"host": info.host, "port": info.port, "user": info.user, "dbname": name}
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """URL of an empty database for this test (not yet migrated: ``open_database`` does that)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'spine-node.db'}"
    import psycopg

    pg = request.getfixturevalue("_postgres_database")
    schema = f"test_{secrets.token_hex(6)}"
    with psycopg.connect(host=pg["host"], port=pg["port"], user=pg["user"], dbname=pg["dbname"],
                         autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    options = quote(f"-csearch_path={schema}", safe="")
    return f"postgresql+psycopg://{pg['user']}@{pg['host']}:{pg['port']}/{pg['dbname']}?options={options}"
