"""The node's record of everything it received, ran and sent: one short transaction per call.

State machines (the rows keep the current state; ``job_events`` and ``series_events``
keep the story, append-only):

* series: ``receiving`` -> ``queued`` (create_job) -> ``running`` (claim) -> ``done`` |
  ``failed`` | ``rejected`` (finish_job). Any instance arriving for a series that is not
  ``receiving`` re-opens it: state back to ``receiving``, ``version`` + 1, ``released_at``
  cleared; a job still ``queued`` for it becomes ``superseded`` (it would have run on a
  partial series); a ``running`` job finishes for the version it started on and leaves
  the series' state alone.
* job: ``queued`` -> ``running`` -> ``done`` | ``failed`` | ``rejected``; ``running`` ->
  ``queued`` at start when the previous process died (``requeue_interrupted_jobs``).
* delivery: ``pending`` (attempts, last_error, next_attempt_at) -> ``delivered``. Rows are
  never deleted.

Claiming is atomic across threads and processes: a conditional ``UPDATE ... WHERE
state='queued'`` under SQLite's write lock, or ``SELECT ... FOR UPDATE SKIP LOCKED`` then
the same UPDATE on PostgreSQL, so two workers never both run one job.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import String, bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from . import report
from .database import Database
from .errors import NotFoundError, StateError, StorageError, SupersededError
from .models import (FINAL_JOB_STATES, Association, Delivery, Instance, Job, JobEvent, Output, PausedDestination,
                     RejectedInstance, Series, SeriesEvent, UTCDateTime, utcnow)
from .rows import DeliveryRow, InstanceRow, JobRow, OutputRow, SeriesRow

MAX_DETAIL = 2000  # characters of an error kept in an event (the job row keeps the whole text)


def backoff_delay(attempts: int, cap_s: float, base_s: float = 5.0) -> float:
    """Seconds to wait before the next delivery attempt: base, 2x base, 4x base... capped at ``cap_s``."""
    return float(min(cap_s, base_s * 2 ** max(0, attempts - 1)))


class Store:
    """Provenance, jobs and outbox on one ``Database``; every method is thread-safe."""

    def __init__(self, db: Database):
        self.db = db
        # The C-STORE path's statements, built once (SQLAlchemy then reuses their compiled form).
        self._bump_receiving_series = (
            update(Series).where(Series.series_key == bindparam("key"), Series.state == "receiving").values(
                instance_count=Series.instance_count + 1, last_received_at=bindparam("now", type_=UTCDateTime()),
                calling_ae=bindparam("ae", type_=String()),
                modality=func.coalesce(bindparam("modality", type_=String()), Series.modality),
                study_instance_uid=func.coalesce(Series.study_instance_uid, bindparam("study", type_=String())))
            .returning(Series.id, Series.version))
        self._uncount = (update(Series).where(Series.id == bindparam("series_id"))
                         .values(instance_count=Series.instance_count - 1))
        self._insert_instance = (self._insert(Instance).on_conflict_do_nothing(index_elements=["sop_instance_uid"])
                                 .returning(Instance.id))

    # --- receiving -------------------------------------------------------------------------------------

    def record_instance(self, *, sop_instance_uid: str, sop_class_uid: str, series_key: str,
                        series_instance_uid: str, study_instance_uid: str | None, transfer_syntax_uid: str,
                        calling_ae: str | None, path: Path | str, size: int, modality: str | None = None,
                        geometry: dict | None = None, durable: bool = True) -> InstanceRow:
        """Record a stored instance (its file already durable); upsert and maybe re-open its series.

        This is on the C-STORE path, so it costs few round trips and little Python: the
        common case (a new instance of a series still receiving) is two prepared Core
        statements (update the series row, which locks it, then insert the instance); a new
        series, a re-opened one or a duplicate goes through the ORM in the same transaction.
        ``durable=False``: see ``Database.writing_connection`` (the node passes it because
        its instance files are reconciled at start).
        """
        now = utcnow()
        values = dict(sop_class_uid=sop_class_uid, transfer_syntax_uid=transfer_syntax_uid, calling_ae=calling_ae,
                      received_at=now, path=str(path), size=size, modality=modality, geometry=geometry)
        with self.db.writing_connection(durable=durable) as connection:
            recorded = self._record_new_instance(connection, series_key, sop_instance_uid, study_instance_uid, values)
            if recorded is None:
                with Session(bind=connection, expire_on_commit=False) as session:  # joins this transaction
                    recorded = self._record_instance_slowly(session, series_key, series_instance_uid,
                                                            study_instance_uid, sop_instance_uid, values, now)
                    session.flush()
            instance_id, version, replaced, *previous = recorded
        return InstanceRow(id=instance_id, series_key=series_key, sop_instance_uid=sop_instance_uid,
                           series_version=version, replaced=replaced, **{**values, "path": Path(values["path"])},
                           previous_path=Path(previous[0]) if previous and previous[0] else None)

    def _record_new_instance(self, connection, series_key: str, sop_instance_uid: str,
                             study_instance_uid: str | None, values: dict) -> tuple[int, int, int] | None:
        """The common case in Core: (instance id, series version, 0), or None (nothing written) if it does not apply."""
        series = connection.execute(self._bump_receiving_series, {
            "key": series_key, "now": values["received_at"], "ae": values["calling_ae"],
            "modality": values["modality"], "study": study_instance_uid}).first()
        if series is None:  # new series, or not receiving: the ORM path creates or re-opens it
            return None
        instance_id = connection.execute(self._insert_instance, {
            "series_id": series.id, "series_version": series.version, "sop_instance_uid": sop_instance_uid,
            "replaced": 0, **values}).scalar()
        if instance_id is None:  # a duplicate: undo the count, the ORM path replaces it
            connection.execute(self._uncount, {"series_id": series.id})
            return None
        return instance_id, series.version, 0

    def _record_instance_slowly(self, session: Session, series_key: str, series_instance_uid: str,
                                study_instance_uid: str | None, sop_instance_uid: str, values: dict,
                                now: datetime) -> tuple[int, int, int, str | None]:
        """New series, re-opened series or duplicate, with the ORM: (instance id, version, replaced, earlier path)."""
        series = self._series_for_update(session, series_key, series_instance_uid, study_instance_uid, now)
        if series.state != "receiving":
            self._reopen(session, series, now, sop_instance_uid)
        values = dict(series_id=series.id, series_version=series.version, **values)
        instance_id = session.scalar(
            self._insert(Instance).values(sop_instance_uid=sop_instance_uid, replaced=0, **values)
            .on_conflict_do_nothing(index_elements=["sop_instance_uid"]).returning(Instance.id))
        replaced, previous_path = 0, None
        if instance_id is None:
            instance = session.scalar(select(Instance).where(Instance.sop_instance_uid == sop_instance_uid)
                                      .with_for_update())
            previous_path = instance.path
            self._replace_duplicate(session, instance, series, values, now)
            instance_id, replaced = instance.id, instance.replaced
        else:
            series.instance_count += 1
        series.last_received_at = now
        series.calling_ae = values["calling_ae"]
        series.modality = values["modality"] or series.modality
        series.study_instance_uid = series.study_instance_uid or study_instance_uid
        return instance_id, series.version, replaced, previous_path

    def has_instance(self, sop_instance_uid: str, path: Path | str) -> bool:
        """Whether ``sop_instance_uid`` has a row whose file is ``path`` (an identical resend changes nothing)."""
        with self.db.reading() as session:
            return session.scalar(select(Instance.id).where(Instance.sop_instance_uid == sop_instance_uid,
                                                            Instance.path == str(path))) is not None

    def touch_series(self, series_key: str) -> bool:
        """An identical copy of a stored instance arrived: a series still receiving counts it as an arrival
        (``last_received_at``, which also lifts an 'incomplete' hold); any other series is left as it is."""
        with self.db.writing_connection(durable=False) as connection:
            done = connection.execute(update(Series).where(Series.series_key == series_key,
                                                           Series.state == "receiving")
                                      .values(last_received_at=utcnow()))
            return done.rowcount == 1

    def recorded_instance_paths(self) -> dict[str, str]:
        """SOP Instance UID -> the path of its row: a file elsewhere under that UID is an orphan (reconcile)."""
        with self.db.reading() as session:
            return dict(session.execute(select(Instance.sop_instance_uid, Instance.path)).all())

    def mark_series_incomplete(self, marks: dict[str, tuple[datetime, str]]) -> None:
        """Series event 'incomplete' (at, reason) per series key: the node knows it did not get all of it.

        Completion holds such a series until an instance arrives after the mark and a quiet
        period follows. Unknown series keys are ignored (nothing of them was stored).
        """
        with self.db.writing() as session:
            rows = session.scalars(select(Series).where(Series.series_key.in_(list(marks))))
            for series in rows:
                at, reason = marks[series.series_key]
                session.add(SeriesEvent(series_id=series.id, at=at, event="incomplete",
                                        detail=f"{reason}; {series.instance_count} instance(s) so far"))

    def incomplete_marks(self) -> dict[str, tuple[datetime, str]]:
        """For each receiving series with an 'incomplete' event: (time of the latest one, its detail)."""
        with self.db.reading() as session:
            rows = session.execute(
                select(Series.series_key, SeriesEvent.at, SeriesEvent.detail)
                .join(SeriesEvent, SeriesEvent.series_id == Series.id)
                .where(Series.state == "receiving", SeriesEvent.event == "incomplete")
                .order_by(SeriesEvent.at, SeriesEvent.id))
            return {key: (at, detail) for key, at, detail in rows}

    def recorded_sop_instance_uids(self) -> set[str]:
        """Every SOP Instance UID with a row: what the start-up reconciliation compares the files with."""
        with self.db.reading() as session:
            return set(session.scalars(select(Instance.sop_instance_uid)))

    def record_rejected_instance(self, *, calling_ae: str | None, reason: str, sop_instance_uid: str | None = None,
                                 sop_class_uid: str | None = None, transfer_syntax_uid: str | None = None) -> None:
        """Record an instance the node refused, with the reason the sender was told."""
        with self.db.writing() as session:
            session.add(RejectedInstance(at=utcnow(), calling_ae=calling_ae, reason=reason,
                                         sop_instance_uid=sop_instance_uid, sop_class_uid=sop_class_uid,
                                         transfer_syntax_uid=transfer_syntax_uid))

    def record_association(self, *, calling_ae: str | None, called_ae: str | None, peer_host: str | None,
                           peer_port: int | None, event: str) -> None:
        """Record an association event: 'accepted', 'released', 'aborted' or 'rejected'."""
        with self.db.writing() as session:
            session.add(Association(at=utcnow(), event=event, calling_ae=calling_ae, called_ae=called_ae,
                                    peer_host=peer_host, peer_port=peer_port))

    def mark_association_released(self, series_keys: list[str]) -> None:
        """The association that carried these series was released: stamp ``released_at`` (a completion signal)."""
        now = utcnow()
        with self.db.writing() as session:
            for series in session.scalars(select(Series).where(Series.series_key.in_(list(series_keys)))):
                series.released_at = now
                session.add(SeriesEvent(series_id=series.id, at=now, event="released",
                                        detail=f"association released; {series.instance_count} instance(s)"))

    def receiving_series(self) -> list[SeriesRow]:
        """Series still receiving: the candidates for the completion check, oldest arrival first."""
        with self.db.reading() as session:
            rows = session.scalars(select(Series).where(Series.state == "receiving")
                                   .order_by(Series.last_received_at, Series.id))
            return [SeriesRow.of(s) for s in rows]

    def get_series(self, series_key: str) -> SeriesRow:
        """One series by key (NotFoundError if unknown)."""
        with self.db.reading() as session:
            return SeriesRow.of(_series(session, series_key))

    def series_instances(self, series_key: str) -> list[InstanceRow]:
        """The instances of a series (every version), in arrival order: what a job loads.

        Retention removes a finished series' files but keeps its rows (``purged_at``). When an
        instance arrives after that, it re-opens the series, and only the instances received
        after the purge (the ones with files) are the series' instances.
        """
        with self.db.reading() as session:
            series = _series(session, series_key)
            query = with_files(select(Instance).where(Instance.series_id == series.id), series)
            return [InstanceRow.of(i, series_key) for i in session.scalars(query.order_by(Instance.id))]

    # --- jobs ------------------------------------------------------------------------------------------

    def create_job(self, series_key: str, reason: str) -> JobRow:
        """Queue the processing of a series' current version; a job already queued for it is returned instead."""
        now = utcnow()
        with self.db.writing() as session:
            series = session.scalar(select(Series).where(Series.series_key == series_key).with_for_update())
            if series is None:
                raise NotFoundError(f"no series with key {series_key!r}")
            job = session.scalar(select(Job).where(Job.series_id == series.id, Job.state == "queued"))
            if job is None:
                job = Job(series_id=series.id, series_version=series.version, state="queued", reason=reason,
                          attempts=0, created_at=now)
                session.add(job)
                session.flush()
                _event(session, job.id, "queued",
                       f"{reason}; series version {series.version}, {series.instance_count} instance(s)", now)
            series.state = "queued"
            return JobRow.of(job, series)

    def claim_next_job(self, worker: str) -> JobRow | None:
        """Atomically take the oldest queued job for ``worker`` (queued -> running); None when there is none."""
        now = utcnow()
        with self.db.writing() as session:
            for _ in range(100):
                job_id = session.scalar(select(Job.id).where(Job.state == "queued").order_by(Job.id).limit(1)
                                        .with_for_update(skip_locked=True))
                if job_id is None:
                    return None
                claimed = session.execute(
                    update(Job).where(Job.id == job_id, Job.state == "queued")
                    .values(state="running", worker=worker, started_at=now, attempts=Job.attempts + 1)
                    .execution_options(synchronize_session=False))
                if claimed.rowcount == 1:
                    break
            else:
                raise StorageError("could not claim a job: other workers kept taking them first")
            job = session.get(Job, job_id, populate_existing=True)
            series = session.get(Series, job.series_id, with_for_update=True)
            if series.version == job.series_version:
                series.state = "running"
            _event(session, job.id, "running", f"claimed by {worker} (attempt {job.attempts})", now)
            return JobRow.of(job, series)

    def requeue_interrupted_jobs(self) -> list[int]:
        """At start: jobs left 'running' by a process that died go back to 'queued' (event 'resumed').

        Call it only when no other live process shares this database's workers (it cannot
        tell a dead worker from a live one on another machine).
        """
        now = utcnow()
        with self.db.writing() as session:
            jobs = list(session.scalars(select(Job).where(Job.state == "running").order_by(Job.id).with_for_update()))
            for job in jobs:
                _event(session, job.id, "resumed", f"was running on {job.worker} when the node stopped; queued again",
                       now)
                job.state = "queued"
                series = session.get(Series, job.series_id)
                if series.version == job.series_version and series.state == "running":
                    series.state = "queued"
            return [job.id for job in jobs]

    def requeue_job(self, job_id: int, reason: str) -> bool:
        """A 'running' job whose worker is gone goes back to 'queued' (event 'resumed'); False if it was not running."""
        now = utcnow()
        with self.db.writing() as session:
            job = _job(session, job_id, for_update=True)
            if job.state != "running":
                return False
            _event(session, job.id, "resumed", reason, now)
            job.state = "queued"
            series = session.get(Series, job.series_id)
            if series.version == job.series_version and series.state == "running":
                series.state = "queued"
            return True

    def queued_jobs(self) -> list[JobRow]:
        """Jobs waiting for a worker, oldest first."""
        return self._jobs_in_state("queued")

    def running_jobs(self) -> list[JobRow]:
        """Jobs a worker holds now."""
        return self._jobs_in_state("running")

    def get_job(self, job_id: int) -> JobRow:
        """One job by id (NotFoundError if unknown)."""
        with self.db.reading() as session:
            job = _job(session, job_id)
            return JobRow.of(job, session.get(Series, job.series_id))

    def set_job_running(self, job_id: int, *, worker: str, device: str, model_name: str, model_version: str,
                        model_sha256: str, parameters: dict, software: dict) -> None:
        """Record what a claimed job runs with: model identity, device, pipeline parameters, software versions."""
        now = utcnow()
        with self.db.writing() as session:
            job = _job(session, job_id, for_update=True)
            if job.state != "running":
                raise StateError(f"job {job_id} is {job.state}, not running")
            job.worker, job.device = worker, device
            job.model_name, job.model_version, job.model_sha256 = model_name, model_version, model_sha256
            job.parameters, job.software = dict(parameters), dict(software)
            _event(session, job_id, "started", f"{model_name} {model_version} on {device} ({worker})", now)

    def finish_job(self, job_id: int, *, state: str, timings: dict | None = None, error: str | None = None,
                   summary: dict | None = None) -> None:
        """End a job as 'done', 'failed', 'rejected' or 'superseded' (with the reason); the series follows unless
        re-opened. 'superseded': the series was re-opened while the job ran; its outputs are not delivered."""
        if state not in (*FINAL_JOB_STATES, "superseded"):
            raise StateError(f"a job finishes as one of {', '.join(FINAL_JOB_STATES)}, not {state!r}")
        now = utcnow()
        with self.db.writing() as session:
            job = _job(session, job_id, for_update=True)
            if job.state not in ("queued", "running"):
                raise StateError(f"job {job_id} is already {job.state}")
            job.state, job.finished_at, job.error = state, now, error
            job.timings = dict(timings) if timings is not None else job.timings
            job.summary = dict(summary) if summary is not None else job.summary
            series = session.get(Series, job.series_id, with_for_update=True)
            if series.version == job.series_version and series.state in ("queued", "running") \
                    and state != "superseded":
                series.state = state
            ran = f"after {(now - job.started_at).total_seconds():.1f} s" if job.started_at else "before running"
            _event(session, job_id, state, f"{ran}: {error[:MAX_DETAIL]}" if error else ran, now)

    def add_event(self, job_id: int, state: str, detail: str = "") -> None:
        """Append one step to a job's story (e.g. 'loaded', 'segmented', 'written'); the job's state is unchanged."""
        with self.db.writing() as session:
            _job(session, job_id)
            _event(session, job_id, state, detail, utcnow())

    # --- outputs and the outbox ------------------------------------------------------------------------

    def record_output(self, job_id: int, *, kind: str, sop_instance_uid: str, sop_class_uid: str,
                      series_instance_uid: str, path: Path | str, destinations: list[str],
                      series_version: int | None = None) -> OutputRow:
        """Record a written output and queue one delivery per destination (state 'pending', due now).

        ``series_version``: the version the job processed. If the series has moved on (an
        instance re-opened it while the job ran), nothing is recorded and ``SupersededError``
        is raised, in the same transaction that locks the series row: no output of a
        superseded version is ever queued for delivery.
        """
        now = utcnow()
        with self.db.writing() as session:
            job = _job(session, job_id)
            if series_version is not None:
                series = session.get(Series, job.series_id, with_for_update=True)
                if series.version != series_version:
                    raise SupersededError(f"series {series.series_key} is at version {series.version}; job {job_id} "
                                          f"processed version {series_version}")
            output = Output(job_id=job_id, kind=kind, sop_instance_uid=sop_instance_uid, sop_class_uid=sop_class_uid,
                            series_instance_uid=series_instance_uid, path=str(path), created_at=now)
            session.add(output)
            session.flush()
            unique = list(dict.fromkeys(destinations))
            for destination in unique:
                session.add(Delivery(output_id=output.id, destination=destination, state="pending", attempts=0,
                                     created_at=now, next_attempt_at=now))
            _event(session, job_id, "output",
                   f"{kind} {sop_instance_uid} -> {', '.join(unique) if unique else 'no destination'}", now)
            return OutputRow.of(output)

    def earlier_outputs(self, job_id: int, kind: str | None = None) -> list[OutputRow]:
        """Outputs of the earlier 'done' jobs of this job's series, newest first (what a new version supersedes)."""
        with self.db.reading() as session:
            job = _job(session, job_id)
            query = (select(Output).join(Job, Output.job_id == Job.id)
                     .where(Job.series_id == job.series_id, Job.id < job.id, Job.state == "done")
                     .order_by(Job.id.desc(), Output.id))
            if kind is not None:
                query = query.where(Output.kind == kind)
            return [OutputRow.of(o) for o in session.scalars(query)]

    def job_outputs(self, job_id: int) -> list[OutputRow]:
        """The outputs a job recorded, in order."""
        with self.db.reading() as session:
            return [OutputRow.of(o) for o in session.scalars(select(Output).where(Output.job_id == job_id)
                                                             .order_by(Output.id))]

    def due_deliveries(self, now: datetime | None = None, limit: int = 50) -> list[DeliveryRow]:
        """Pending deliveries whose next attempt is due (``next_attempt_at <= now``), most overdue first.

        Deliveries to a destination an operator paused (``paused_destinations``) are left out, and so
        are the outputs of a 'superseded' job (its series was re-opened while it ran): never sent.
        """
        now = now or utcnow()
        with self.db.reading() as session:
            query = (select(Delivery, Output).join(Output, Delivery.output_id == Output.id)
                     .join(Job, Output.job_id == Job.id)
                     .where(Delivery.state == "pending", Delivery.next_attempt_at <= now, Job.state != "superseded",
                            Delivery.destination.not_in(select(PausedDestination.destination)))
                     .order_by(Delivery.next_attempt_at, Delivery.id).limit(limit))
            return [DeliveryRow.of(d, o) for d, o in session.execute(query)]

    def pending_deliveries(self) -> list[DeliveryRow]:
        """Every delivery not yet confirmed, due or not (those of superseded jobs are never sent: not listed)."""
        with self.db.reading() as session:
            query = (select(Delivery, Output).join(Output, Delivery.output_id == Output.id)
                     .join(Job, Output.job_id == Job.id)
                     .where(Delivery.state == "pending", Job.state != "superseded").order_by(Delivery.id))
            return [DeliveryRow.of(d, o) for d, o in session.execute(query)]

    def mark_delivered(self, delivery_id: int) -> None:
        """The destination confirmed the output (C-STORE Success or STOW-RS 200): the delivery is done."""
        now = utcnow()
        with self.db.writing() as session:
            delivery, output = _delivery(session, delivery_id)
            if delivery.state == "delivered":
                return
            delivery.state, delivery.delivered_at, delivery.last_attempt_at = "delivered", now, now
            delivery.attempts += 1
            _event(session, output.job_id, "delivered",
                   f"{output.kind} {output.sop_instance_uid} to {delivery.destination} (attempt {delivery.attempts})",
                   now)

    def mark_delivery_failed(self, delivery_id: int, error: str, retry_in_s: float) -> None:
        """An attempt failed: count it, keep the error, and schedule the next attempt ``retry_in_s`` from now."""
        now = utcnow()
        with self.db.writing() as session:
            delivery, output = _delivery(session, delivery_id)
            if delivery.state == "delivered":
                raise StateError(f"delivery {delivery_id} was already delivered")
            delivery.attempts += 1
            delivery.last_error, delivery.last_attempt_at = error, now
            delivery.next_attempt_at = now + timedelta(seconds=max(0.0, retry_in_s))
            _event(session, output.job_id, "delivery-failed",
                   f"{output.kind} {output.sop_instance_uid} to {delivery.destination}: {error[:MAX_DETAIL]} "
                   f"(attempt {delivery.attempts}, next in {retry_in_s:g} s)", now)

    # --- reading (CLI, status page, tests) -------------------------------------------------------------

    def list_jobs(self) -> list[dict]:
        """Every job, newest first, as JSON-ready dictionaries (times in ISO 8601 UTC)."""
        with self.db.reading() as session:
            return report.list_jobs(session)

    def job_detail(self, job_id: int) -> dict:
        """A job's whole story as a JSON-ready dictionary: events, model, parameters, outputs, deliveries, errors."""
        with self.db.reading() as session:
            return report.job_detail(session, _job(session, job_id))

    # --- helpers ---------------------------------------------------------------------------------------

    def _jobs_in_state(self, state: str) -> list[JobRow]:
        with self.db.reading() as session:
            rows = session.execute(select(Job, Series).join(Series, Job.series_id == Series.id)
                                   .where(Job.state == state).order_by(Job.id))
            return [JobRow.of(j, s) for j, s in rows]

    def _insert(self, model):
        """INSERT with ON CONFLICT support, in this database's dialect."""
        return (postgresql if self.db.dialect == "postgresql" else sqlite).insert(model)

    def _series_for_update(self, session: Session, series_key: str, series_instance_uid: str,
                           study_instance_uid: str | None, now: datetime) -> Series:
        """The series row, locked; inserted first if new (ON CONFLICT DO NOTHING: two inserters never clash)."""
        query = select(Series).where(Series.series_key == series_key).with_for_update()
        series = session.scalar(query)
        if series is not None:
            return series
        inserted = session.execute(
            self._insert(Series).values(series_key=series_key, series_instance_uid=series_instance_uid,
                                        study_instance_uid=study_instance_uid, state="receiving", version=1,
                                        instance_count=0, first_received_at=now, last_received_at=now)
            .on_conflict_do_nothing(index_elements=["series_key"]))
        series = session.scalar(query)
        if inserted.rowcount == 1:
            session.add(SeriesEvent(series_id=series.id, at=now, event="receiving", detail="first instance"))
        return series

    @staticmethod
    def _reopen(session: Session, series: Series, now: datetime, sop_instance_uid: str) -> None:
        """A late instance re-opens a queued, running or finished series as a new version."""
        previous = series.state
        series.version += 1
        series.state, series.released_at = "receiving", None
        purged = "" if series.purged_at is None else (
            f"; the files of the {series.instance_count} earlier instance(s) were purged on "
            f"{series.purged_at:%Y-%m-%d}, so this version holds only instances received from now")
        session.add(SeriesEvent(series_id=series.id, at=now, event="reopened",
                                detail=f"instance {sop_instance_uid} arrived while {previous}; "
                                       f"version {series.version}{purged}"))
        if series.purged_at is not None:  # the count is of instances with files: those received since the purge
            series.instance_count = session.scalar(select(func.count()).select_from(Instance).where(
                Instance.series_id == series.id, Instance.received_at > series.purged_at))
        for job in session.scalars(select(Job).where(Job.series_id == series.id,
                                                     Job.state.in_(("queued", "running"))).with_for_update()):
            if job.state == "queued":
                job.state, job.finished_at = "superseded", now
                _event(session, job.id, "superseded", f"series re-opened as version {series.version} "
                                                      f"by instance {sop_instance_uid}", now)
            else:
                _event(session, job.id, "series-reopened", f"instance {sop_instance_uid} arrived; this job "
                                                           f"processes version {job.series_version}", now)

    @staticmethod
    def _replace_duplicate(session: Session, instance: Instance, series: Series, values: dict,
                           now: datetime) -> None:
        """A SOP Instance UID received again replaces the earlier copy (the event keeps the old path and sender)."""
        old_series_id, old_path, old_ae = instance.series_id, instance.path, instance.calling_ae
        file_purged = series.purged_at is not None and instance.received_at <= series.purged_at
        for name, value in values.items():
            setattr(instance, name, value)
        instance.replaced += 1
        session.add(SeriesEvent(series_id=series.id, at=now, event="duplicate",
                                detail=f"instance {instance.sop_instance_uid} received again from {values['calling_ae']}"
                                       f"; replaces the copy from {old_ae} at {old_path}"))
        if old_series_id != series.id:
            series.instance_count += 1
            old = session.get(Series, old_series_id, with_for_update=True)
            old.instance_count -= 1
        elif file_purged:  # its earlier file was purged, so the count (of instances with files) had left it out
            series.instance_count += 1


def _event(session: Session, job_id: int, state: str, detail: str, at: datetime) -> None:
    session.add(JobEvent(job_id=job_id, at=at, state=state, detail=detail))


def with_files(query, series: Series):
    """``query`` of a series' instances kept to those with files: after a purge and a re-open, the later ones."""
    if series.purged_at is not None and series.last_received_at > series.purged_at:
        return query.where(Instance.received_at > series.purged_at)
    return query


def _series(session: Session, series_key: str) -> Series:
    series = session.scalar(select(Series).where(Series.series_key == series_key))
    if series is None:
        raise NotFoundError(f"no series with key {series_key!r}")
    return series


def _job(session: Session, job_id: int, for_update: bool = False) -> Job:
    job = session.get(Job, job_id, with_for_update=for_update)
    if job is None:
        raise NotFoundError(f"no job {job_id}")
    return job


def _delivery(session: Session, delivery_id: int) -> tuple[Delivery, Output]:
    delivery = session.get(Delivery, delivery_id, with_for_update=True)
    if delivery is None:
        raise NotFoundError(f"no delivery {delivery_id}")
    return delivery, session.get(Output, delivery.output_id)


__all__ = ["Store", "backoff_delay"]
