"""Disk watermarks: refuse C-STORE with 0xA700 before anything is written when the data folder runs short.

``DiskGuard`` answers "is there room?" from ``os.statvfs`` of the data folder, at most once
per ``CHECK_INTERVAL_S`` (the C-STORE path must not pay a system call per instance; a
second's lag is harmless next to a watermark of hundreds of MB). Below the watermark —
``SPINE_NODE_MIN_FREE_MB``, or ``SPINE_NODE_MIN_FREE_PERCENT`` of the file system, whichever
asks for more — ``GuardedReceiver`` answers every C-STORE 0xA700 (out of resources) with the
reason, records the refusal like any other (``rejected_instances``), and writes nothing.
Reception resumes by itself at the first check that finds room again (freed by hand, by
retention, or by the emergency clean of ``dicom_node.runtime.retention``).

Why before the write: an instance half-written into a full disk is a failure the sender
sees anyway, after the node has spent the bytes and the fsync; refusing first keeps the
last megabytes for the database and the outputs of jobs already running.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import evt

from dicom_node.config.settings import NodeConfig
from dicom_node.dimse.scp import Receiver
from dicom_node.dimse.status import StoreStatus

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 1.0
MB = 1024 * 1024


@dataclass(frozen=True)
class DiskSpace:
    """Free and total bytes of the data folder's file system, and the watermark in force."""

    free_bytes: int
    total_bytes: int
    min_free_bytes: int

    @property
    def ok(self) -> bool:
        return self.free_bytes >= self.min_free_bytes

    @property
    def free_percent(self) -> float:
        return 100.0 * self.free_bytes / self.total_bytes if self.total_bytes else 0.0

    def describe(self) -> str:
        return (f"{self.free_bytes / MB:.0f} MB free ({self.free_percent:.1f} %), "
                f"watermark {self.min_free_bytes / MB:.0f} MB")


class DiskGuard:
    """The free-space check of one folder, cached for ``interval_s``; thread-safe."""

    def __init__(self, folder: Path, min_free_mb: float, min_free_percent: float = 0.0,
                 interval_s: float = CHECK_INTERVAL_S):
        self.folder = Path(folder)
        self.min_free_mb = float(min_free_mb)
        self.min_free_percent = float(min_free_percent)
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._checked_at = float("-inf")
        self._space: DiskSpace | None = None
        self._was_ok = True

    @classmethod
    def of(cls, config: NodeConfig) -> "DiskGuard":
        return cls(config.data_dir, config.min_free_mb, config.min_free_percent)

    def space(self, fresh: bool = False) -> DiskSpace:
        """The file system's free space now (or as of less than ``interval_s`` ago)."""
        with self._lock:
            now = time.monotonic()
            if fresh or self._space is None or now - self._checked_at >= self.interval_s:
                self._space = self._measure()
                self._checked_at = now
                self._log_change(self._space)
            return self._space

    def refusal(self) -> str | None:
        """None when there is room; otherwise the reason the sender is told."""
        space = self.space()
        if space.ok:
            return None
        return f"node disk nearly full: {space.free_bytes / MB:.0f} MB free, needs {space.min_free_bytes / MB:.0f} MB"

    def _measure(self) -> DiskSpace:
        stats = os.statvfs(self.folder)
        total = stats.f_blocks * stats.f_frsize
        free = stats.f_bavail * stats.f_frsize
        needed = max(self.min_free_mb * MB, total * self.min_free_percent / 100.0)
        return DiskSpace(int(free), int(total), int(needed))

    def _log_change(self, space: DiskSpace) -> None:
        if space.ok != self._was_ok:
            if space.ok:
                log.warning("disk: room again (%s); accepting C-STORE", space.describe())
            else:
                log.error("disk: below the watermark (%s); refusing C-STORE with 0xA700", space.describe())
            self._was_ok = space.ok


class GuardedReceiver(Receiver):
    """The SCP's receiver with the watermark checked first: below it, 0xA700 and nothing written."""

    def __init__(self, guard: DiskGuard, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.guard = guard

    def store_instance(self, event: evt.Event) -> Dataset:
        reason = self.guard.refusal()
        if reason is None:
            return super().store_instance(event)
        request = event.request
        return self._refuse(StoreStatus.OUT_OF_RESOURCES, reason, str(event.assoc.requestor.ae_title or "").strip(),
                            str(request.AffectedSOPInstanceUID), str(request.AffectedSOPClassUID),
                            str(event.context.transfer_syntax))
