"""Find the DICOM series among files and folders, and load a CT series with exact geometry.

``discover_series`` reads headers only and groups instances by SeriesInstanceUID; a
series whose Study/Series UIDs are empty (as real exports sometimes are) is grouped by
the attributes a series shares instead (frame of reference, series number, date, time,
description), under a derived deterministic UID. Non-DICOM files and DICOMDIRs are
skipped with a reason (``scan_inputs`` returns them).

``load_series`` checks the series (``series_checks``), decodes it straight into one
float32 volume (``dicom_decode``) and returns a ``CTSeries``: slices sorted along the
slice normal, rows and columns as stored, geometry from ImagePositionPatient,
ImageOrientationPatient and PixelSpacing. Everything that goes wrong is a
``SeriesRejected`` naming the series by UID; every repair is recorded.
"""
from __future__ import annotations

import copy
import logging
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, MediaStorageDirectoryStorage, generate_uid

from pipelines.records import CTSeries, Geometry
from pipelines.series.decode import check_duplicates, decode_stack, shift_slices
from pipelines.errors import SeriesRejected
from pipelines.series.checks import SeriesRules, plan_stack
from pipelines.series.frames import (
    CT_IMAGE_SOP_CLASSES,
    Instance,
    frames_of,
    is_multi_frame,
    sop_class_of,
    sop_instance_uid_of,
)

log = logging.getLogger(__name__)

__all__ = ["Instance", "SeriesFiles", "SkippedFile", "Discovery", "SeriesRules",
           "scan_inputs", "discover_series", "load_series"]

_FOLDER_SAFE_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
# The attributes every instance of one series shares: the grouping key when SeriesInstanceUID is empty.
_SERIES_ATTRIBUTES = ("StudyInstanceUID", "FrameOfReferenceUID", "Modality", "SeriesNumber", "SeriesDate",
                      "SeriesTime", "SeriesDescription", "StudyDate", "StudyTime", "StudyID")
_STUDY_ATTRIBUTES = ("FrameOfReferenceUID", "StudyDate", "StudyTime", "StudyID")


@dataclass
class SeriesFiles:
    """The instances of one series found on disk, headers read.

    ``key`` names the series on disk and in messages: its SeriesInstanceUID when that is
    present and a plain UID, otherwise a UID derived from the series' shared attributes
    (the same files always give the same key). ``series_instance_uid`` is empty when the
    files have none.
    """

    key: str
    series_instance_uid: str
    modality: str
    instances: list[Instance] = field(default_factory=list)

    @property
    def paths(self) -> list[Path]:
        return [i.path for i in self.instances]

    @property
    def sop_class_uids(self) -> set[str]:
        return {sop_class_of(i.header) for i in self.instances}


@dataclass(frozen=True)
class SkippedFile:
    """A file that is not part of any series, and why."""

    path: Path
    reason: str


@dataclass
class Discovery:
    """What ``scan_inputs`` found: the series, and the files it skipped."""

    series: list[SeriesFiles]
    skipped: list[SkippedFile]


def _text(ds: Dataset, keyword: str) -> str:
    """An attribute as stripped text ('' when absent or unreadable): for grouping keys, never for numbers."""
    try:
        value = ds.get(keyword)
    except (TypeError, ValueError):
        return ""
    return "" if value is None else str(value).strip()


def _candidate_files(inputs: Sequence[Path | str], skipped: list[SkippedFile]) -> list[Path]:
    """Every file named or under a named folder (recursive), each once, in a stable order."""
    files: dict[Path, None] = {}
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                files.setdefault(child.resolve(), None)
        elif path.is_file():
            files.setdefault(path.resolve(), None)
        else:
            skipped.append(SkippedFile(path, "no such file or folder"))
    return list(files)


def _looks_like_dicom(ds: Dataset) -> bool:
    """A file read with force=True is a DICOM dataset only if it holds the identifiers every instance has."""
    return any(tag in ds for tag in (0x00080016, 0x00080018, 0x00080060, 0x0020000E, 0x0020000D))


def read_header(path: Path) -> Dataset | str:
    """The header of a DICOM file (no pixel data), or the reason it is not one."""
    if path.name.upper() == "DICOMDIR":
        return "DICOMDIR (a media directory, not an instance)"
    try:
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:  # no preamble: a bare dataset is still DICOM if it has identifiers
            # pydicom guessing at the VR of a text file is no news; deferring large values keeps a
            # garbage length from reading a whole big file into memory.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = dcmread(path, stop_before_pixels=True, force=True, defer_size=1024)
            if not _looks_like_dicom(ds):
                return "not a DICOM file"
        if sop_class_of(ds) == MediaStorageDirectoryStorage:
            return "DICOMDIR (a media directory, not an instance)"
        _text(ds, "SeriesInstanceUID")
        return ds
    except MemoryError:
        raise
    except Exception as exc:  # garbage can fail anywhere in pydicom's parser: the file is skipped, with why
        return f"not a readable DICOM file ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})"


