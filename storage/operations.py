"""What the people who run the node look at and do, in SQL: overviews, operator actions, metrics' counts, retention.

``Operations(store)`` sits beside ``Store`` (it reuses its database and ``create_job``) so
that the dashboard, ``/metrics``, ``spine-node purge`` and the retention loop read the same
rows the node writes; nothing here is cached, so what a page shows is what SQL holds.

* overviews: ``series_overview``, ``deliveries_overview``, ``destinations`` (JSON-ready);
* actions: ``requeue_job`` (a new job on the series' current version), ``retry_delivery``
  (due now), ``pause_destination`` / ``resume_destination`` (``Store.due_deliveries``
  skips paused destinations);
* ``counts``: the figures ``/metrics`` exports, taken in one read transaction;
* retention: ``purgeable_series`` / ``mark_series_purged`` and ``purgeable_outputs`` /
  ``mark_output_purged``. Only finished series with nothing left to deliver, and outputs
  whose every delivery is confirmed, are ever offered; the rows are kept, ``purged_at`` is
  stamped and an event says what went.

No patient name or ID is stored anywhere in this schema, so nothing here can show one.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.orm import Session

from . import report
from .errors import NotFoundError, StateError
from .models import (Delivery, Instance, Job, JobEvent, Output, PausedDestination, RejectedInstance, Series,
                     SeriesEvent, utcnow)
from .rows import JobRow
from .store import Store, with_files

FINISHED_SERIES = ("done", "failed", "rejected")
TIMINGS_SAMPLE = 2000  # most recent finished jobs whose stage timings feed the histograms


@dataclass(frozen=True)
class PurgeCandidate:
    """Files retention may remove, with the row they belong to (a series' instances, or one output)."""

    kind: str               # 'instances' or 'output'
    row_id: int             # series.id or outputs.id
    uid: str                # Series Instance UID, or the output's SOP Instance UID
    since: datetime         # last arrival of the series, or creation of the output
    paths: tuple[Path, ...]
    job_id: int | None = None


class Operations:
    """Operator-facing queries and actions on a ``Store``'s database; every method is one short transaction."""

    def __init__(self, store: Store):
        self.store = store
        self.db = store.db

    # --- overviews -----------------------------------------------------------------------------------

    def series_overview(self, limit: int = 200) -> list[dict]:
        """The most recently active series with their state and latest job, newest first."""
        with self.db.reading() as session:
            latest = (select(Job.series_id, func.max(Job.id).label("job_id")).group_by(Job.series_id).subquery())
            rows = session.execute(
                select(Series, Job).outerjoin(latest, latest.c.series_id == Series.id)
                .outerjoin(Job, Job.id == latest.c.job_id)
                .order_by(Series.last_received_at.desc(), Series.id.desc()).limit(limit))
            return [_series_dict(series, job) for series, job in rows]

    def series_detail(self, series_key: str) -> dict:
        """One series: its row, its events and every job on it (NotFoundError if unknown)."""
        with self.db.reading() as session:
            series = session.scalar(select(Series).where(Series.series_key == series_key))
            if series is None:
                raise NotFoundError(f"no series with key {series_key!r}")
            jobs = list(session.scalars(select(Job).where(Job.series_id == series.id).order_by(Job.id.desc())))
            events = session.scalars(select(SeriesEvent).where(SeriesEvent.series_id == series.id)
                                     .order_by(SeriesEvent.id))
            detail = _series_dict(series, jobs[0] if jobs else None)
            detail["jobs"] = [{"id": j.id, "state": j.state, "series_version": j.series_version,
                               "created_at": _iso(j.created_at), "finished_at": _iso(j.finished_at)} for j in jobs]
            detail["events"] = [{"at": _iso(e.at), "event": e.event, "detail": e.detail} for e in events]
            return detail

    def jobs_overview(self, limit: int = 200) -> list[dict]:
        """The newest jobs with their stage timings and outputs (``storage.report``'s summaries)."""
        with self.db.reading() as session:
            return report.list_jobs(session, limit)

    def deliveries_overview(self, limit: int = 200, state: str | None = None) -> list[dict]:
        """Deliveries, pending first then newest, with their output, job, attempts and last error."""
        with self.db.reading() as session:
            paused = set(session.scalars(select(PausedDestination.destination)))
            query = (select(Delivery, Output).join(Output, Delivery.output_id == Output.id)
                     .order_by((Delivery.state == "pending").desc(), Delivery.id.desc()).limit(limit))
            if state is not None:
                query = query.where(Delivery.state == state)
            return [_delivery_dict(d, o, d.destination in paused) for d, o in session.execute(query)]

    def destinations(self, configured: list[str] | tuple[str, ...] = ()) -> list[dict]:
        """Every destination configured or seen in the outbox: pending and delivered counts, paused or not."""
        with self.db.reading() as session:
            paused = {p.destination: p for p in session.scalars(select(PausedDestination))}
            counts = session.execute(select(Delivery.destination, Delivery.state, func.count(),
                                            func.min(Delivery.created_at))
                                     .group_by(Delivery.destination, Delivery.state))
            table: dict[str, dict] = {name: _destination(name) for name in configured}
            for name, state, count, oldest in counts:
                entry = table.setdefault(name, _destination(name))
                entry[state] = count
                if state == "pending":
                    entry["oldest_pending_at"] = _iso(oldest)
            for name in paused:
                table.setdefault(name, _destination(name))
            for name, entry in table.items():
                entry["paused"] = name in paused
                entry["paused_at"] = _iso(paused[name].paused_at) if name in paused else None
                entry["last_error"] = session.scalar(
                    select(Delivery.last_error).where(Delivery.destination == name, Delivery.state == "pending",
                                                      Delivery.last_error.is_not(None))
                    .order_by(Delivery.last_attempt_at.desc()).limit(1))
            return sorted(table.values(), key=lambda e: e["destination"])

    def paused_destinations(self) -> set[str]:
        with self.db.reading() as session:
            return set(session.scalars(select(PausedDestination.destination)))

    # --- operator actions ----------------------------------------------------------------------------

    def requeue_job(self, job_id: int, who: str = "an operator") -> JobRow:
        """Run a finished job's series again: a new queued job on its current version (the old job is kept).

        Refused (StateError) while the series is still receiving, queued or running, and
        when retention has removed its instance files.
        """
        with self.db.reading() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise NotFoundError(f"no job {job_id}")
            series = session.get(Series, job.series_id)
            series_key, state, purged = series.series_key, series.state, series.purged_at
        if purged is not None:
            raise StateError(f"job {job_id}: the instance files of its series were purged on {purged:%Y-%m-%d}; "
                             "retrieve the series again to process it")
        if state not in FINISHED_SERIES:
            raise StateError(f"job {job_id}: its series is {state}; a job can be requeued once the series has "
                             "finished (done, failed or rejected)")
        return self.store.create_job(series_key, f"requeued by {who} (was job {job_id})")

    def retry_delivery(self, delivery_id: int, who: str = "an operator") -> None:
        """Make a pending delivery due now (the outbox tries it at its next step)."""
        now = utcnow()
        with self.db.writing() as session:
            delivery = session.get(Delivery, delivery_id, with_for_update=True)
            if delivery is None:
                raise NotFoundError(f"no delivery {delivery_id}")
            if delivery.state != "pending":
                raise StateError(f"delivery {delivery_id} was already delivered")
            delivery.next_attempt_at = now
            output = session.get(Output, delivery.output_id)
            session.add(JobEvent(job_id=output.job_id, at=now, state="retry-requested",
                                 detail=f"{output.kind} {output.sop_instance_uid} to {delivery.destination}: "
                                        f"retry now, asked by {who}"))

    def pause_destination(self, destination: str, reason: str = "") -> None:
        """Stop attempting deliveries to ``destination`` until resumed (idempotent)."""
        with self.db.writing() as session:
            if session.get(PausedDestination, destination) is None:
                session.add(PausedDestination(destination=destination, paused_at=utcnow(), reason=reason))

    def resume_destination(self, destination: str) -> None:
        """Deliver to ``destination`` again; its pending deliveries become due now."""
        now = utcnow()
        with self.db.writing() as session:
            paused = session.get(PausedDestination, destination)
            if paused is not None:
                session.delete(paused)
            for delivery in session.scalars(select(Delivery).where(Delivery.destination == destination,
                                                                   Delivery.state == "pending")):
                delivery.next_attempt_at = min(delivery.next_attempt_at, now)

    # --- metrics ---------------------------------------------------------------------------------------

    def counts(self) -> dict:
        """The figures of ``/metrics``, read in one transaction so that they agree with each other."""
        with self.db.reading() as session:
            stored = session.execute(select(func.count(), func.coalesce(func.sum(Instance.replaced), 0))).one()
            refused = session.execute(select(RejectedInstance.reason, func.count())
                                      .group_by(RejectedInstance.reason)).all()
            pending = session.execute(select(func.count(), func.min(Delivery.created_at))
                                      .where(Delivery.state == "pending")).one()
            timings = session.scalars(select(Job.timings).where(Job.state == "done", Job.timings.is_not(None))
                                      .order_by(Job.id.desc()).limit(TIMINGS_SAMPLE))
            return {
                "instances_stored": int(stored[0]),
                "instances_received": int(stored[0]) + int(stored[1]),  # a duplicate replaces a row, counted too
                "refused_by_reason": _by_code(refused),
                "series_by_state": dict(session.execute(select(Series.state, func.count())
                                                        .group_by(Series.state)).all()),
                "jobs_by_state": dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all()),
                "deliveries_by_state": dict(session.execute(select(Delivery.state, func.count())
                                                            .group_by(Delivery.state)).all()),
                "outbox_depth": int(pending[0]),
                "outbox_oldest_at": pending[1],
                "timings": [t for t in timings if isinstance(t, dict)],
            }

    # --- retention -------------------------------------------------------------------------------------

    def purgeable_series(self, before: datetime, limit: int = 500) -> list[PurgeCandidate]:
        """Finished series last received before ``before``, not yet purged, with nothing left to deliver or run."""
        with self.db.reading() as session:
            query = (select(Series).where(Series.state.in_(FINISHED_SERIES), _files_left(),
                                          Series.last_received_at < before,
                                          ~_active_job(Series.id), ~_undelivered_output(Series.id))
                     .order_by(Series.last_received_at, Series.id).limit(limit))
            found = []
            for series in session.scalars(query):
                query = with_files(select(Instance.path).where(Instance.series_id == series.id), series)
                paths = tuple(Path(p) for p in session.scalars(query))
                found.append(PurgeCandidate("instances", series.id, series.series_instance_uid,
                                            series.last_received_at, paths))
            return found

    def mark_series_purged(self, series_id: int, removed: int, freed_bytes: int, why: str) -> bool:
        """Stamp ``purged_at`` and record the event, if the series is still finished and undelivered-free.

        Returns False (nothing stamped) when a late instance re-opened it since it was listed:
        the caller then leaves its files alone.
        """
        now = utcnow()
        with self.db.writing() as session:
            series = session.get(Series, series_id, with_for_update=True)
            still = session.scalar(select(func.count()).select_from(Series).where(
                Series.id == series_id, Series.state.in_(FINISHED_SERIES), _files_left(),
                ~_active_job(Series.id), ~_undelivered_output(Series.id)))
            if series is None or not still:
                return False
            series.purged_at = now
            session.add(SeriesEvent(series_id=series_id, at=now, event="purged",
                                    detail=f"{why}: {removed} instance file(s), {freed_bytes / 1e6:.1f} MB removed; "
                                           "rows kept"))
            return True

    def purgeable_outputs(self, before: datetime, limit: int = 2000) -> list[PurgeCandidate]:
        """Outputs written before ``before``, not yet purged, whose every delivery (at least one) is confirmed."""
        with self.db.reading() as session:
            delivered_somewhere = exists().where(Delivery.output_id == Output.id)
            pending = exists().where(Delivery.output_id == Output.id, Delivery.state == "pending")
            query = (select(Output).where(Output.purged_at.is_(None), Output.created_at < before,
                                          delivered_somewhere, ~pending)
                     .order_by(Output.created_at, Output.id).limit(limit))
            return [PurgeCandidate("output", o.id, o.sop_instance_uid, o.created_at, (Path(o.path),), o.job_id)
                    for o in session.scalars(query)]

    def mark_output_purged(self, output_id: int, why: str) -> bool:
        """Stamp the output's ``purged_at`` and record a job event; False if it is no longer eligible."""
        now = utcnow()
        with self.db.writing() as session:
            output = session.get(Output, output_id, with_for_update=True)
            pending = session.scalar(select(func.count()).select_from(Delivery)
                                     .where(Delivery.output_id == output_id, Delivery.state == "pending"))
            if output is None or output.purged_at is not None or pending:
                return False
            output.purged_at = now
            session.add(JobEvent(job_id=output.job_id, at=now, state="output-purged",
                                 detail=f"{why}: {output.kind} {output.sop_instance_uid} file removed; row kept"))
            return True


