"""What must outlive a process: instance files, the SQL provenance, jobs and the outbox.

* ``open_database(url)`` opens SQLite (WAL, FULL sync, foreign keys) or PostgreSQL and
  upgrades the schema to the newest Alembic revision shipped in ``storage/migrations``.
* ``InstanceFiles(root)`` writes received instances and outputs durably (temp file,
  fsync, rename; the folder fsynced too, except for instances on ext4/XFS/btrfs where
  a checksummed temporary name stands in for it: ``storage.incoming``) before anything
  acknowledges them.
* ``Store(db)`` records instances, associations, series, jobs and their append-only
  events, outputs and their deliveries, one short transaction per call.

This package never imports ``dicom_node``, ``pipelines`` or ``research`` (docs/ARCHITECTURE.md).
"""
from .database import Database, open_database
from .errors import NotFoundError, StateError, StorageError, SupersededError
from .files import InstanceFiles
from .incoming import IncomingInstance
from .rows import DeliveryRow, InstanceRow, JobRow, OutputRow, SeriesRow
from .store import Store

__all__ = [
    "Database", "open_database", "StorageError", "NotFoundError", "StateError", "SupersededError", "InstanceFiles", "IncomingInstance",
    "Store", "InstanceRow", "SeriesRow", "JobRow", "OutputRow", "DeliveryRow",
]