def derived_series_uid(header: Dataset) -> str:
    """A deterministic UID for a series without SeriesInstanceUID, from the attributes its instances share."""
    return generate_uid(entropy_srcs=["spine-node derived series"] + [_text(header, k) for k in _SERIES_ATTRIBUTES])


def derived_study_uid(header: Dataset) -> str:
    """A deterministic UID for a study without StudyInstanceUID (no patient data goes into it)."""
    return generate_uid(entropy_srcs=["spine-node derived study"] + [_text(header, k) for k in _STUDY_ATTRIBUTES])


def _series_key(header: Dataset) -> tuple[str, str]:
    """(key, SeriesInstanceUID as found): the UID when it is a folder-safe UID, else a derived one."""
    uid = _text(header, "SeriesInstanceUID")
    if uid and len(uid) <= 64 and _FOLDER_SAFE_UID.fullmatch(uid):
        return uid, uid
    if uid:
        return generate_uid(entropy_srcs=["spine-node series key", uid]), uid
    return derived_series_uid(header), ""


def scan_inputs(inputs: Sequence[Path | str]) -> Discovery:
    """Group the DICOM files among ``inputs`` (files and folders, recursively) by series, headers only."""
    skipped: list[SkippedFile] = []
    groups: dict[str, SeriesFiles] = {}
    for path in _candidate_files(inputs, skipped):
        header = read_header(path)
        if isinstance(header, str):
            skipped.append(SkippedFile(path, header))
            continue
        key, uid = _series_key(header)
        series = groups.setdefault(key, SeriesFiles(key, uid, _text(header, "Modality")))
        series.instances.append(Instance(path, header))
    for item in skipped:
        log.info("skipped %s: %s", item.path, item.reason)
    return Discovery([groups[k] for k in sorted(groups)], skipped)


def discover_series(inputs: Sequence[Path | str]) -> list[SeriesFiles]:
    """The series among ``inputs``, sorted by key; skipped files are logged (``scan_inputs`` lists them)."""
    return scan_inputs(inputs).series


def _sop_name(sop: str) -> str:
    """A SOP class as a person reads it: its name when pydicom knows it, else the UID."""
    return UID(sop).name if sop else "no SOP class"


def _ct_instances(files: SeriesFiles, uid: str, repairs: list[str]) -> list[Instance]:
    """The CT image instances of a series; others are dropped when CT images remain, else refused."""
    ct, other = [], []
    for instance in files.instances:
        sop = sop_class_of(instance.header)
        is_ct = sop in CT_IMAGE_SOP_CLASSES or (not sop and _text(instance.header, "Modality") == "CT")
        (ct if is_ct else other).append(instance)
    if not ct:
        header = files.instances[0].header
        what = _text(header, "Modality") or "no modality"
        sop = sop_class_of(header)
        raise SeriesRejected("not_ct", uid, f"not a CT image series (modality {what}, {_sop_name(sop)})")
    if other:
        repairs.append(f"dropped_non_ct: left out {len(other)} instance(s) that are not CT images "
                       f"({', '.join(sorted({_sop_name(sop_class_of(i.header)) for i in other}))})")
    multi = [i for i in ct if is_multi_frame(i.header)]
    if multi and (len(multi) > 1 or len(ct) > 1):
        raise SeriesRejected("mixed_instances", uid, f"{len(multi)} multi-frame instance(s) among {len(ct)} CT "
                                                     "instances; only one Enhanced CT or only single-frame slices")
    return ct


def _check_pixel_format(instances: list[Instance], uid: str) -> None:
    """Monochrome, one sample per pixel, rescaled linearly: what HU can be computed from."""
    for instance in instances:
        h = instance.header
        photometric = _text(h, "PhotometricInterpretation")
        samples = _text(h, "SamplesPerPixel") or "1"
        if samples != "1" or photometric not in ("MONOCHROME1", "MONOCHROME2"):
            raise SeriesRejected("unsupported_pixels", uid,
                                 f"instance {sop_instance_uid_of(h)} has {samples} sample(s) per pixel, "
                                 f"{photometric or 'no'} photometric interpretation; CT must be monochrome")
        if "ModalityLUTSequence" in h and "RescaleSlope" not in h:
            raise SeriesRejected("unsupported_pixels", uid, f"instance {sop_instance_uid_of(h)} maps pixels to HU "
                                                            "with a Modality LUT table, not a rescale")


