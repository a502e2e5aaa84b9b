"""Exact axis permutations and flips between a series' stored voxel order and the model's LPS order.

The model sees every CT as a (z, y, x) array whose axes grow towards the patient's head,
back and left (LPS), the way it was trained. A series keeps its own order (frames along
its slice normal, rows and columns as stored) so that its SEG frames coincide with its
source frames. Between the two there is only a permutation of axes and flips: no
interpolation, so labels go back voxel for voxel. An oblique series is mapped to the
closest such order (the model then sees it slightly rotated, as a scanner's tilt would).
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations

import numpy as np

from pipelines.records import Geometry

# Array axis of the LPS (z, y, x) order that each patient axis (x=L, y=P, z=S) goes to.
_LPS_AXIS_OF_PATIENT = {0: 2, 1: 1, 2: 0}
# Column of Geometry.direction that describes each array axis (k, j, i).
_DIRECTION_COLUMN = {0: 2, 1: 1, 2: 0}


@dataclass(frozen=True)
class Reorientation:
    """``to_lps(a) = flip(transpose(a, axes), flips)``; ``from_lps`` undoes it exactly."""

    axes: tuple[int, int, int]      # source axis placed at each LPS axis
    flips: tuple[bool, bool, bool]  # whether each LPS axis is reversed after the transpose

    def to_lps(self, array: np.ndarray) -> np.ndarray:
        out = np.transpose(array, self.axes)
        return out[tuple(slice(None, None, -1) if f else slice(None) for f in self.flips)]

    def from_lps(self, array: np.ndarray) -> np.ndarray:
        out = array[tuple(slice(None, None, -1) if f else slice(None) for f in self.flips)]
        return np.transpose(out, np.argsort(self.axes))

    def spacing(self, spacing: tuple[float, float, float]) -> tuple[float, float, float]:
        """The (sz, sy, sx) spacing of the LPS array from the source's (slice, row, column) spacing."""
        return tuple(float(spacing[a]) for a in self.axes)


def lps_reorientation(geometry: Geometry) -> Reorientation:
    """The permutation and flips that bring a series' array closest to LPS (z, y, x) order."""
    vectors = [np.asarray(geometry.direction[:, _DIRECTION_COLUMN[a]], float) for a in range(3)]
    best, best_score = None, -1.0
    for patient_axes in permutations(range(3)):  # patient axis served by source axis 0, 1, 2
        score = sum(abs(vectors[a][p]) for a, p in enumerate(patient_axes))
        if score > best_score:
            best, best_score = patient_axes, score
    axes = [0, 0, 0]
    flips = [False, False, False]
    for source_axis, patient_axis in enumerate(best):
        lps_axis = _LPS_AXIS_OF_PATIENT[patient_axis]
        axes[lps_axis] = source_axis
        flips[lps_axis] = bool(vectors[source_axis][patient_axis] < 0)
    return Reorientation(tuple(axes), tuple(flips))
