"""The SQL schema of the provenance: SQLAlchemy 2 declarative models.

The Alembic revisions in ``storage/migrations/versions`` create exactly these tables;
``tests/test_storage.py`` checks that the migrated schema and these models agree.

Tables, and what each row means:

* ``associations``       one row per association event (accepted, released, aborted, rejected)
* ``series``             one row per received series: state, version, counts, last arrival, release
* ``series_events``      append-only story of a series (re-opened, duplicate instance, released)
* ``instances``          one row per stored instance: calling AE, time, transfer syntax, path, size
* ``rejected_instances`` instances refused, with the reason the sender was told
* ``jobs``               one row per processing of one version of a series: state, model, device, timings
* ``job_events``         append-only story of a job (queued, running, resumed, output, delivered, failed...)
* ``outputs``            SEG, SR... written by a job: UIDs and file path
* ``deliveries``         the outbox: one row per output and destination, attempts, next attempt, last error
* ``paused_destinations`` destinations an operator paused: their deliveries wait until resumed (revision 0002)
* ``notifications``      the webhook outbox: one row per job, event and URL, retried like a delivery (revision 0003)

``series.purged_at`` and ``outputs.purged_at`` (revision 0002) say when retention removed
the instance files of a series, or an output's file; the rows themselves are never deleted.
"""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (JSON, BigInteger, CheckConstraint, DateTime, ForeignKey, Index, Integer, String, Text,
                        UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

SERIES_STATES = ("receiving", "queued", "running", "done", "failed", "rejected")
JOB_STATES = ("queued", "running", "done", "failed", "rejected", "superseded")
FINAL_JOB_STATES = ("done", "failed", "rejected")
DELIVERY_STATES = ("pending", "delivered")
ASSOCIATION_EVENTS = ("accepted", "released", "aborted", "rejected")
NOTIFICATION_STATES = ("pending", "sent")

UID = String(64)   # DICOM UIDs are at most 64 characters
AE = String(16)    # AE titles are at most 16 characters


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (every time in this package is)."""
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """A timestamp stored as UTC and always read back timezone-aware.

    PostgreSQL keeps ``timestamptz``; SQLite has no time zones, so the value is stored
    naive in UTC, in SQLAlchemy's fixed-width format (which sorts and compares as text).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: storage keeps timezone-aware UTC times only")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _states(column: str, states: tuple[str, ...], name: str) -> CheckConstraint:
    return CheckConstraint(f"{column} IN ({', '.join(repr(s) for s in states)})", name=name)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict: JSON()}


class Association(Base):
    __tablename__ = "associations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime]
    event: Mapped[str] = mapped_column(String(16))
    calling_ae: Mapped[str | None] = mapped_column(AE)
    called_ae: Mapped[str | None] = mapped_column(AE)
    peer_host: Mapped[str | None] = mapped_column(String(255))
    peer_port: Mapped[int | None]
    __table_args__ = (_states("event", ASSOCIATION_EVENTS, "ck_associations_event"),)


class Series(Base):
    __tablename__ = "series"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_key: Mapped[str] = mapped_column(String(255), unique=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    study_instance_uid: Mapped[str | None] = mapped_column(UID, index=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    calling_ae: Mapped[str | None] = mapped_column(AE)  # the sender of the latest instance: "send back" goes there
    state: Mapped[str] = mapped_column(String(16), index=True)
    version: Mapped[int] = mapped_column(default=1)
    instance_count: Mapped[int] = mapped_column(default=0)
    first_received_at: Mapped[datetime]
    last_received_at: Mapped[datetime]
    released_at: Mapped[datetime | None]
    purged_at: Mapped[datetime | None]  # retention removed its instance files (the rows stay)
    __table_args__ = (_states("state", SERIES_STATES, "ck_series_state"),)


class SeriesEvent(Base):
    __tablename__ = "series_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    at: Mapped[datetime]
    event: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="")


class Instance(Base):
    __tablename__ = "instances"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    series_version: Mapped[int]  # the series version this instance (last) arrived in
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    calling_ae: Mapped[str | None] = mapped_column(AE)
    received_at: Mapped[datetime]
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    modality: Mapped[str | None] = mapped_column(String(16))
    geometry: Mapped[dict | None]
    replaced: Mapped[int] = mapped_column(default=0)  # how many times a duplicate replaced this instance


class RejectedInstance(Base):
    __tablename__ = "rejected_instances"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime]
    calling_ae: Mapped[str | None] = mapped_column(AE)
    reason: Mapped[str] = mapped_column(Text)
    sop_instance_uid: Mapped[str | None] = mapped_column(UID)
    sop_class_uid: Mapped[str | None] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str | None] = mapped_column(UID)


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    series_version: Mapped[int]
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(default=0)  # how many times a worker claimed it
    worker: Mapped[str | None] = mapped_column(String(255))
    device: Mapped[str | None] = mapped_column(String(64))
    model_name: Mapped[str | None] = mapped_column(String(255))
    model_version: Mapped[str | None] = mapped_column(String(64))
    model_sha256: Mapped[str | None] = mapped_column(String(64))
    parameters: Mapped[dict | None]
    software: Mapped[dict | None]
    timings: Mapped[dict | None]
    summary: Mapped[dict | None]
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    __table_args__ = (_states("state", JOB_STATES, "ck_jobs_state"), Index("ix_jobs_state_id", "state", "id"))


class JobEvent(Base):
    __tablename__ = "job_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    at: Mapped[datetime]
    state: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="")


class Output(Base):
    __tablename__ = "outputs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    purged_at: Mapped[datetime | None]  # retention removed its file (the row stays)


class Delivery(Base):
    __tablename__ = "deliveries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    output_id: Mapped[int] = mapped_column(ForeignKey("outputs.id"), index=True)
    destination: Mapped[str] = mapped_column(String(512))
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    next_attempt_at: Mapped[datetime]
    last_attempt_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    __table_args__ = (UniqueConstraint("output_id", "destination", name="uq_deliveries_output_destination"),
                      _states("state", DELIVERY_STATES, "ck_deliveries_state"),
                      Index("ix_deliveries_state_next", "state", "next_attempt_at"))


class PausedDestination(Base):
    """A destination an operator paused: its pending deliveries are not attempted until it is resumed."""

    __tablename__ = "paused_destinations"
    destination: Mapped[str] = mapped_column(String(512), primary_key=True)
    paused_at: Mapped[datetime]
    reason: Mapped[str] = mapped_column(Text, default="")


class Notification(Base):
    """One webhook call to make: a job's event ('result-delivered', 'job-failed') to one URL."""

    __tablename__ = "notifications"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    event: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(String(1024))
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    next_attempt_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    __table_args__ = (UniqueConstraint("job_id", "event", "url", name="uq_notifications_job_event_url"),
                      _states("state", NOTIFICATION_STATES, "ck_notifications_state"),
                      Index("ix_notifications_state_next", "state", "next_attempt_at"))
