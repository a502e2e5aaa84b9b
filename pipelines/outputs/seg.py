"""The DICOM Segmentation (SEG) of the vertebrae found in one CT series, written with highdicom.

One segment per vertebra, numbered 1..N from head to feet, each with its SNOMED CT level
code, the category (91723000, SCT, "Anatomical Structure"), a fixed display colour per
level (``dicom_codes``) and an AlgorithmIdentificationSequence naming the model. The SEG
is a new series in the source study (same StudyInstanceUID and FrameOfReferenceUID) and
references the source series. BINARY (Segmentation Storage, 1 bit, one frame per segment
and slice) by default, for the widest viewer support; LABELMAP (Label Map Segmentation
Storage, RLE) on request. Empty frames are omitted, unless ``all_frames`` asks for one frame
per CT slice (and segment), empty ones included.

Geometry is never left for highdicom to guess: every frame's ImagePositionPatient, the
orientation and the pixel spacing come from ``series.geometry``, so the same code writes
a SEG on single-frame CT, on an Enhanced CT (whose frames need not be stored in the
order of ``series.hu``) and on a resampled (tilt-corrected) volume. Where a frame lies on
a source frame (within ``SNAP_FRACTION`` of the slice spacing; 1 micrometre for a
resampled volume) the source's own position is written, so that highdicom records which
source frame each SEG frame derives from; a series that is not resampled must have every
frame on a source frame, or this refuses.

Speed: labels are renumbered with one look-up table, the work is limited to the slab of
slices that hold a vertebra, and no Python loop runs per voxel.
"""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from pipelines.records import CTSeries, ModelIdentity, VertebraFinding
from pipelines.outputs.codes import ANATOMICAL_STRUCTURE, ARTIFICIAL_INTELLIGENCE, level_colour, vertebra_code
from pipelines.errors import DicomWriteError
from pipelines.levels import LEVELS

MANUFACTURER = "spine-node"
SNAP_FRACTION = 0.05
"""A frame within this fraction of the slice spacing of a source frame is written at that frame's position."""
RESAMPLED_SNAP_MM = 1e-3
"""For a resampled volume, only a frame this close (highdicom's own tolerance) takes the source's position."""


def _package_version() -> str:
    try:
        return version("spine-node")
    except PackageNotFoundError:  # running from a checkout that was not installed
        return "0+unknown"


SOFTWARE_VERSION = f"spine-node {_package_version()}"


def reference_headers(series: CTSeries) -> list[Dataset]:
    """The source headers as the SEG and SR reference them.

    A series whose Study/Series Instance UIDs were empty got derived ones (``series.repairs``);
    the headers handed to highdicom must carry those, and the SOP Class/Instance UIDs that
    some files keep only in their file meta. The originals are never modified: a header
    that needs a change is copied.
    """
    out = []
    for ds in series.source_images:
        meta = getattr(ds, "file_meta", None)
        sop_class = ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta else None)
        sop_instance = ds.get("SOPInstanceUID") or (meta.get("MediaStorageSOPInstanceUID") if meta else None)
        absent = [(keyword, vr) for keyword, vr in TYPE2_COPIED if keyword not in ds]
        if (ds.get("StudyInstanceUID") == series.study_instance_uid
                and ds.get("SeriesInstanceUID") == series.series_instance_uid
                and ds.get("SOPClassUID") and ds.get("SOPInstanceUID") and not absent):
            out.append(ds)
            continue
        if not sop_class or not sop_instance:
            raise DicomWriteError(f"series {series.series_instance_uid}: a source instance has no SOP Class "
                                  "or SOP Instance UID, neither in its data set nor in its file meta")
        copy = Dataset(dict(ds.items()))  # a new element dict: replacing elements leaves ds alone
        if meta is not None:
            copy.file_meta = meta
        copy.add_new("StudyInstanceUID", "UI", series.study_instance_uid)
        copy.add_new("SeriesInstanceUID", "UI", series.series_instance_uid)
        copy.add_new("SOPClassUID", "UI", sop_class)
        copy.add_new("SOPInstanceUID", "UI", sop_instance)
        for keyword, vr in absent:  # Type 2: present, empty when unknown
            copy.add_new(keyword, vr, None)
        out.append(copy)
    return out


TYPE2_COPIED = (("PatientName", "PN"), ("PatientID", "LO"), ("PatientBirthDate", "DA"), ("PatientSex", "CS"),
                ("StudyDate", "DA"), ("StudyTime", "TM"), ("ReferringPhysicianName", "PN"), ("StudyID", "SH"),
                ("AccessionNumber", "SH"))
"""Type 2 patient and study attributes the SEG and SR copy from the source; some scanners leave them out."""


