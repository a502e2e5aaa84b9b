"""At start, before serving: make SQL agree with the instance files, which are the source of truth.

The SCP answers a C-STORE Success once the instance's file is fsynced and its row is
committed, but neither the rename into the series folder nor that commit is fsynced
(``storage.incoming``, ``Database.writing_connection(durable=False)``): both survive the
node being killed, not a power cut. After a power cut an acknowledged instance is
therefore on disk, possibly still under its checksummed temporary name, possibly
without its row. ``reconcile_instances``:

1. moves every whole temporary file (checksum verified) into its series folder, read
   from its own header; partial ones (never acknowledged) are removed by storage;
2. records every instance file that has no row, read from the file itself (calling AE
   unknown, received now), so that its series goes through completion and is processed
   (a series already processed is re-opened, as for any late instance).

3. removes **orphan copies**: a file of a SOP Instance UID whose row names another file,
   which exists (the instance was received again into another series, and the earlier
   copy's removal did not happen: the node was killed in between).

A whole temporary file the SCP would refuse was never acknowledged and is removed. A
file in a series folder that cannot be recorded is left where it is and logged: it is
never deleted, since it may have been acknowledged.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info

from storage import InstanceFiles, Store, StorageError
from storage.incoming import final_name

from dicom_node.dimse.payload import InstanceHeader, PayloadError, inspect_payload

log = logging.getLogger(__name__)


@dataclass
class Reconciled:
    """What the start-up reconciliation did."""

    placed: list[Path] = field(default_factory=list)      # interrupted writes moved into their series folder
    removed: list[Path] = field(default_factory=list)     # partial or refused temporary files deleted
    orphans: list[Path] = field(default_factory=list)     # earlier copies whose row names the newer file
    recorded: list[str] = field(default_factory=list)     # SOP Instance UIDs whose row was missing
    unreadable: list[Path] = field(default_factory=list)  # files without row that could not be recorded


def reconcile_instances(store: Store, files: InstanceFiles) -> Reconciled:
    """Complete interrupted writes, then record every instance file that has no row; return what was done."""
    done = Reconciled()
    whole, done.removed = files.interrupted_instances()
    for temp in whole:
        try:
            header = _read(temp, final_name(temp)[:-len(".dcm")])
        except (OSError, PayloadError, ValueError, InvalidDicomError) as exc:  # the SCP refused it: never acknowledged
            log.info("removing interrupted write %s: %s", temp.name, exc)
            temp.unlink(missing_ok=True)
            done.removed.append(temp)
            continue
        done.placed.append(files.place_instance(temp, header.study_key, header.series_key))
    on_disk = files.instance_files()
    recorded = store.recorded_instance_paths() if on_disk else {}
    for sop_uid, path in on_disk:
        if sop_uid in recorded:
            _remove_if_orphan(path, Path(recorded[sop_uid]), done)
            continue
        try:
            _record(store, sop_uid, path)
            done.recorded.append(sop_uid)
        except (OSError, PayloadError, StorageError, ValueError, InvalidDicomError) as exc:
            log.error("instance file %s has no SQL row and cannot be recorded: %s", path, exc)
            done.unreadable.append(path)
    _log(done)
    return done


def _remove_if_orphan(path: Path, recorded: Path, done: Reconciled) -> None:
    """Remove ``path`` when its UID's row names another file that exists (the newer copy)."""
    if path.resolve() == recorded.resolve() or not recorded.is_file():
        return
    try:
        path.unlink()
        done.orphans.append(path)
    except OSError as exc:
        log.warning("could not remove the orphan copy %s: %s", path, exc.strerror or exc)


def _read(path: Path, sop_uid: str) -> InstanceHeader:
    """The header of a stored instance, checked as the SCP checked it (the SOP class from its file meta)."""
    sop_class = str(read_file_meta_info(path).get("MediaStorageSOPClassUID", "") or "")
    return inspect_payload(path.read_bytes(), sop_class, sop_uid)


def _record(store: Store, sop_uid: str, path: Path) -> None:
    header = _read(path, sop_uid)
    store.record_instance(
        sop_instance_uid=sop_uid, sop_class_uid=header.sop_class_uid, series_key=header.series_key,
        series_instance_uid=header.series_instance_uid or header.series_key,
        study_instance_uid=header.study_instance_uid, transfer_syntax_uid=header.transfer_syntax_uid,
        calling_ae=None, path=path, size=path.stat().st_size, modality=header.modality, geometry=header.geometry)


def _log(done: Reconciled) -> None:
    if done.placed:
        log.info("completed %d instance write(s) interrupted by a crash", len(done.placed))
    if done.removed:
        log.info("removed %d partial temporary file(s) left by a crash", len(done.removed))
    if done.orphans:
        log.info("removed %d earlier copy(ies) of instances received again into another series", len(done.orphans))
    if done.recorded:
        log.warning("recorded %d instance file(s) whose SQL row was lost (power cut?): %s", len(done.recorded),
                    ", ".join(done.recorded[:20]) + (" ..." if len(done.recorded) > 20 else ""))