def _check_one_study(instances: list[Instance], uid: str) -> None:
    """A series belongs to one study of one patient; instances that name several are refused.

    A SeriesInstanceUID reused in two studies (a sender's merge or a copied header) would
    put one study's slices in the other's SEG and SR. The refusal gives the study UIDs and
    the instance counts; of the patients only how many there are, never who.
    """
    studies = Counter(_text(i.header, "StudyInstanceUID") for i in instances)
    studies.pop("", None)  # an empty UID is derived later (``_identify``), not a second study
    if len(studies) > 1:
        listed = ", ".join(f"{study} ({n})" for study, n in studies.most_common())
        raise SeriesRejected("mixed_studies", uid, f"its {len(instances)} instances name {len(studies)} studies: "
                                                   f"{listed}; a series belongs to one study")
    patients = {(_text(i.header, "PatientID"), _text(i.header, "IssuerOfPatientID")) for i in instances}
    if len(patients) > 1:
        raise SeriesRejected("mixed_studies", uid, f"its {len(instances)} instances name {len(patients)} different "
                                                   "patients (PatientID / IssuerOfPatientID); a series belongs to "
                                                   "one patient")


def _derived_sop_instance_uid(series_uid: str, header: Dataset) -> str:
    """A deterministic SOPInstanceUID for an instance that has none, even in its file meta."""
    return generate_uid(entropy_srcs=["spine-node derived instance", series_uid] + [
        _text(header, k) for k in ("ImagePositionPatient", "InstanceNumber", "AcquisitionNumber", "ContentTime")])


def _identify(files: SeriesFiles, instances: list[Instance], repairs: list[str]) -> tuple[str, str, list[Dataset]]:
    """Study and series UIDs, and header copies with empty UIDs filled in (recorded as a repair).

    Study and series UIDs are derived from the series' attributes (``derived_study_uid``,
    ``derived_series_uid``); SOP Class and Instance UIDs come from the file meta, or are
    derived from the instance's position and number when the file meta has none either.
    """
    series_uid = files.series_instance_uid or files.key
    study_uid = next((_text(i.header, "StudyInstanceUID") for i in instances
                      if _text(i.header, "StudyInstanceUID")), "") or derived_study_uid(instances[0].header)
    filled: dict[str, int] = {}
    headers = []
    for instance in instances:
        header = copy.deepcopy(instance.header)
        meta_sop_uid = sop_instance_uid_of(header)
        for keyword, value, source in (
                ("StudyInstanceUID", study_uid, "derived"), ("SeriesInstanceUID", series_uid, "derived"),
                ("SOPClassUID", sop_class_of(header), "from the file meta"),
                ("SOPInstanceUID", meta_sop_uid or _derived_sop_instance_uid(series_uid, header),
                 "from the file meta" if meta_sop_uid else "derived")):
            if not _text(header, keyword) and value:
                setattr(header, keyword, value)
                filled[f"{keyword} ({source})"] = filled.get(f"{keyword} ({source})", 0) + 1
        headers.append(header)
    if filled:
        what = ", ".join(f"{k} in {n} instance(s)" for k, n in filled.items())
        repairs.append(f"derived_uids: filled in empty {what}; study {study_uid}, series {series_uid}")
    return study_uid, series_uid, headers


def load_series(files: SeriesFiles, rules: SeriesRules | None = None) -> CTSeries:
    """Load, check and (where documented) repair one CT series; ``SeriesRejected`` says why not.

    The volume is float32 HU (slices, rows, columns) sorted along the slice normal; for a
    gantry tilt within ``rules`` it is resampled in-plane onto an orthogonal grid
    (``resampled=True``). ``source_images`` are the headers of the instances (UIDs filled
    in where they were empty), one per slice, or the one Enhanced CT header.
    """
    rules = rules or SeriesRules()
    uid = files.series_instance_uid or files.key
    if not files.instances:
        raise SeriesRejected("no_instances", uid, "no instances to load")
    repairs: list[str] = []
    instances = _ct_instances(files, uid, repairs)
    _check_pixel_format(instances, uid)
    _check_one_study(instances, uid)
    study_uid, series_uid, headers = _identify(files, instances, repairs)
    plan = plan_stack(frames_of(instances), rules, uid)
    hu = np.empty((len(plan.frames), plan.frames[0].rows, plan.frames[0].columns), np.float32)
    decode_stack(instances, plan, hu, uid)
    repairs += plan.repairs + check_duplicates(instances, plan, hu, uid)
    if plan.tilt is not None:
        shift_slices(hu, plan.tilt.shifts, rules.fill_hu)
    multi = is_multi_frame(instances[0].header)
    return CTSeries(
        hu=hu,
        geometry=Geometry(plan.origin, plan.direction, plan.spacing),
        source_images=[headers[0]] if multi else [headers[f.instance] for f in plan.frames],
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        repairs=repairs,
        warnings=plan.warnings,
        resampled=plan.tilt is not None,
        frame_numbers=[f.frame_number for f in plan.frames] if multi else [],
    )