def character_set(series: CTSeries) -> dict:
    """``specific_character_set`` for highdicom: the source's, or none at all where the source's is empty.

    highdicom copies the source's SpecificCharacterSet and refuses an empty one, which some
    scanners write (dcmqi's GE CT); an absent value means the default repertoire, as empty does.
    """
    return {"specific_character_set": series.source_images[0].get("SpecificCharacterSet") or None}


def order_findings(findings: list[VertebraFinding]) -> list[VertebraFinding]:
    """Findings head to feet (T1 first), refusing unknown or repeated levels and repeated labels."""
    if not findings:
        raise DicomWriteError("no vertebra was found: a SEG needs at least one segment")
    for f in findings:
        if f.level not in LEVELS:
            raise DicomWriteError(f"finding level {f.level!r} is not one of T1..L5")
        if not 0 < f.label < 256:
            raise DicomWriteError(f"finding {f.level} has label {f.label}; labels are 1..255")
    for attribute in ("level", "label"):
        values = [getattr(f, attribute) for f in findings]
        twice = sorted({str(v) for v in values if values.count(v) > 1})
        if twice:
            raise DicomWriteError(f"two findings share the {attribute} {', '.join(twice)}")
    return sorted(findings, key=lambda f: LEVELS.index(f.level))


def segment_labels(labels: np.ndarray, ordered: list[VertebraFinding]) -> np.ndarray:
    """The label map renumbered to segment numbers 1..N (in ``ordered``), checked against the findings.

    Every non-zero label must belong to a finding and every finding must have voxels: a
    disagreement means the findings were not made from this label map.
    """
    if labels.dtype != np.uint8:
        if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() > 255:
            raise DicomWriteError(f"labels must be uint8 label values, not {labels.dtype}")
        labels = labels.astype(np.uint8)
    counts = np.zeros(256, np.int64)
    for plane in labels:  # per slice: a whole-volume bincount would cast every voxel to int64
        counts += np.bincount(plane.ravel(), minlength=256)
    known = {f.label for f in ordered}
    stray = [int(v) for v in np.flatnonzero(counts[1:]) + 1 if int(v) not in known]
    if stray:
        raise DicomWriteError(f"label values {stray} of the label map belong to no finding")
    empty = [f"{f.level} (label {f.label})" for f in ordered if counts[f.label] == 0]
    if empty:
        raise DicomWriteError(f"finding(s) {', '.join(empty)} have no voxel in the label map")
    lut = np.zeros(256, np.uint8)
    for number, finding in enumerate(ordered, start=1):
        lut[finding.label] = number
    return lut[labels]


def _source_frame_positions(sources: list[Dataset]) -> np.ndarray:
    """ImagePositionPatient of every source frame (single-frame series or one Enhanced CT), (n, 3)."""
    first = sources[0]
    if len(sources) == 1 and int(first.get("NumberOfFrames", 1)) > 1:
        per_frame = first.PerFrameFunctionalGroupsSequence
        if "PlanePositionSequence" in per_frame[0]:
            return np.array([fg.PlanePositionSequence[0].ImagePositionPatient for fg in per_frame], float)
        shared = first.SharedFunctionalGroupsSequence[0]
        return np.array([shared.PlanePositionSequence[0].ImagePositionPatient], float)
    return np.array([ds.ImagePositionPatient for ds in sources], float)


def plane_positions(series: CTSeries, frames: np.ndarray) -> list[hd.PlanePositionSequence]:
    """ImagePositionPatient of each frame index in ``frames``, from the geometry, snapped onto source frames.

    A frame of a series that is not resampled must lie on a source frame: if it does not,
    the CTSeries contradicts its own source headers and no exact SEG can be written.
    """
    geometry = series.geometry
    computed = np.array([geometry.frame_position(int(k)) for k in frames], float)
    sources = _source_frame_positions(series.source_images)
    distances = np.linalg.norm(computed[:, None, :] - sources[None, :, :], axis=-1)
    nearest = distances.argmin(axis=1)
    # A resampled volume's frames are where its geometry says, source frames or not: only rounding is snapped.
    tolerance = RESAMPLED_SNAP_MM if series.resampled else SNAP_FRACTION * geometry.spacing[0]
    close = distances[np.arange(len(frames)), nearest] <= tolerance
    if not series.resampled and not close.all():
        k = int(frames[np.flatnonzero(~close)[0]])
        raise DicomWriteError(
            f"series {series.series_instance_uid}: frame {k} lies "
            f"{distances[np.flatnonzero(~close)[0]].min():.3f} mm from every source frame, "
            "but the series is not marked resampled"
        )
    positions = np.where(close[:, None], sources[nearest], computed)
    return [hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT, [float(v) for v in p])
            for p in positions]


