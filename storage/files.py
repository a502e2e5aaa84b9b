"""Durable files: received instances and the node's outputs, written so that an acknowledged file survives a crash.

Layout under the data root::

    instances/<study key>/<series key>/<SOP Instance UID>.dcm   the bytes exactly as received
    outputs/<job id>/<name>                                     SEG, SR, summary.json of a job

Every write goes to a temporary file, is fsynced, and is renamed over the final name
(atomic on POSIX): a reader sees either the previous complete file or the new complete
one, never a partial file. New folders are fsynced into their parents.

* Outputs: the temporary file is in the final folder, and the folder is fsynced after the
  rename so that the rename itself is on disk. A temporary file left by a crash is named
  ``.*.tmp`` (never the final name) and removed by ``remove_leftovers``.
* Instances, on the C-STORE path, pay one fsync where the file system allows it: see
  ``storage.incoming`` (checksummed temporary file under ``instances/.incoming``, moved
  into its series folder; at start ``interrupted_instances`` hands back the whole ones).
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from .errors import StorageError
from .incoming import (INCOMING, NAME_DURABLE_WITH_FILE, TEMP_SUFFIX, IncomingInstance, filesystem_type, final_name,
                       interrupted_instances)

_SAFE_COMPONENT = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,254}$")


class InstanceFiles:
    """The files of one node, under ``root`` (created if missing)."""

    def __init__(self, root: Path, sync_folder_after_rename: bool | None = None):
        """``sync_folder_after_rename``: fsync an instance's folder after moving it in; by default only
        where the file system of ``root`` is not one of ``NAME_DURABLE_WITH_FILE`` (see ``storage.incoming``)."""
        self.root = Path(root)
        self.instances_dir = self.root / "instances"
        self.incoming_dir = self.instances_dir / INCOMING
        self.outputs_dir = self.root / "outputs"
        if sync_folder_after_rename is None:
            sync_folder_after_rename = filesystem_type(self.root) not in NAME_DURABLE_WITH_FILE
        self.sync_folder_after_rename = sync_folder_after_rename
        self._folders: set[Path] = set()  # folders known to exist durably

    def instance_path(self, study_key: str, series_key: str, sop_uid: str) -> Path:
        """Where ``write_instance`` puts an instance (each key must be a safe file name)."""
        return self.instances_dir / _component(study_key, "study key") / _component(series_key, "series key") \
            / f"{_component(sop_uid, 'SOP Instance UID')}.dcm"

    def write_instance(self, study_key: str, series_key: str, sop_uid: str, data: bytes) -> Path:
        """Write a received instance's encoded bytes durably; return its final path.

        ``incoming`` + ``write`` + ``place_instance`` in one call. A second write of the same
        SOP Instance UID replaces the first one atomically.
        """
        self.instance_path(study_key, series_key, sop_uid)  # refuse unsafe names before writing anything
        incoming = self.incoming(sop_uid, data)
        incoming.write()
        return self.place_instance(incoming, study_key, series_key)

    def incoming(self, sop_uid: str, data: bytes) -> IncomingInstance:
        """A checksummed temporary file for an instance whose series folder is not known yet (then ``write()``)."""
        name = f"{_component(sop_uid, 'SOP Instance UID')}.dcm"
        self._ensure_folder(self.incoming_dir)
        return IncomingInstance(self.incoming_dir, name, data)

    def place_instance(self, incoming: IncomingInstance | Path, study_key: str, series_key: str) -> Path:
        """Move a written (fsynced) incoming file into its series folder; return its final path.

        Also takes a verified temporary file from ``interrupted_instances`` (the folder is then
        always fsynced: recovery makes everything durable before serving).
        """
        temp = incoming.path if isinstance(incoming, IncomingInstance) else Path(incoming)
        name = incoming.file_name if isinstance(incoming, IncomingInstance) else final_name(temp)
        final = self.instance_path(study_key, series_key, name[:-len(".dcm")])
        try:
            self._ensure_folder(final.parent)
            os.replace(temp, final)
            if self.sync_folder_after_rename or not isinstance(incoming, IncomingInstance):
                _fsync_dir(final.parent)
        except OSError as exc:
            if isinstance(incoming, IncomingInstance):  # a recovered file may have been acknowledged: kept
                temp.unlink(missing_ok=True)
            raise StorageError(f"cannot write {final}: {exc.strerror or exc}") from exc
        return final

    def interrupted_instances(self) -> tuple[list[Path], list[Path]]:
        """At start, before serving: (whole temporary files to place, partial ones removed); ``storage.incoming``."""
        return interrupted_instances(self.instances_dir)

    def instance_files(self) -> list[tuple[str, Path]]:
        """(SOP Instance UID, path) of every instance file in the series folders."""
        if not self.instances_dir.is_dir():
            return []
        return [(path.name[:-len(".dcm")], path) for path in self.instances_dir.glob("*/*/*.dcm")
                if not path.name.startswith(".")]

    def _ensure_folder(self, folder: Path) -> None:
        if folder not in self._folders:
            try:
                _make_dirs_durably(folder)
            except OSError as exc:
                raise StorageError(f"cannot create {folder}: {exc.strerror or exc}") from exc
            self._folders.add(folder)

    def output_path(self, job_id: int, name: str) -> Path:
        """Where ``write_output`` puts a job's output called ``name``."""
        if not isinstance(job_id, int) or job_id < 1:
            raise StorageError(f"job id {job_id!r} is not a positive integer")
        return self.outputs_dir / str(job_id) / _component(name, "output name")

    def write_output(self, job_id: int, name: str, data: bytes) -> Path:
        """Write one output of a job durably (same guarantees as instances); return its final path."""
        return write_durably(self.output_path(job_id, name), data)

    def remove_leftovers(self) -> list[Path]:
        """Delete the temporary files a crash left behind (call at start, before serving); return them.

        Whole incoming instances (``interrupted_instances``) are kept: they may have been
        acknowledged, and ``dicom_node.runtime.reconcile`` moves them into place.
        """
        removed = self.interrupted_instances()[1]
        if self.outputs_dir.is_dir():
            for path in self.outputs_dir.rglob(f".*{TEMP_SUFFIX}"):
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
