"""Opening the provenance database: SQLite (embedded default) or PostgreSQL, migrated to head.

SQLite connections get, on every connect:

* ``journal_mode=WAL``: readers (the CLI, the status page) never block the writer that
  records instances, and a crash never leaves a half-written database.
* ``synchronous=FULL``: the WAL is fsynced at every commit, so that a committed row
  survives a power cut, not only a crash of the process (``NORMAL`` in WAL mode may lose
  the last commits on power loss, never corrupts the database).

  The one exception is ``writing(durable=False)``: its transactions run on a second pool
  of connections set to ``synchronous=NORMAL`` (PostgreSQL: ``synchronous_commit=off``).
  Such a commit survives the node's process being killed, not a power cut or an OS
  crash; the next durable commit makes it durable too (the WAL is written and flushed in
  order). Only writes whose truth lives elsewhere, durably, may use it: the row of a
  received instance, whose fsynced file is recorded again at start if the row was lost
  (``dicom_node.runtime.reconcile``). This saves one fsync per received instance.
* ``busy_timeout`` (30 s): a writer waits for another process's transaction instead of
  failing at once.
* ``foreign_keys=ON``: SQLite does not check foreign keys otherwise.

Write transactions on SQLite begin with ``BEGIN IMMEDIATE`` (the write lock is taken at
the start, so a read-then-write transaction never fails half-way with "database is
locked"); read-only ones (``Database.reading()``) use a plain deferred ``BEGIN``.

Both back ends run the same Alembic revisions (``storage/migrations``), configured in
code: no ``alembic.ini`` is needed. Concurrent starters are serialised (the SQLite write
lock; a PostgreSQL advisory lock), so two processes opening a fresh database do not race.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from .errors import StorageError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
_MIGRATION_LOCK_KEY = 0x5350494E  # "SPIN": PostgreSQL advisory lock held while migrating


class Database:
    """An open database: an engine and sessions whose objects stay usable after commit."""

    def __init__(self, engine: Engine, relaxed_engine: Engine | None = None):
        self.engine = engine
        self.url = engine.url
        self.dialect = engine.dialect.name
        self._relaxed_engine = relaxed_engine or engine
        self._write = sessionmaker(engine, expire_on_commit=False)
        self._read = sessionmaker(engine.execution_options(sqlite_begin="BEGIN"), expire_on_commit=False)

    @contextmanager
    def writing(self) -> Iterator[Session]:
        """One write transaction: committed on success, rolled back on error (translated to StorageError)."""
        with self._transaction(self._write) as session:
            yield session

    @contextmanager
    def writing_connection(self, durable: bool = True) -> Iterator[Connection]:
        """One write transaction on a bare connection (less Python per call than a session; hot paths).

        ``durable=False``: the commit survives a crash of this process but not a power cut
        (module docstring); only for rows that can be rebuilt from something durable.
        """
        try:
            with (self.engine if durable else self._relaxed_engine).begin() as connection:
                yield connection
        except SQLAlchemyError as exc:
            raise StorageError(f"database error: {_one_line(exc)}") from exc

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """One read-only transaction (on SQLite it does not take the write lock)."""
        with self._transaction(self._read) as session:
            yield session

    def close(self) -> None:
        """Close every pooled connection (the database itself stays as it is)."""
        self.engine.dispose()
        self._relaxed_engine.dispose()

    def __repr__(self) -> str:
        return f"Database({self.url.render_as_string(hide_password=True)!r})"

    @staticmethod
    @contextmanager
    def _transaction(factory: sessionmaker) -> Iterator[Session]:
        try:
            with factory() as session, session.begin():
                yield session
        except SQLAlchemyError as exc:
            raise StorageError(f"database error: {_one_line(exc)}") from exc


def open_database(url: str, *, create: bool = True) -> Database:
    """Open the database at ``url`` and upgrade its schema to the newest revision.

    ``sqlite:///PATH`` (the folder is created) or ``postgresql[+psycopg]://USER@HOST/DB``.
    With ``create=False`` (read-only tools such as ``spine-node jobs``) nothing is created
    or migrated: the database must exist at the newest revision, else a StorageError says so.
    """
    engine = _create_engine(url, create)
    try:
        if create:
            upgrade_to_head(engine)
        else:
            _check_at_head(engine)
    except BaseException:
        engine.dispose()
        raise
    return Database(engine, _create_engine(url, create=False, durable=False))


def upgrade_to_head(engine: Engine) -> None:
    """Run the Alembic revisions not yet applied, in one transaction, serialised between processes."""
    config = alembic_config()
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            with engine.begin() as connection:
                if engine.dialect.name == "postgresql":
                    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
            return
        except SQLAlchemyError as exc:
            # SQLite answers "locked" at once, without its busy handler, when a second process
            # turns a fresh file to WAL while the first migrates it: wait for that one instead.
            if "database is locked" in str(exc) and time.monotonic() < deadline:
                engine.dispose()
                time.sleep(0.2)
                continue
            raise StorageError(f"cannot migrate {_safe(engine)}: {_one_line(exc)}") from exc


def current_revision(db: Database) -> str | None:
    """The Alembic revision the database is at (None before the first migration)."""
    return _revision(db.engine)


def _revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot read {_safe(engine)}: {_one_line(exc)}") from exc


def _check_at_head(engine: Engine) -> None:
    revision, head = _revision(engine), head_revision()
    if revision is None:
        raise StorageError(f"no spine-node tables in {_safe(engine)} (has the node run with this configuration?)")
    if revision != head:
        raise StorageError(f"{_safe(engine)} is at schema revision {revision}, this spine-node needs {head}: "
                           "start the node once to upgrade it")


def head_revision() -> str:
    """The newest revision shipped with this package."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def alembic_config() -> Config:
    """Alembic's configuration, in code: the revisions live inside the package.

    To write a new revision against a scratch database::

        from storage.database import alembic_config
        from alembic import command
        cfg = alembic_config(); cfg.set_main_option("sqlalchemy.url", "sqlite:///scratch.db")
        command.upgrade(cfg, "head"); command.revision(cfg, "what changes", autogenerate=True)
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def _create_engine(url: str, create: bool, durable: bool = True) -> Engine:
    """An engine whose commits are durable (fsynced), or only crash-safe with ``durable=False`` (module docstring)."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StorageError(f"invalid database URL {url!r}: expected sqlite:///PATH or postgresql://...") from exc
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        if not durable:  # added to the URL's own libpq options (a search_path, say), not in their place
            options = parsed.query.get("options", "")
            options = " ".join(options) if isinstance(options, tuple) else options
            parsed = parsed.update_query_dict({"options": f"{options} -c synchronous_commit=off".strip()})
        return create_engine(parsed, pool_pre_ping=True, json_serializer=_to_json)
    if backend != "sqlite":
        raise StorageError(f"unsupported database {parsed.render_as_string(hide_password=True)!r}: "
                           "use sqlite:///PATH or postgresql://...")
    if not parsed.database or parsed.database == ":memory:":
        raise StorageError("an in-memory SQLite database cannot be shared by the node's threads: give a file path")
    path = Path(parsed.database)
    if not path.exists() and not create:
        raise StorageError(f"no database at {path} (has the node run with this configuration?)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create the database folder {path.parent}: {exc.strerror}") from exc
    engine = create_engine(parsed, json_serializer=_to_json)
    event.listen(engine, "connect", _sqlite_on_connect if durable else _sqlite_on_connect_relaxed)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect_relaxed(dbapi_connection, record) -> None:
    _sqlite_on_connect(dbapi_connection, record, synchronous="NORMAL")


def _sqlite_on_connect(dbapi_connection, _record, synchronous: str = "FULL") -> None:
    dbapi_connection.isolation_level = None  # the "begin" listener below emits BEGIN itself
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute(f"PRAGMA synchronous = {synchronous}")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _sqlite_on_begin(connection) -> None:
    connection.exec_driver_sql(connection.get_execution_options().get("sqlite_begin", "BEGIN IMMEDIATE"))


def _to_json(value) -> str:
    """JSON columns take what pipelines hand over: numpy scalars and arrays, paths, sets."""
    return json.dumps(value, default=_plain)


def _plain(value):
    if hasattr(value, "tolist"):  # numpy scalar or array
        return value.tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def _safe(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def _one_line(exc: BaseException) -> str:
    """The first line of a driver error, without SQLAlchemy's background link."""
    original = getattr(exc, "orig", None) or exc
    return (str(original).strip().splitlines() or [type(original).__name__])[0]
