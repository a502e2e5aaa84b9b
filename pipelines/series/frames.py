"""The frames of a DICOM CT series, read from headers alone: where each frame lies and how to rescale it.

A single-frame CT instance is one frame; an Enhanced (or Legacy Converted Enhanced) CT
instance holds many, each described by its functional groups (PlanePositionSequence,
PlaneOrientationSequence, PixelMeasuresSequence, PixelValueTransformationSequence,
CTImageFrameTypeSequence), per frame or shared. ``frames_of`` turns both into the same
``Frame`` records so that the checks and the decoder never care which kind they got.

Header values may be absent, empty or malformed in real files: every reader here returns
``None`` for those instead of raising, and the checks turn ``None`` into a refusal that
names the instance.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
)

CT_IMAGE_SOP_CLASSES = {
    CTImageStorage: "CT Image Storage",
    EnhancedCTImageStorage: "Enhanced CT Image Storage",
    LegacyConvertedEnhancedCTImageStorage: "Legacy Converted Enhanced CT Image Storage",
}
MULTI_FRAME_CT = {EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage}


@dataclass
class Instance:
    """One DICOM file of a series: where it is and its header (read without pixel data)."""

    path: Path
    header: Dataset


@dataclass(eq=False)  # compared by identity: a frame is one image, whatever its values
class Frame:
    """One 2D image of a series, as its headers describe it.

    ``frame_number`` is the 1-based frame within a multi-frame instance, 0 for a
    single-frame one. Geometry fields are ``None`` when missing or unreadable.
    """

    instance: int                      # index into the series' instances
    frame_number: int
    sop_instance_uid: str
    instance_number: int | None
    image_type: tuple[str, ...]
    position: np.ndarray | None        # ImagePositionPatient (3,)
    orientation: np.ndarray | None     # ImageOrientationPatient (6,)
    pixel_spacing: np.ndarray | None   # (between rows, between columns)
    rows: int
    columns: int
    slope: float | None
    intercept: float | None

    @property
    def label(self) -> str:
        """How a person finds this frame: its SOPInstanceUID, and its frame number in a multi-frame."""
        uid = self.sop_instance_uid or "(no SOPInstanceUID)"
        return f"{uid} frame {self.frame_number}" if self.frame_number else uid

    @property
    def is_localizer(self) -> bool:
        """ImageType (or FrameType) says LOCALIZER: a scout/topogram, never part of the volume."""
        return "LOCALIZER" in self.image_type


def sop_class_of(header: Dataset) -> str:
    """SOPClassUID of an instance, from its dataset or, when empty there, from its file meta."""
    uid = str(header.get("SOPClassUID", "") or "").strip()
    if not uid:
        meta = getattr(header, "file_meta", None)
        uid = str(meta.get("MediaStorageSOPClassUID", "") or "").strip() if meta is not None else ""
    return uid


def sop_instance_uid_of(header: Dataset) -> str:
    """SOPInstanceUID of an instance, from its dataset or, when empty there, from its file meta."""
    uid = str(header.get("SOPInstanceUID", "") or "").strip()
    if not uid:
        meta = getattr(header, "file_meta", None)
        uid = str(meta.get("MediaStorageSOPInstanceUID", "") or "").strip() if meta is not None else ""
    return uid


def is_multi_frame(header: Dataset) -> bool:
    """An enhanced CT (per-frame functional groups), whatever its number of frames."""
    return sop_class_of(header) in MULTI_FRAME_CT or "PerFrameFunctionalGroupsSequence" in header


def _floats(ds: Dataset | None, keyword: str, count: int) -> np.ndarray | None:
    """``count`` finite floats of a multi-valued numeric attribute, or None if absent, empty or malformed."""
    if ds is None:
        return None
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        values = np.array([float(v) for v in (value if count > 1 else [value])], dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        return None
    if values.shape != (count,) or not np.all(np.isfinite(values)):
        return None
    return values


def _float(ds: Dataset | None, keyword: str) -> float | None:
    values = _floats(ds, keyword, 1)
    return None if values is None else float(values[0])


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _image_type(ds: Dataset | None, keyword: str = "ImageType") -> tuple[str, ...]:
    if ds is None:
        return ()
    value = ds.get(keyword) or ()
    values = [value] if isinstance(value, str) else list(value)
    return tuple(str(v).strip().upper() for v in values)


def _single_frame(index: int, header: Dataset) -> Frame:
    return Frame(
        instance=index,
        frame_number=0,
        sop_instance_uid=sop_instance_uid_of(header),
        instance_number=_int(header, "InstanceNumber"),
        image_type=_image_type(header),
        position=_floats(header, "ImagePositionPatient", 3),
        orientation=_floats(header, "ImageOrientationPatient", 6),
        pixel_spacing=_floats(header, "PixelSpacing", 2),
        rows=_int(header, "Rows") or 0,
        columns=_int(header, "Columns") or 0,
        slope=_float(header, "RescaleSlope"),
        intercept=_float(header, "RescaleIntercept"),
    )


def _group_item(header: Dataset, frame_item: Dataset | None, sequence: str) -> Dataset | None:
    """The first item of functional group ``sequence`` for one frame: per-frame first, else shared."""
    for holder in (frame_item, _first(header.get("SharedFunctionalGroupsSequence"))):
        if holder is not None and sequence in holder:
            item = _first(holder.get(sequence))
            if item is not None:
                return item
    return None


def _first(sequence) -> Dataset | None:
    try:
        return sequence[0] if sequence else None
    except (TypeError, IndexError):
        return None


def _multi_frame(index: int, header: Dataset) -> list[Frame]:
    """The frames of an enhanced CT instance, from its per-frame and shared functional groups."""
    count = _int(header, "NumberOfFrames") or 1
    per_frame = header.get("PerFrameFunctionalGroupsSequence") or []
    uid = sop_instance_uid_of(header)
    frames = []
    for f in range(count):
        item = per_frame[f] if f < len(per_frame) else None
        plane = _group_item(header, item, "PlanePositionSequence")
        orient = _group_item(header, item, "PlaneOrientationSequence")
        measures = _group_item(header, item, "PixelMeasuresSequence")
        rescale = _group_item(header, item, "PixelValueTransformationSequence")
        frame_type = _image_type(_group_item(header, item, "CTImageFrameTypeSequence"), "FrameType")
        frames.append(Frame(
            instance=index,
            frame_number=f + 1,
            sop_instance_uid=uid,
            instance_number=_int(header, "InstanceNumber"),
            image_type=frame_type or _image_type(header),
            position=_floats(plane, "ImagePositionPatient", 3),
            orientation=_floats(orient, "ImageOrientationPatient", 6),
            pixel_spacing=_floats(measures, "PixelSpacing", 2),
            rows=_int(header, "Rows") or 0,
            columns=_int(header, "Columns") or 0,
            slope=_float(rescale, "RescaleSlope") if rescale is not None else _float(header, "RescaleSlope"),
            intercept=(_float(rescale, "RescaleIntercept") if rescale is not None
                       else _float(header, "RescaleIntercept")),
        ))
    return frames


def frames_of(instances: list[Instance]) -> list[Frame]:
    """Every frame of every instance, in instance order (single-frame: one each; enhanced: all of its frames)."""
    frames: list[Frame] = []
    for index, instance in enumerate(instances):
        if is_multi_frame(instance.header):
            frames.extend(_multi_frame(index, instance.header))
        else:
            frames.append(_single_frame(index, instance.header))
    return frames
