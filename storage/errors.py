"""Errors of the ``storage`` package, each with a one-line message a person can act on.

Lower libraries' errors (SQLAlchemy, Alembic, ``OSError``) are translated where they
leave this package (``raise StorageError(...) from exc``), so that the node catches one
hierarchy and can put the message into a DIMSE status comment or a log line. The tree::

    StorageError        a file or a row that must outlive the process cannot be read or written
    ├── NotFoundError   a job, series or delivery asked for by id or key does not exist
    └── StateError      a transition the state machine does not allow
        └── SupersededError  a job's series was re-opened while it ran: its outputs are not recorded

See docs/ARCHITECTURE.md.
"""


class StorageError(Exception):
    """Base class: something that must outlive the process could not be read or written."""


class NotFoundError(StorageError):
    """A job, series or delivery asked for by id or key does not exist."""


class StateError(StorageError):
    """A transition that the state machine does not allow (e.g. finishing a finished job)."""


class SupersededError(StateError):
    """The series a job processed was re-opened (a later instance) while it ran: its outputs are not delivered."""