def _pixel_measures(series: CTSeries) -> hd.PixelMeasuresSequence:
    """Pixel spacing (row, column), slice thickness and spacing of the SEG frames, from the geometry.

    The geometry's slice step is signed (negative when the slices run against the normal of
    their rows and columns, as in a stack stored feet first); the DICOM spacing is its size.
    """
    sz, sy, sx = (abs(float(v)) for v in series.geometry.spacing)
    thickness = series.source_images[0].get("SliceThickness") if not series.resampled else None
    return hd.PixelMeasuresSequence(
        pixel_spacing=[sy, sx],
        slice_thickness=float(thickness) if thickness not in (None, "") else sz,
        spacing_between_slices=sz,
    )


def algorithm_identification(model: ModelIdentity) -> hd.AlgorithmIdentificationSequence:
    """The model as DICOM names an algorithm: name, version, family "Artificial Intelligence", its sha256."""
    return hd.AlgorithmIdentificationSequence(
        name=model.name, family=ARTIFICIAL_INTELLIGENCE, version=model.version,
        source=MANUFACTURER, parameters={"sha256": model.sha256},
    )


def segment_descriptions(ordered: list[VertebraFinding], model: ModelIdentity) -> list[hd.seg.SegmentDescription]:
    """One description per finding, numbered 1..N in the given order, with a new tracking UID each."""
    algorithm = algorithm_identification(model)
    return [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=f"{finding.level} vertebra",
            segmented_property_category=ANATOMICAL_STRUCTURE,
            segmented_property_type=vertebra_code(finding.level),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=hd.UID(),
            tracking_id=f"vertebra-{finding.level}",
            display_color=hd.color.CIELabColor.from_rgb(*level_colour(finding.level)),
        )
        for number, finding in enumerate(ordered, start=1)
    ]


def _check_shapes(series: CTSeries, labels: np.ndarray) -> None:
    if labels.shape != series.hu.shape:
        raise DicomWriteError(
            f"series {series.series_instance_uid}: label map shape {labels.shape} "
            f"differs from the CT's {series.hu.shape}"
        )
    if not series.source_images:
        raise DicomWriteError(f"series {series.series_instance_uid} has no source headers to reference")


def build_seg(series: CTSeries, labels: np.ndarray, findings: list[VertebraFinding], model: ModelIdentity, *,
              labelmap: bool = False, series_number: int = 900,
              software_versions: str = SOFTWARE_VERSION, all_frames: bool = False) -> hd.seg.Segmentation:
    """The SEG of ``findings`` on ``series``; sets each finding's ``segment_number`` (1 = most cranial).

    ``labels`` has the shape of ``series.hu`` and holds ``finding.label`` per voxel.
    ``all_frames`` writes a frame for every CT slice (and, BINARY, every segment), empty
    ones included, for viewers that need every frame with the same geometry (MONAI Deploy
    App SDK #397); by default only the slab of slices holding a vertebra, empty frames omitted.
    Raises DicomWriteError when the inputs cannot make a valid, exact SEG.
    """
    _check_shapes(series, labels)
    ordered = order_findings(findings)
    numbered = segment_labels(labels, ordered)
    occupied = np.flatnonzero(numbered.any(axis=(1, 2)))
    if all_frames:
        frames = np.arange(numbered.shape[0])
    else:
        frames = np.arange(occupied[0], occupied[-1] + 1)  # the slab holding vertebrae; empty frames are omitted
    kind = hd.seg.SegmentationTypeValues.LABELMAP if labelmap else hd.seg.SegmentationTypeValues.BINARY
    seg = hd.seg.Segmentation(
        source_images=reference_headers(series),
        pixel_array=numbered[frames[0]:frames[-1] + 1],
        segmentation_type=kind,
        segment_descriptions=segment_descriptions(ordered, model),
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=model.name,
        software_versions=software_versions,
        device_serial_number=model.sha256[:16] or "unknown",
        content_label="VERTEBRAE",
        content_description=f"Vertebrae T1-L5 by {model.name} {model.version}"[:64],
        series_description="Vertebrae (spine-node)",
        transfer_syntax_uid=RLELossless if labelmap else ExplicitVRLittleEndian,
        plane_positions=plane_positions(series, frames),
        plane_orientation=hd.PlaneOrientationSequence(hd.CoordinateSystemNames.PATIENT,
                                                      series.geometry.image_orientation),
        pixel_measures=_pixel_measures(series),
        omit_empty_frames=not all_frames,
        **character_set(series),
    )
    if "ContentCreatorName" not in seg:
        seg.ContentCreatorName = ""  # type 2 in the Content Identification macro: present, empty (no person)
    for number, finding in enumerate(ordered, start=1):
        finding.segment_number = number
    return seg
