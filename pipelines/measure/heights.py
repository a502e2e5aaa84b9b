"""Vertebral body heights in the vertebra's own frame, height loss, and the Genant grade.

Heights are measured on the mid-sagittal plane of the body, at 15 % (posterior), 50 %
(middle) and 85 % (anterior) of its depth (the depth taken on the mid-sagittal slab,
within ``SLAB_FRACTION`` of the body's width of its centre). Each height is the median,
over a 3 x 3 bundle of rays parallel to the superior axis (``RAY_SPREAD_MM`` apart), of the
length each ray runs inside the 0.5 iso-surface of the body mask (trilinear interpolation):
the mask's surface lies halfway between its inside and outside voxels, so the length is
unbiased on any grid, oblique ones included.

Genant's semi-quantitative method (Genant et al., J Bone Miner Res 1993): the largest of
the wedge (1 - anterior/posterior), biconcave (1 - middle/posterior) and crush (1 -
posterior / the neighbours' mean posterior) reductions grades the vertebra: below 20 %
grade 0, 20-25 % grade 1, 25-40 % grade 2, 40 % or more grade 3; the reduction that decided
it names the morphology.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipelines.measure.frame import VertebraFrame
from pipelines.records import Geometry

POSITIONS = {"posterior": 0.15, "middle": 0.50, "anterior": 0.85}
SLAB_FRACTION = 0.15
MIN_SLAB_MM = 3.0
RAY_SPREAD_MM = 1.0
RAY_STEP_MM = 0.1
GENANT_LIMITS = ((0.40, 3), (0.25, 2), (0.20, 1))


@dataclass(frozen=True)
class Heights:
    """Anterior, middle and posterior body heights (mm), or the reason they could not be measured."""

    anterior: float | None
    middle: float | None
    posterior: float | None
    reason: str = ""

    def as_dict(self) -> dict | None:
        if self.anterior is None:
            return None
        return {"anterior": round(self.anterior, 1), "middle": round(self.middle, 1),
                "posterior": round(self.posterior, 1)}


@dataclass(frozen=True)
class Genant:
    """The grade (0-3), the morphology of the largest reduction and the reductions themselves (%)."""

    grade: int | None
    morphology: str | None
    loss_pct: float | None
    loss_vs_neighbours_pct: float | None
    reason: str = ""


def body_heights(body: np.ndarray, offset, geometry: Geometry, frame: VertebraFrame,
                 body_points: np.ndarray) -> Heights:
    """The three heights along rays through the mask ``body`` (a box of the series' grid at ``offset``), in ``frame``.

    ``body_points`` (LPS mm of the vertebral body's voxels) place the rays: the depth and
    the mid-sagittal plane are the body's, not the posterior elements'.
    """
    sup, ant, left = frame.coordinates(body_points).T
    width = float(np.percentile(left, 95) - np.percentile(left, 5))
    slab = np.abs(left - np.median(left)) <= max(MIN_SLAB_MM, SLAB_FRACTION * width)
    if slab.sum() < 20:
        return Heights(None, None, None, "too few body voxels on the mid-sagittal plane")
    back, front = float(np.percentile(ant[slab], 3)), float(np.percentile(ant[slab], 97))
    reach = float(sup.max() - sup.min()) + 10.0
    centre_left = float(np.median(left))
    heights = {}
    for name, fraction in POSITIONS.items():
        u = back + fraction * (front - back)
        lengths = [_inside_length(body, offset, geometry, frame, u + du, centre_left + dv, reach)
                   for du in (-RAY_SPREAD_MM, 0.0, RAY_SPREAD_MM) for dv in (-RAY_SPREAD_MM, 0.0, RAY_SPREAD_MM)]
        height = float(np.median(lengths))
        if height <= 0:
            return Heights(None, None, None, f"no body at the {name} height")
        heights[name] = height
    return Heights(heights["anterior"], heights["middle"], heights["posterior"])


def _inside_length(body: np.ndarray, offset, geometry: Geometry, frame: VertebraFrame, u: float, v: float,
                   reach: float) -> float:
    """How long the ray at (anterior u, left v), along the superior axis, runs inside the mask's 0.5 surface."""
    t = np.arange(-reach, reach, RAY_STEP_MM)
    points = frame.centre + np.outer(t, frame.superior) + u * frame.anterior + v * frame.left
    steps = geometry.direction * np.array([geometry.spacing[2], geometry.spacing[1], geometry.spacing[0]])
    ijk = np.linalg.solve(steps, (points - geometry.origin).T)
    kji = ijk[::-1] - np.asarray(offset, dtype=np.float64)[:, None]
    inside = ndimage.map_coordinates(body.astype(np.float32), kji, order=1, cval=0.0) >= 0.5
    runs, count = ndimage.label(inside)
    if count == 0:
        return 0.0
    return float(np.bincount(runs)[1:].max()) * RAY_STEP_MM  # the longest run: the body, not a spur beside it


def genant(heights: Heights, neighbour_posteriors: list[float]) -> Genant:
    """Grade one vertebra from its heights and its neighbours' posterior heights (mm)."""
    if heights.anterior is None:
        return Genant(None, None, None, None, heights.reason or "no heights")
    reductions = {"wedge": 1 - heights.anterior / heights.posterior,
                  "biconcave": 1 - heights.middle / max(heights.posterior, heights.anterior)}
    versus = None
    if neighbour_posteriors:
        versus = 1 - heights.posterior / float(np.mean(neighbour_posteriors))
        reductions["crush"] = versus
    morphology, loss = max(reductions.items(), key=lambda kv: kv[1])
    loss = max(loss, 0.0)
    grade = next((g for limit, g in GENANT_LIMITS if loss >= limit), 0)
    return Genant(grade, morphology if grade else None, round(100 * loss, 1),
                  None if versus is None else round(100 * versus, 1))
