"""Write a DICOM dataset to a file atomically, so that no reader ever sees half a file.

The dataset goes to a temporary file in the target's folder (same file system), is
flushed to disk, then renamed over the target in one step: a crash leaves either the
old file or the new one, never a truncated SEG or SR for a PACS to pick up.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pydicom.dataset import Dataset

from pipelines.errors import DicomWriteError


def write_dataset(ds: Dataset, path: Path | str) -> Path:
    """Save ``ds`` as a DICOM Part 10 file at ``path`` (folders created), atomically; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the file from a sender running as another user
        with os.fdopen(fd, "wb") as f:
            ds.save_as(f, enforce_file_format=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, (OSError, ValueError, TypeError)):
            # First line only: pydicom appends the offending element, value (maybe a patient's) included.
            raise DicomWriteError(f"cannot write {path}: {str(exc).splitlines()[0]}") from exc
        raise
    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
