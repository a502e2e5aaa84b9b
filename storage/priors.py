"""The prior study of a patient: the summary of the newest earlier 'done' job with the same patient key.

The key is the pseudonymous ``patient_key`` of the summaries (an HMAC of PatientID and
issuer, ``pipelines.measure.change``): SQL never holds the identifier. The lookup reads
the summaries' JSON (SQLite's ``json_extract``, PostgreSQL's ``->>``: one expression in
SQLAlchemy), newest job first, and skips the current study's own jobs.
"""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from .errors import StorageError
from .models import Job, Series


def prior_summary(store, patient_key: str, study_instance_uid: str) -> dict | None:
    """The summary of the patient's latest analysed study other than ``study_instance_uid``, or None."""
    query = (select(Job.summary).join(Series, Job.series_id == Series.id)
             .where(Job.state == "done", Job.summary["patient_key"].as_string() == patient_key,
                    Series.study_instance_uid != study_instance_uid)
             .order_by(Job.id.desc()).limit(1))
    try:
        with store.db.reading() as session:
            return session.scalar(query)
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot look up the prior study: {exc.__class__.__name__}") from exc