def _files_left():
    """The series has instance files to purge: never purged, or re-opened by instances received after its purge."""
    return or_(Series.purged_at.is_(None), Series.last_received_at > Series.purged_at)


def _active_job(series_id_column):
    """A job of this series is queued or running."""
    return exists().where(Job.series_id == series_id_column, Job.state.in_(("queued", "running")))


def _undelivered_output(series_id_column):
    """An output of one of this series' jobs still has a pending delivery."""
    return (exists().where(and_(Job.series_id == series_id_column, Output.job_id == Job.id,
                                Delivery.output_id == Output.id, Delivery.state == "pending")))


def _by_code(rows) -> dict[str, int]:
    """Refusals grouped by their status code (the reason text starts with '0xNNNN'), so labels stay few."""
    counts: dict[str, int] = {}
    for reason, count in rows:
        head = (reason or "").split(" ", 1)[0]
        code = head if head.startswith("0x") and len(head) == 6 else "other"
        counts[code] = counts.get(code, 0) + int(count)
    return counts


def _series_dict(series: Series, job: Job | None) -> dict:
    return {"series_key": series.series_key, "series_instance_uid": series.series_instance_uid,
            "study_instance_uid": series.study_instance_uid, "modality": series.modality,
            "calling_ae": series.calling_ae, "state": series.state, "version": series.version,
            "instances": series.instance_count, "first_received_at": _iso(series.first_received_at),
            "last_received_at": _iso(series.last_received_at), "released_at": _iso(series.released_at),
            "purged_at": _iso(series.purged_at),
            "job_id": job.id if job else None, "job_state": job.state if job else None}


def _delivery_dict(d: Delivery, o: Output, paused: bool) -> dict:
    return {"id": d.id, "job_id": o.job_id, "kind": o.kind, "sop_instance_uid": o.sop_instance_uid,
            "destination": d.destination, "state": d.state, "attempts": d.attempts, "last_error": d.last_error,
            "created_at": _iso(d.created_at), "next_attempt_at": _iso(d.next_attempt_at),
            "last_attempt_at": _iso(d.last_attempt_at), "delivered_at": _iso(d.delivered_at), "paused": paused}


def _destination(name: str) -> dict:
    return {"destination": name, "pending": 0, "delivered": 0, "oldest_pending_at": None}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


__all__ = ["Operations", "PurgeCandidate"]
