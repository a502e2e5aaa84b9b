"""Durable files: received instances and the node's outputs, written so that an acknowledged file survives a crash.

Layout under the data root::

    instances/<study key>/<series key>/<SOP Instance UID>.dcm   the bytes exactly as received
    outputs/<job id>/<name>                                     SEG, SR, summary.json of a job

Every write goes to a temporary file in the final folder, is fsynced, renamed over the
final name (atomic on POSIX), and the folder is fsynced so that the rename itself is on
disk. New folders are fsynced into their parents too. A reader therefore sees either the
previous complete file or the new complete one, never a partial file, and a temporary
file left by a crash is named ``.*.tmp`` (never ``*.dcm``) and removed by ``remove_leftovers``.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from .errors import StorageError

_SAFE_COMPONENT = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,254}$")
TEMP_SUFFIX = ".tmp"


class InstanceFiles:
    """The files of one node, under ``root`` (created if missing)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.instances_dir = self.root / "instances"
        self.outputs_dir = self.root / "outputs"

    def instance_path(self, study_key: str, series_key: str, sop_uid: str) -> Path:
        """Where ``write_instance`` puts an instance (each key must be a safe file name)."""
        return self.instances_dir / _component(study_key, "study key") / _component(series_key, "series key") \
            / f"{_component(sop_uid, 'SOP Instance UID')}.dcm"

    def write_instance(self, study_key: str, series_key: str, sop_uid: str, data: bytes) -> Path:
        """Write a received instance's encoded bytes durably; return its final path.

        A second write of the same SOP Instance UID replaces the first one atomically.
        """
        return write_durably(self.instance_path(study_key, series_key, sop_uid), data)

    def output_path(self, job_id: int, name: str) -> Path:
        """Where ``write_output`` puts a job's output called ``name``."""
        if not isinstance(job_id, int) or job_id < 1:
            raise StorageError(f"job id {job_id!r} is not a positive integer")
        return self.outputs_dir / str(job_id) / _component(name, "output name")

    def write_output(self, job_id: int, name: str, data: bytes) -> Path:
        """Write one output of a job durably (same guarantees as instances); return its final path."""
        return write_durably(self.output_path(job_id, name), data)

    def remove_leftovers(self) -> list[Path]:
        """Delete the temporary files a crash left behind (call at start, before serving); return them."""
        removed = []
        for folder in (self.instances_dir, self.outputs_dir):
            if folder.is_dir():
                for path in folder.rglob(f".*{TEMP_SUFFIX}"):
                    path.unlink(missing_ok=True)
                    removed.append(path)
        return removed


def write_durably(final: Path, data: bytes) -> Path:
    """Write ``data`` to ``final``: temp file, write, fsync, rename, fsync the folder."""
    try:
        _make_dirs_durably(final.parent)
        fd, temp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=TEMP_SUFFIX, dir=final.parent)
    except OSError as exc:
        raise StorageError(f"cannot write {final}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, final)
        _fsync_dir(final.parent)
    except OSError as exc:
        Path(temp).unlink(missing_ok=True)
        raise StorageError(f"cannot write {final}: {exc.strerror or exc}") from exc
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return final


def _make_dirs_durably(folder: Path) -> None:
    """Create ``folder`` and its missing parents, fsyncing each parent that gained an entry."""
    missing = []
    current = folder
    while not current.is_dir():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            pass  # another thread made it; fsync anyway, its entry must be on disk before we answer
        _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _component(value: str, what: str) -> str:
    """``value`` if it is a safe single file name (letters, digits, '.', '-', '_'); else a StorageError."""
    if not isinstance(value, str) or not _SAFE_COMPONENT.match(value) or value.endswith(TEMP_SUFFIX):
        raise StorageError(f"{what} {value!r} cannot name a file: letters, digits, '.', '-' and '_' only, "
                           "starting with a letter or digit")
    return value
