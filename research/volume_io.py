"""Reading NIfTI (or any ITK format) volumes into the (z, y, x) LPS-aligned arrays the models use.

A volume is reoriented to LPS (index i towards the patient's left, j towards the back,
k towards the head) with SimpleITK's DICOMOrient, a pure permutation/flip of axes, so
that a PIR crop from VerSe and an axial DICOM series reach the network the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pipelines.errors import PipelineError


@dataclass
class Volume:
    """A (z, y, x) array on an LPS-aligned grid, with spacing (sz, sy, sx) in mm."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    image: sitk.Image  # the reoriented ITK image, for its geometry


def read_volume(path: Path | str) -> Volume:
    """Read an image file (or a folder holding one DICOM series) reoriented to LPS; a clear error if unreadable."""
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path}: no such file or folder")
    try:
        image = _read_series(path) if path.is_dir() else sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise PipelineError(f"{path}: cannot be read as an image ({str(exc).strip().splitlines()[-1]})") from None
    image = sitk.DICOMOrient(image, "LPS")
    array = sitk.GetArrayFromImage(image)
    sx, sy, sz = image.GetSpacing()
    return Volume(array, (float(sz), float(sy), float(sx)), image)


def _read_series(folder: Path) -> sitk.Image:
    """The single DICOM series in a folder, through GDCM (which also decodes JPEG 2000).

    This is the quick reader for evaluation; the pipeline's own DICOM loader, with
    validation and repairs, is ``spine-node process``'s business.
    """
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if len(series) != 1:
        raise PipelineError(f"{folder}: expected one DICOM series, found {len(series)}")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0]))
    return reader.Execute()


def same_grid(a: Volume, b: Volume, tolerance_mm: float = 1e-3) -> bool:
    """Whether two volumes share shape, spacing and origin (so voxels can be compared one to one)."""
    return (a.array.shape == b.array.shape
            and np.allclose(a.spacing, b.spacing, atol=tolerance_mm)
            and np.allclose(a.image.GetOrigin(), b.image.GetOrigin(), atol=max(tolerance_mm, 1e-2)))
