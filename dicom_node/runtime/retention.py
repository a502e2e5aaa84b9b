"""Retention: remove instance files and outputs the node no longer needs; keep every row.

Rules (the SQL of ``storage.operations`` picks the candidates, so nothing undelivered is
ever offered):

* instance files of a series go ``SPINE_NODE_RETENTION_DAYS`` after its last instance,
  once the series is finished (done, failed or rejected), no job of it is queued or
  running, and every delivery of its outputs is confirmed;
* an output file goes ``SPINE_NODE_OUTPUT_RETENTION_DAYS`` after it was written, once
  each of its deliveries (at least one) is confirmed;
* **emergency clean** (``SPINE_NODE_EMERGENCY_CLEAN``): below the free-space watermark, the
  oldest eligible series' instance files go regardless of age until there is room again.

Each purge stamps ``purged_at`` and appends an event (``series_events`` 'purged',
``job_events`` 'output-purged') *before* the files are removed: a crash in between leaves
files nobody will read again, never a row claiming files that are gone without saying so.
Only files inside the data folder are ever removed.

``RetentionLoop`` runs this in the node (hourly, and every few seconds while the disk is
below its watermark); ``spine-node purge [--dry-run]`` runs it once.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from storage.models import utcnow
from storage.operations import Operations, PurgeCandidate

from dicom_node.runtime.disk import DiskGuard

log = logging.getLogger(__name__)

RETENTION_INTERVAL_S = 3600.0   # how often the age rules are applied
EMERGENCY_INTERVAL_S = 5.0      # how often the watermark is looked at for the emergency clean


@dataclass
class PurgeReport:
    """What a purge removed (or, dry, would remove)."""

    dry_run: bool
    series: list[PurgeCandidate] = field(default_factory=list)
    outputs: list[PurgeCandidate] = field(default_factory=list)
    files: int = 0
    freed_bytes: int = 0

    def lines(self) -> list[str]:
        verb = "would remove" if self.dry_run else "removed"
        out = [f"series {c.uid}: {len(c.paths)} instance file(s), last received {c.since:%Y-%m-%d %H:%M}"
               for c in self.series]
        out += [f"output {c.uid} of job {c.job_id}, written {c.since:%Y-%m-%d %H:%M}" for c in self.outputs]
        out.append(f"{verb} {self.files} file(s), {self.freed_bytes / 1e6:.1f} MB, of {len(self.series)} series "
                   f"and {len(self.outputs)} output(s)")
        return out


class Retention:
    """The purge rules on one node's store and data folder."""

    def __init__(self, operations: Operations, data_dir: Path, retention_days: float,
                 output_retention_days: float, guard: DiskGuard | None = None, emergency_clean: bool = False):
        self.operations = operations
        self.root = Path(data_dir).resolve()
        self.retention_days = retention_days
        self.output_retention_days = output_retention_days
        self.guard = guard
        self.emergency_clean = emergency_clean

    def purge(self, dry_run: bool = False, now: datetime | None = None) -> PurgeReport:
        """Apply the age rules once: series past ``retention_days``, outputs past ``output_retention_days``."""
        now = now or utcnow()
        report = PurgeReport(dry_run)
        if self.retention_days > 0:
            for candidate in self.operations.purgeable_series(now - timedelta(days=self.retention_days)):
                self._purge_series(candidate, report, f"retention ({self.retention_days:g} days)")
        if self.output_retention_days > 0:
            for candidate in self.operations.purgeable_outputs(now - timedelta(days=self.output_retention_days)):
                self._purge_output(candidate, report, f"output retention ({self.output_retention_days:g} days)")
        return report

    def clean_for_room(self, now: datetime | None = None) -> PurgeReport:
        """Emergency clean: the oldest eligible series go, one at a time, until the disk is above its watermark."""
        report = PurgeReport(False)
        if self.guard is None or self.guard.space(fresh=True).ok:
            return report
        for candidate in self.operations.purgeable_series(now or utcnow(), limit=100):
            self._purge_series(candidate, report, f"emergency clean ({self.guard.space(fresh=True).describe()})")
            if self.guard.space(fresh=True).ok:
                break
        if report.series:
            log.warning("emergency clean: %s", report.lines()[-1])
        elif not self.guard.space().ok:
            log.error("emergency clean: nothing can be removed (every series is unfinished or undelivered); "
                      "%s", self.guard.space().describe())
        return report

    def _purge_series(self, candidate: PurgeCandidate, report: PurgeReport, why: str) -> None:
        paths = [p for p in candidate.paths if self._inside(p)]
        size = sum(_size(p) for p in paths)
        if not report.dry_run:
            if not self.operations.mark_series_purged(candidate.row_id, len(paths), size, why):
                return  # re-opened or given a new job since it was listed: left alone
            for path in paths:
                _remove(path)
            log.info("purged series %s: %d file(s), %.1f MB (%s)", candidate.uid, len(paths), size / 1e6, why)
        report.series.append(candidate)
        report.files += len(paths)
        report.freed_bytes += size

    def _purge_output(self, candidate: PurgeCandidate, report: PurgeReport, why: str) -> None:
        paths = [p for p in candidate.paths if self._inside(p)]
        size = sum(_size(p) for p in paths)
        if not report.dry_run:
            if not self.operations.mark_output_purged(candidate.row_id, why):
                return
            for path in paths:
                _remove(path)
            log.info("purged output %s of job %s (%s)", candidate.uid, candidate.job_id, why)
        report.outputs.append(candidate)
        report.files += len(paths)
        report.freed_bytes += size

    def _inside(self, path: Path) -> bool:
        """Only files under the data folder are ever removed (a row pointing elsewhere is logged, left alone)."""
        try:
            Path(path).resolve().relative_to(self.root)
            return True
        except ValueError:
            log.warning("retention: %s is outside the data folder %s; not removed", path, self.root)
            return False


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _remove(path: Path) -> None:
    try:
        Path(path).unlink(missing_ok=True)
    except OSError as exc:
        log.error("retention: cannot remove %s: %s", path, exc.strerror or exc)


class RetentionStep:
    """One step of the node's retention loop: the emergency clean each time, the age rules once an hour."""

    def __init__(self, retention: Retention, interval_s: float = RETENTION_INTERVAL_S):
        self.retention = retention
        self.interval_s = interval_s
        self._next_age_purge = 0.0

    def __call__(self) -> None:
        import time

        if self.retention.emergency_clean:
            self.retention.clean_for_room()
        if time.monotonic() >= self._next_age_purge:
            self._next_age_purge = time.monotonic() + self.interval_s
            report = self.retention.purge()
            if report.files:
                log.info("retention: %s", report.lines()[-1])


def start_retention(node) -> object | None:
    """Start the node's retention loop (a ``Loop`` of ``runtime.node``); None when there is nothing to do."""
    from dicom_node.runtime.node import Loop

    config = node.config
    if not (config.retention_days or config.output_retention_days or config.emergency_clean):
        return None
    guard = getattr(node.receiver, "guard", None) or DiskGuard.of(config)
    retention = Retention(Operations(node.store), config.data_dir, config.retention_days,
                          config.output_retention_days, guard, config.emergency_clean)
    loop = Loop("retention", RetentionStep(retention), interval_s=EMERGENCY_INTERVAL_S)
    loop.start()
    return loop
