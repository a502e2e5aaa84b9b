"""The hand-off records between the pipeline's stages: a loaded CT series and what was found in it.

``CTSeries`` is what the DICOM loader (``series.py``) returns and what the SEG/SR writers
(``seg.py``, ``sr.py``) and the segmentation step consume. Its voxel array keeps the
*source's* frame order and in-plane axes (sorted along the slice normal, rows and columns
as stored), so that frame k of any label map on it is exactly source frame k: no
resampling or reorientation stands between the CT and the SEG written on it.
``Geometry`` says where every voxel is in patient coordinates (LPS, mm).

``VertebraFinding`` and ``ModelIdentity`` are the findings of one series and the identity
of the model that made them, as the SEG, the SR, ``summary.json`` and SQL record them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset


@dataclass(frozen=True)
class Geometry:
    """Where voxel (k, j, i) of a (slices, rows, columns) array lies, in LPS millimetres.

    position(k, j, i) = origin + i * spacing[2] * direction[:, 0]
                               + j * spacing[1] * direction[:, 1]
                               + k * spacing[0] * direction[:, 2]

    ``direction`` columns are the unit row direction (along a row, index i: DICOM's first
    ImageOrientationPatient triplet), the unit column direction (index j: the second
    triplet) and the unit direction from frame 0 to frame 1 (index k). ``spacing`` is
    (between slices, between rows, between columns), i.e. (sz, sy, sx).
    """

    origin: np.ndarray
    direction: np.ndarray
    spacing: tuple[float, float, float]

    def frame_position(self, k: int) -> np.ndarray:
        """ImagePositionPatient of frame k (the centre of its first voxel)."""
        return self.origin + k * self.spacing[0] * self.direction[:, 2]

    @property
    def image_orientation(self) -> list[float]:
        """ImageOrientationPatient (row direction, then column direction)."""
        return [float(v) for v in (*self.direction[:, 0], *self.direction[:, 1])]


@dataclass
class CTSeries:
    """One CT series, loaded, validated and (where documented) repaired.

    ``hu`` is float32 (slices, rows, columns) in Hounsfield units. ``source_images`` are the
    headers (no pixel data) of the instances a SEG must reference: one per frame for a
    single-frame series, in the order of ``hu``; the single dataset of an Enhanced CT. A
    series without Study/Series Instance UIDs gets derived ones, and ``repairs`` says so.
    """

    hu: np.ndarray
    geometry: Geometry
    source_images: list[Dataset]
    study_instance_uid: str
    series_instance_uid: str
    repairs: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    resampled: bool = False  # True when hu no longer sits on the source frames (e.g. a tilt was resampled)
    # For a multi-frame source (Enhanced CT): the 1-based frame number in source_images[0] of each slice
    # of hu (sorted along the normal, so not necessarily 1, 2, 3...); empty for single-frame series.
    frame_numbers: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class ModelIdentity:
    """The model that produced the findings, as the SEG, the SR and the provenance name it."""

    name: str
    version: str
    sha256: str


@dataclass
class VertebraFinding:
    """One vertebra found in a series: its level, where it is in the label map, and its lesion class."""

    level: str                 # "T1" .. "L5"
    label: int                 # its value in the label map handed to the SEG writer
    voxels: int
    volume_ml: float
    mean_hu: float
    lesion: str = "none"       # "none" | "lytic" | "blastic" | "mixed" | "indeterminate" (no call made)
    features: dict[str, object] = field(default_factory=dict)  # numbers, the reason, the thresholds used
    segment_number: int = 0    # set by the SEG writer (1-based, in head-to-feet order)
    measurements: dict[str, object] = field(default_factory=dict)  # the spine report (pipelines.measure)
