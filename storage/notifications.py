"""The webhook outbox: which jobs' events to announce, to which URLs, and what became of each call.

``Notifications(db)``:

* ``queue_new(urls, since)``: one 'pending' row per URL for each job finished since
  ``since`` that has an event to announce and no row yet: **result-delivered** (a 'done'
  job whose every delivery, at least one, is confirmed) or **job-failed** (a 'failed' job).
  The unique key (job, event, URL) makes it safe to call every few seconds, from any process.
* ``due(now)``: the pending rows whose next attempt is due, each with its JSON body
  (UIDs, states, outputs and destinations; never a patient name or ID);
* ``mark_sent`` / ``mark_failed``: the outcome of one attempt, retried like a delivery.

Rows are never deleted; ``overview`` lists the latest for the dashboard and metrics.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Integer, func, select

from .database import Database
from .errors import NotFoundError
from .models import Delivery, Job, Notification, Output, Series, utcnow

EVENTS = ("result-delivered", "job-failed")


class Notifications:
    """The webhook outbox on one database; every method is one short transaction."""

    def __init__(self, db: Database):
        self.db = db

    def queue_new(self, urls: list[str] | tuple[str, ...], since: datetime) -> int:
        """Add the pending rows for jobs finished since ``since`` that need announcing; how many were added."""
        if not urls:
            return 0
        now = utcnow()
        added = 0
        with self.db.writing() as session:
            for job_id, event in self._events_since(session, since):
                known = set(session.scalars(select(Notification.url).where(Notification.job_id == job_id,
                                                                           Notification.event == event)))
                for url in urls:
                    if url not in known:
                        session.add(Notification(job_id=job_id, event=event, url=url, state="pending", attempts=0,
                                                 created_at=now, next_attempt_at=now))
                        added += 1
        return added

    @staticmethod
    def _events_since(session, since: datetime) -> list[tuple[int, str]]:
        failed = session.scalars(select(Job.id).where(Job.state == "failed", Job.finished_at >= since))
        events = [(job_id, "job-failed") for job_id in failed]
        done = list(session.scalars(select(Job.id).where(Job.state == "done", Job.finished_at >= since)))
        if done:
            counts = session.execute(
                select(Output.job_id, func.count(Delivery.id),
                       func.sum((Delivery.state == "pending").cast(Integer)))
                .join(Delivery, Delivery.output_id == Output.id).where(Output.job_id.in_(done))
                .group_by(Output.job_id))
            events += [(job_id, "result-delivered") for job_id, total, pending in counts if total and not pending]
        return events

    def due(self, now: datetime | None = None, limit: int = 50) -> list[dict]:
        """Pending calls whose attempt is due, oldest first: ``{"id", "url", "attempts", "body"}``."""
        now = now or utcnow()
        with self.db.reading() as session:
            rows = list(session.scalars(select(Notification).where(Notification.state == "pending",
                                                                   Notification.next_attempt_at <= now)
                                        .order_by(Notification.next_attempt_at, Notification.id).limit(limit)))
            return [{"id": n.id, "url": n.url, "attempts": n.attempts, "body": _body(session, n)} for n in rows]

    def mark_sent(self, notification_id: int) -> None:
        with self.db.writing() as session:
            row = _row(session, notification_id)
            row.state, row.sent_at, row.attempts = "sent", utcnow(), row.attempts + 1

    def mark_failed(self, notification_id: int, error: str, retry_in_s: float) -> None:
        now = utcnow()
        with self.db.writing() as session:
            row = _row(session, notification_id)
            row.attempts += 1
            row.last_error = error[:2000]
            row.next_attempt_at = now + timedelta(seconds=max(0.0, retry_in_s))

    def overview(self, limit: int = 100) -> list[dict]:
        """The latest notifications, newest first, for the dashboard."""
        with self.db.reading() as session:
            rows = session.scalars(select(Notification).order_by(Notification.id.desc()).limit(limit))
            return [{"id": n.id, "job_id": n.job_id, "event": n.event, "url": n.url, "state": n.state,
                     "attempts": n.attempts, "last_error": n.last_error,
                     "sent_at": n.sent_at.isoformat() if n.sent_at else None} for n in rows]


def _row(session, notification_id: int) -> Notification:
    row = session.get(Notification, notification_id, with_for_update=True)
    if row is None:
        raise NotFoundError(f"no notification {notification_id}")
    return row


def _body(session, notification: Notification) -> dict:
    """The JSON a webhook receives: the event, the job, its series and study UIDs, its outputs and their fate."""
    job = session.get(Job, notification.job_id)
    series = session.get(Series, job.series_id)
    outputs = []
    for output in session.scalars(select(Output).where(Output.job_id == job.id).order_by(Output.id)):
        deliveries = session.scalars(select(Delivery).where(Delivery.output_id == output.id).order_by(Delivery.id))
        outputs.append({"kind": output.kind, "sop_instance_uid": output.sop_instance_uid,
                        "series_instance_uid": output.series_instance_uid,
                        "deliveries": [{"destination": d.destination, "state": d.state,
                                        "delivered_at": d.delivered_at.isoformat() if d.delivered_at else None}
                                       for d in deliveries]})
    return {"event": notification.event, "job_id": job.id, "state": job.state,
            "series_instance_uid": series.series_instance_uid, "study_instance_uid": series.study_instance_uid,
            "series_version": job.series_version, "finished_at": job.finished_at.isoformat() if job.finished_at else None,
            "error": job.error, "outputs": outputs}


__all__ = ["Notifications", "EVENTS"]
