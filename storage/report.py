"""Jobs as JSON-ready dictionaries: what ``spine-node jobs list|show`` and the status page print.

Times are ISO 8601 strings in UTC; durations are seconds. ``timings`` is what the pipeline
reported (per stage); ``queued_s`` and ``run_s`` are derived from the job's timestamps.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .models import Delivery, Instance, Job, JobEvent, Output, Series


def list_jobs(session: Session, limit: int | None = None) -> list[dict]:
    """Every job (or the ``limit`` newest), newest first, with its series UIDs, timings and output UIDs."""
    rows = session.execute(select(Job, Series).join(Series, Job.series_id == Series.id).order_by(Job.id.desc())
                           .limit(limit))
    jobs = [(job, series) for job, series in rows]
    outputs: dict[int, list[dict]] = {}
    if jobs:
        for output in session.scalars(select(Output).where(Output.job_id.in_([j.id for j, _ in jobs]))
                                      .order_by(Output.id)):
            outputs.setdefault(output.job_id, []).append(_output(output))
    return [_job_summary(job, series, outputs.get(job.id, [])) for job, series in jobs]


def job_detail(session: Session, job: Job) -> dict:
    """One job's whole story: summary + events, model identity, parameters, software, outputs with deliveries."""
    series = session.get(Series, job.series_id)
    outputs = list(session.scalars(select(Output).where(Output.job_id == job.id).order_by(Output.id)))
    deliveries = session.execute(select(Delivery, Output).join(Output, Delivery.output_id == Output.id)
                                 .where(Output.job_id == job.id).order_by(Delivery.id))
    events = session.scalars(select(JobEvent).where(JobEvent.job_id == job.id).order_by(JobEvent.id))
    instances = session.scalar(select(func.count()).select_from(Instance)
                               .where(Instance.series_id == series.id, Instance.series_version <= job.series_version))
    detail = _job_summary(job, series, [_output(o) for o in outputs])
    detail.update({
        "series_key": series.series_key,
        "series_state": series.state,
        "series_current_version": series.version,
        "calling_ae": series.calling_ae,
        "instances": instances,
        "attempts": job.attempts,
        "worker": job.worker,
        "device": job.device,
        "model": {"name": job.model_name, "version": job.model_version, "sha256": job.model_sha256},
        "parameters": job.parameters or {},
        "software": job.software or {},
        "summary": job.summary,
        "events": [{"at": _iso(e.at), "state": e.state, "detail": e.detail} for e in events],
        "deliveries": [{"id": d.id, "kind": o.kind, "sop_instance_uid": o.sop_instance_uid,
                        "destination": d.destination, "state": d.state, "attempts": d.attempts,
                        "last_error": d.last_error, "next_attempt_at": _iso(d.next_attempt_at),
                        "delivered_at": _iso(d.delivered_at)} for d, o in deliveries],
    })
    return detail


def _job_summary(job: Job, series: Series, outputs: list[dict]) -> dict:
    return {
        "id": job.id,
        "state": job.state,
        "reason": job.reason,
        "series_instance_uid": series.series_instance_uid,
        "study_instance_uid": series.study_instance_uid,
        "series_version": job.series_version,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "queued_s": _seconds(job.created_at, job.started_at),
        "run_s": _seconds(job.started_at, job.finished_at),
        "timings": job.timings or {},
        "outputs": outputs,
        "output_uids": [o["sop_instance_uid"] for o in outputs],
        "error": job.error,
    }


def _output(output: Output) -> dict:
    return {"kind": output.kind, "sop_instance_uid": output.sop_instance_uid,
            "sop_class_uid": output.sop_class_uid, "series_instance_uid": output.series_instance_uid,
            "path": output.path}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return round((end - start).total_seconds(), 3) if start and end else None
