"""Plain, immutable records returned by ``Store``: safe to keep after the transaction and to pass between threads.

They carry the columns the node needs; ``Store.job_detail`` and ``Store.list_jobs`` give
the whole story as JSON-ready dictionaries.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from . import models


@dataclass(frozen=True)
class SeriesRow:
    id: int
    series_key: str
    series_instance_uid: str
    study_instance_uid: str | None
    modality: str | None
    calling_ae: str | None
    state: str
    version: int
    instance_count: int
    first_received_at: datetime
    last_received_at: datetime
    released_at: datetime | None

    @classmethod
    def of(cls, s: models.Series) -> "SeriesRow":
        return cls(s.id, s.series_key, s.series_instance_uid, s.study_instance_uid, s.modality, s.calling_ae,
                   s.state, s.version, s.instance_count, s.first_received_at, s.last_received_at, s.released_at)


@dataclass(frozen=True)
class InstanceRow:
    id: int
    series_key: str
    series_version: int
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    calling_ae: str | None
    received_at: datetime
    path: Path
    size: int
    modality: str | None
    geometry: dict | None
    replaced: int  # how many earlier copies of this SOP Instance UID it replaced
    previous_path: Path | None = None  # record_instance of a duplicate: where the copy it replaced was

    @classmethod
    def of(cls, i: models.Instance, series_key: str) -> "InstanceRow":
        return cls(i.id, series_key, i.series_version, i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax_uid,
                   i.calling_ae, i.received_at, Path(i.path), i.size, i.modality, i.geometry, i.replaced)


@dataclass(frozen=True)
class JobRow:
    id: int
    series_key: str
    series_instance_uid: str
    study_instance_uid: str | None
    series_version: int
    calling_ae: str | None  # the sender of the series' latest instance
    state: str
    reason: str
    attempts: int
    worker: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None

    @classmethod
    def of(cls, j: models.Job, s: models.Series) -> "JobRow":
        return cls(j.id, s.series_key, s.series_instance_uid, s.study_instance_uid, j.series_version, s.calling_ae,
                   j.state, j.reason, j.attempts, j.worker, j.created_at, j.started_at, j.finished_at, j.error)


@dataclass(frozen=True)
class OutputRow:
    id: int
    job_id: int
    kind: str
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    path: Path
    created_at: datetime

    @classmethod
    def of(cls, o: models.Output) -> "OutputRow":
        return cls(o.id, o.job_id, o.kind, o.sop_instance_uid, o.sop_class_uid, o.series_instance_uid,
                   Path(o.path), o.created_at)


@dataclass(frozen=True)
class DeliveryRow:
    id: int
    output_id: int
    job_id: int
    destination: str
    state: str
    attempts: int
    last_error: str | None
    next_attempt_at: datetime
    delivered_at: datetime | None
    kind: str
    sop_instance_uid: str
    sop_class_uid: str
    path: Path

    @classmethod
    def of(cls, d: models.Delivery, o: models.Output) -> "DeliveryRow":
        return cls(d.id, d.output_id, o.job_id, d.destination, d.state, d.attempts, d.last_error, d.next_attempt_at,
                   d.delivered_at, o.kind, o.sop_instance_uid, o.sop_class_uid, Path(o.path))
