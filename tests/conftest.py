"""Shared fixtures, and the two markers' rules.

Markers (pyproject.toml): ``real_data`` tests read the shared data folder
(``support.paths.SHARED_DATA``) and are skipped here, with the reason, where it is absent;
``peer`` tests run an external peer or validator (Orthanc, DCMTK, dicom3tools, dcmqi,
PostgreSQL, Docker, hadolint, chromium). ``make test-fast`` runs ``-m "not slow and not peer"`` with
SPINE_NODE_TEST_NO_PEERS=1, under which starting any of those programs is an error
(``support.programs.forbid_peer_programs``): a test that needs one must carry ``peer``.

``database_url``: a fresh, empty database URL for one test, once for SQLite (a file under
tmp_path) and once for PostgreSQL (127.0.0.1:5432, user postgres, trust auth; override
the server with ``SPINE_NODE_TEST_PG``, a libpq connection string; this case is a ``peer``
test). For PostgreSQL one database ``spine_node_test_<random>`` is created per test session
and dropped at its end, and each test gets its own schema in it (``?options=-csearch_path=...``
in the URL), so tests never see each other's rows. The PostgreSQL case is skipped, with the
reason, when the server cannot be reached.

``storescp_factory`` and ``orthanc_factory`` start real peers (DCMTK storescp, a local
Orthanc) on free loopback ports and stop them by their own PIDs at the end of the module;
tests skip when Orthanc or DCMTK is not installed (``make system-deps`` installs them).
"""
from __future__ import annotations

import os
import secrets
from urllib.parse import quote

import pytest

from support.dimse import StoreScp
from support.orthanc import local_orthanc
from support.paths import SHARED_DATA
from support.programs import forbid_peer_programs, require

PG_DSN = os.environ.get("SPINE_NODE_TEST_PG", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")


def pytest_configure(config):
    if os.environ.get("SPINE_NODE_TEST_NO_PEERS") == "1":
        forbid_peer_programs()


def pytest_collection_modifyitems(config, items):
    """Skip every ``real_data`` test, saying why, where the shared data folder is absent."""
    if SHARED_DATA.is_dir():
        return
    skip = pytest.mark.skip(reason=f"real_data: the shared data folder {SHARED_DATA} is not present")
    for item in items:
        if item.get_closest_marker("real_data"):
            item.add_marker(skip)


# --- databases ---------------------------------------------------------------------------------------

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


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.peer)])
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


# --- real peers --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def storescp_factory(tmp_path_factory):
    """Start storescp peers: ``storescp_factory(aet="SPINENODE")``; all stopped at module end."""
    require("storescp")
    started: list[StoreScp] = []

    def start(aet: str = "SPINENODE") -> StoreScp:
        scp = StoreScp(tmp_path_factory.mktemp("storescp") / "received", aet).start()
        started.append(scp)
        return scp

    yield start
    for scp in started:
        scp.stop()


@pytest.fixture(scope="module")
def orthanc_factory():
    """Start local Orthancs: ``orthanc_factory(stable_age=2, node=..., routing={...})``.

    Keyword arguments are those of ``LocalOrthanc``; each is stopped by its PID and its
    throw-away folder removed at module end.
    """
    require(local_orthanc.ORTHANC_BINARY, "orthanc")
    started = []

    def start(**kwargs):
        orthanc = local_orthanc.LocalOrthanc(**kwargs)
        started.append(orthanc)
        return orthanc.start()

    yield start
    for orthanc in started:
        orthanc.cleanup()
