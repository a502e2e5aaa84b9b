"""When is a series complete? The rule that decides when a received series becomes a job.

A series in state 'receiving' is complete when either

* every association that sent it has been released after its last instance arrived, and
  its slice geometry is contiguous: one orientation, and positions along the slice normal
  evenly spaced with no gap and no duplicate (a multi-frame instance carries its own
  frames and counts as contiguous); or
* nothing has arrived for it for the quiet period (``SPINE_NODE_STABLE_AGE`` seconds),
  whatever its geometry: the pipeline then judges it, and may refuse it with a reason.

A release alone is not enough because PACS routinely split one series over several
associations; a contiguous geometry alone is not enough because the last slices may
still be on their way. A late instance re-opens a processed series (the store bumps its
version) and the series goes through this rule again, producing new outputs.

What the node knows it did not see overrides both (D4):

* **the quiet clock starts when the node starts** (``since``): time the node was down is
  not quiet time, since a sender may have been retrying against a closed port;
* a series marked **incomplete** (its association was aborted, or the node refused one of
  its instances: series event 'incomplete', ``Store.incomplete_marks``, plus the marks the
  SCP holds in memory while the database cannot take them) is not complete until an
  instance arrives after the mark *and* the quiet period follows, released or not.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from storage import Store

log = logging.getLogger(__name__)

# Slice spacing may vary by this fraction of the median step (rounding in DS values, scanner jitter).
SPACING_TOLERANCE = 0.05
ORIENTATION_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Verdict:
    """Whether a series is complete, and why (recorded as the job's reason)."""

    complete: bool
    reason: str


def contiguity(geometries: list[dict | None]) -> tuple[bool, str]:
    """(True, why) when the instances' slices tile one volume without gap; (False, what is wrong) otherwise."""
    images = [g for g in geometries if g]
    if not images:
        return False, "no image geometry"
    if len(images) == 1 and (images[0].get("frames") or 1) > 1:
        return True, f"one multi-frame instance of {images[0]['frames']} frames"
    orientations = [g.get("orientation") for g in images]
    positions = [g.get("position") for g in images]
    if any(o is None or len(o) != 6 for o in orientations) or any(p is None or len(p) != 3 for p in positions):
        return False, "an instance lacks ImagePositionPatient or ImageOrientationPatient"
    first = np.asarray(orientations[0], dtype=float)
    if any(np.abs(np.asarray(o, dtype=float) - first).max() > ORIENTATION_TOLERANCE for o in orientations):
        return False, "instances differ in orientation"
    if len(images) < 2:
        return False, "a single slice"
    normal = np.cross(first[:3], first[3:])
    along = np.sort(np.asarray(positions, dtype=float) @ normal)
    steps = np.diff(along)
    step = float(np.median(steps))
    if step <= 0:
        return False, "duplicate slice positions"
    worst = float(np.abs(steps - step).max())
    if worst > SPACING_TOLERANCE * step:
        return False, f"slice positions not evenly spaced (step {step:.3g} mm, deviation {worst:.3g} mm): a gap?"
    return True, f"{len(images)} slices evenly spaced by {step:.3g} mm"


def _quiet_s(series, now: datetime, since: datetime | None) -> float:
    """Seconds without a new instance, counted from the node's start at the earliest."""
    last = _aware(series.last_received_at)
    if last is None:
        return float("inf") if since is None else (now - _aware(since)).total_seconds()
    start = max(last, _aware(since)) if since is not None else last
    return (now - start).total_seconds()


def held(series, mark: tuple[datetime, str] | None, now: datetime, stable_age_s: float,
         since: datetime | None = None) -> Verdict | None:
    """The verdict for a series marked incomplete, or None when it carries no mark."""
    if mark is None:
        return None
    at, reason = _aware(mark[0]), mark[1]
    last = _aware(series.last_received_at)
    if last is None or last <= at:
        return Verdict(False, f"held: {reason}; waiting for the sender to send again")
    quiet = _quiet_s(series, now, since)
    if quiet < stable_age_s:
        return Verdict(False, f"held: {reason}; instances arrived since, waiting for the quiet period")
    return Verdict(True, f"quiet for {quiet:.0f} s after instances that followed: {reason}")


def undecidable_yet(series, now: datetime, stable_age_s: float, since: datetime | None = None) -> bool:
    """Neither released after its last instance nor quiet: incomplete whatever its geometry (not worth reading)."""
    last = _aware(series.last_received_at)
    released = _aware(getattr(series, "released_at", None))
    if released is not None and last is not None and released >= last:
        return False
    return last is not None and _quiet_s(series, now, since) < stable_age_s


def judge(series, geometries: list[dict | None], now: datetime, stable_age_s: float,
          since: datetime | None = None) -> Verdict:
    """The completion rule for one series row (``released_at``, ``last_received_at``) without an incomplete mark."""
    last = _aware(series.last_received_at)
    quiet = _quiet_s(series, now, since)
    released = _aware(getattr(series, "released_at", None))
    if released is not None and last is not None and released >= last:
        ok, why = contiguity(geometries)
        if ok:
            return Verdict(True, f"association released and geometry contiguous ({why})")
        if quiet >= stable_age_s:
            return Verdict(True, f"quiet for {quiet:.0f} s (geometry: {why})")
        return Verdict(False, why)
    if quiet >= stable_age_s:
        return Verdict(True, f"quiet for {quiet:.0f} s")
    return Verdict(False, "still receiving")


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; the store writes UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def complete_series(store: Store, stable_age_s: float, now: datetime | None = None, since: datetime | None = None,
                    extra_marks: dict[str, tuple[datetime, str]] | None = None) -> list[int]:
    """Create a job for every receiving series that is complete now; return the new job ids.

    ``since``: when this node started (the quiet clock starts there). ``extra_marks``:
    incomplete marks not yet in SQL (the SCP's, while the database could not take them).
    """
    now = now or datetime.now(timezone.utc)
    created = []
    receiving = store.receiving_series()
    marks = store.incomplete_marks() if receiving else {}
    for key, mark in (extra_marks or {}).items():
        if key not in marks or _aware(mark[0]) > _aware(marks[key][0]):
            marks[key] = mark
    for series in receiving:
        verdict = held(series, marks.get(series.series_key), now, stable_age_s, since)
        if verdict is not None and not verdict.complete:
            continue
        if verdict is None and undecidable_yet(series, now, stable_age_s, since):  # a growing series: not read
            continue
        instances = store.series_instances(series.series_key)
        if verdict is None:
            verdict = judge(series, [i.geometry for i in instances], now, stable_age_s, since)
        if not verdict.complete:
            continue
        job = store.create_job(series.series_key, verdict.reason)
        log.info("series %s complete (%d instances): job %d, %s", series.series_key, len(instances),
                 job.id, verdict.reason)
        created.append(job.id)
    return created
