"""A vertebra's own frame: superior along the column, anterior from its posterior elements to its body.

Points are voxel centres in LPS millimetres (``Geometry``: exact for oblique series too).
The superior axis comes from the neighbours' body centroids when there are any (the
column's own direction, which a wedge fracture does not tilt), else from the body's
flattest principal axis; anterior is the direction from the centroid of the posterior
elements to the body's, made orthogonal to it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.records import Geometry

SUPERIOR = np.array([0.0, 0.0, 1.0])   # LPS: +z is the head
ANTERIOR = np.array([0.0, -1.0, 0.0])  # LPS: +y is posterior


@dataclass(frozen=True)
class VertebraFrame:
    """Origin at the body's centroid; unit axes superior, anterior and left (right-handed: left = sup x ant)."""

    centre: np.ndarray
    superior: np.ndarray
    anterior: np.ndarray
    left: np.ndarray

    def coordinates(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) LPS points as (superior, anterior, left) millimetres in this frame."""
        rel = points - self.centre
        return np.stack([rel @ self.superior, rel @ self.anterior, rel @ self.left], axis=1)


def voxel_points(mask: np.ndarray, geometry: Geometry, offset=(0, 0, 0)) -> np.ndarray:
    """LPS millimetres of the True voxels of ``mask`` (a box of the series' grid starting at ``offset``)."""
    k, j, i = np.nonzero(mask)
    index = np.stack([i + offset[2], j + offset[1], k + offset[0]], axis=1).astype(np.float64)
    steps = geometry.direction * np.array([geometry.spacing[2], geometry.spacing[1], geometry.spacing[0]])
    return geometry.origin + index @ steps.T


def vertebra_frame(body: np.ndarray, elements: np.ndarray, column_axis: np.ndarray | None) -> VertebraFrame:
    """The frame of one vertebra from its body points, its posterior-element points and the column's axis."""
    centre = body.mean(axis=0)
    superior = _unit(column_axis) if column_axis is not None else _flattest_axis(body)
    if superior @ SUPERIOR < 0:
        superior = -superior
    anterior = centre - elements.mean(axis=0) if len(elements) >= 10 else ANTERIOR.copy()
    anterior = anterior - (anterior @ superior) * superior
    if np.linalg.norm(anterior) < 1e-6:
        anterior = ANTERIOR - (ANTERIOR @ superior) * superior
    anterior = _unit(anterior)
    return VertebraFrame(centre, superior, anterior, np.cross(superior, anterior))


def tilt_degrees(a: np.ndarray, b: np.ndarray) -> float:
    """The angle between two axes, sign ignored."""
    return float(np.degrees(np.arccos(min(1.0, abs(float(_unit(a) @ _unit(b)))))))


def _flattest_axis(points: np.ndarray) -> np.ndarray:
    """The principal axis of least spread: a vertebral body is lower than it is wide or deep."""
    _, vectors = np.linalg.eigh(np.cov((points - points.mean(axis=0)).T))
    return vectors[:, 0]


def _unit(v: np.ndarray) -> np.ndarray:
    return np.asarray(v, dtype=np.float64) / float(np.linalg.norm(v))
