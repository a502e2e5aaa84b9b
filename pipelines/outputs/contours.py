"""Outlines of label-map regions on CT slices, in image and in patient coordinates.

Shared by the SR (one outline per vertebra, on the slice through its centre, for viewers
that draw SCOORD/SCOORD3D) and the RTSTRUCT (every slice of every vertebra).

Contours are ``skimage.measure.find_contours`` at level 0.5 of the zero-padded binary
mask, so each one runs through the midpoints between inside and outside pixel centres:
filling a contour (pixel centres inside it) gives the mask back, holes included when the
contours of one slice are combined by the even-odd rule (as RTSTRUCT readers do).
Collinear points are dropped (``approximate_polygon`` with a tolerance far below a
pixel), which keeps the files small without moving the outline.

Coordinates:

* image: (row, column) of ``series.hu``'s slice, pixel centres at whole numbers;
* SCOORD (DICOM PS3.3 C.18.6.1.1): (column, row) with (0, 0) the top-left corner of the
  top-left pixel, so a pixel centre is index + 0.5;
* patient: LPS millimetres from ``Geometry`` (origin = centre of the first voxel).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.measure import approximate_polygon, find_contours

from pipelines.records import Geometry

SIMPLIFY_TOLERANCE = 0.05
"""Largest distance (pixels) a dropped point may lie from the simplified outline."""
MIN_POINTS = 3
"""A contour with fewer distinct points encloses nothing."""


@dataclass(frozen=True)
class Outline:
    """One closed contour on slice ``k``: ``rc`` is (n, 2) row/column, first point repeated last."""

    k: int
    rc: np.ndarray

    def scoord(self) -> np.ndarray:
        """(n, 2) column/row pixel coordinates as SCOORD GraphicData wants them (pixel centre = index + 0.5)."""
        return np.stack([self.rc[:, 1] + 0.5, self.rc[:, 0] + 0.5], axis=1)

    def patient(self, geometry: Geometry) -> np.ndarray:
        """(n, 3) LPS millimetre coordinates of the points (as SCOORD3D and RTSTRUCT want them)."""
        return patient_points(self.rc, self.k, geometry)


def patient_points(rc: np.ndarray, k: float, geometry: Geometry) -> np.ndarray:
    """LPS millimetres of (row, column) points on slice ``k`` of a volume with ``geometry``."""
    sz, sy, sx = geometry.spacing
    direction = np.asarray(geometry.direction, float)
    origin = np.asarray(geometry.origin, float)
    rows, cols = rc[:, 0:1], rc[:, 1:2]
    return origin + cols * sx * direction[:, 0] + rows * sy * direction[:, 1] + k * sz * direction[:, 2]


def slice_outlines(mask: np.ndarray, k: int) -> list[Outline]:
    """The closed contours of a 2-D boolean ``mask`` (outer boundaries and holes alike)."""
    if not mask.any():
        return []
    padded = np.pad(mask.astype(np.uint8), 1)
    outlines = []
    for contour in find_contours(padded, 0.5):
        contour = contour - 1.0  # undo the padding
        simplified = approximate_polygon(contour, tolerance=SIMPLIFY_TOLERANCE)
        if not np.allclose(simplified[0], simplified[-1]):
            simplified = np.vstack([simplified, simplified[:1]])
        if len(simplified) - 1 >= MIN_POINTS:
            outlines.append(Outline(k, simplified))
    return outlines


def centre_slice(mask: np.ndarray) -> int:
    """The slice index through the centre of a 3-D boolean ``mask``: its centroid's, or the nearest one it touches."""
    counts = mask.sum(axis=(1, 2))
    occupied = np.flatnonzero(counts)
    if occupied.size == 0:
        raise ValueError("the mask is empty: it has no centre slice")
    centroid = float((np.arange(mask.shape[0]) * counts).sum() / counts.sum())
    return int(occupied[np.argmin(np.abs(occupied - centroid))])


def largest(outlines: list[Outline]) -> Outline:
    """The outline that encloses the largest area (shoelace formula)."""
    def area(outline: Outline) -> float:
        r, c = outline.rc[:, 0], outline.rc[:, 1]
        return abs(float(np.dot(r, np.roll(c, 1)) - np.dot(c, np.roll(r, 1)))) / 2.0

    return max(outlines, key=area)


def label_boxes(labels: np.ndarray) -> dict[int, tuple[slice, ...]]:
    """The bounding box of every label value present (one pass over the volume)."""
    from scipy import ndimage

    return {value: box for value, box in enumerate(ndimage.find_objects(labels), start=1) if box is not None}


def centre_outline(labels: np.ndarray, label: int, box: tuple[slice, ...] | None = None) -> Outline:
    """The largest contour of ``label`` on the slice through its centre.

    Looks only inside the label's bounding box ``box`` (from ``label_boxes``; found here when
    not given), so the cost does not grow with the volume. Raises ValueError when the label
    has no voxel.
    """
    if box is None:
        box = label_boxes(labels).get(label)
    if box is None:
        raise ValueError(f"label {label} has no voxel")
    mask = labels[box] == label
    k_local = centre_slice(mask)
    outline = largest(slice_outlines(mask[k_local], 0) or [Outline(0, _pixel_square(mask[k_local]))])
    offset = np.array([box[1].start, box[2].start], float)
    return Outline(box[0].start + k_local, outline.rc + offset)


def _pixel_square(mask2d: np.ndarray) -> np.ndarray:
    """A closed square around the first pixel of a mask too small for a contour."""
    r, c = np.argwhere(mask2d)[0]
    return np.array([[r - 0.5, c - 0.5], [r - 0.5, c + 0.5], [r + 0.5, c + 0.5], [r + 0.5, c - 0.5], [r - 0.5, c - 0.5]],
                    float)


def fill(outlines: list[Outline], shape: tuple[int, int]) -> np.ndarray:
    """The boolean mask of pixel centres inside ``outlines`` by the even-odd rule (holes cut out)."""
    from skimage.draw import polygon

    mask = np.zeros(shape, bool)
    for outline in outlines:
        rr, cc = polygon(outline.rc[:, 0], outline.rc[:, 1], shape)
        part = np.zeros(shape, bool)
        part[rr, cc] = True
        mask ^= part
    return mask
