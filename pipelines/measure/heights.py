"""Vertebral body heights in the vertebra's own frame, height loss, and the Genant grade.

Heights are measured on the mid-sagittal plane of the body, at 15 % (posterior), 50 %
(middle) and 85 % (anterior) of its depth: wall to wall along rays through the body's centre
where they find its surface (``_walls``), else the body's voxels on the mid-sagittal slab,
within ``SLAB_FRACTION`` of the body's width of its centre. Each height is the mean, less
the ``BUNDLE_TRIM`` shortest and longest, over a 5 x 5 bundle of rays parallel to the
superior axis (``BUNDLE_OFFSETS_MM``), of the length each ray runs inside the 0.5
iso-surface of the body mask (trilinear interpolation): the mask's surface lies halfway
between its inside and outside voxels, so the length is unbiased on any grid, oblique ones
included; one ray steps by whole slices where an endplate curves, the bundle's mean does
not (a median of 3 x 3 rays jumped by a slice between a series and its prone copy).

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
BUNDLE_OFFSETS_MM = (-2.0, -1.0, 0.0, 1.0, 2.0)
BUNDLE_TRIM = 0.2
RAY_STEP_MM = 0.1
WALL_TOLERANCE_MM = 2.0
GENANT_LIMITS = ((0.40, 3), (0.25, 2), (0.20, 1))


@dataclass(frozen=True)
class Heights:
    """Anterior, middle and posterior body heights (mm), or the reason they could not be measured.

    ``lines``: each height as drawn, its two end points in LPS mm (a (2, 3) array per name).
    """

    anterior: float | None
    middle: float | None
    posterior: float | None
    reason: str = ""
    lines: dict | None = None

    def lines_as_lists(self) -> dict | None:
        """The drawn heights as JSON lists, rounded to 0.01 mm."""
        if self.lines is None:
            return None
        return {name: np.round(points, 2).tolist() for name, points in self.lines.items()}

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
    centre_left = float(np.median(left))
    back, front = float(np.percentile(ant[slab], 3)), float(np.percentile(ant[slab], 97))
    walls = _walls(body, offset, geometry, frame, centre_left, float(np.ptp(ant)) + 10.0)
    if walls is not None:  # the mask's own surface where the ray finds it; the body's voxels where it runs on
        back = walls[0] if walls[0] >= back - WALL_TOLERANCE_MM else back
        front = max(front, walls[1])
    reach = float(sup.max() - sup.min()) + 10.0
    heights, lines = {}, {}
    for name, fraction in POSITIONS.items():
        u = back + fraction * (front - back)
        runs = [_inside_run(body, offset, geometry, frame, u + du, centre_left + dv, reach)
                for du in BUNDLE_OFFSETS_MM for dv in BUNDLE_OFFSETS_MM]
        lengths = np.sort([end - start for start, end in runs])
        cut = int(BUNDLE_TRIM * len(lengths))
        height = float(np.mean(lengths[cut:len(lengths) - cut]))
        if height <= 0:
            return Heights(None, None, None, f"no body at the {name} height")
        heights[name] = height
        lines[name] = _line(frame, u, centre_left, runs[len(runs) // 2], height)
    return Heights(heights["anterior"], heights["middle"], heights["posterior"], lines=lines)


def _line(frame: VertebraFrame, u: float, v: float, run: tuple[float, float], height: float) -> np.ndarray:
    """The (2, 3) LPS end points of a height as drawn: ``height`` long, centred on the central ray's run."""
    middle = 0.5 * (run[0] + run[1])
    base = frame.centre + u * frame.anterior + v * frame.left
    return np.stack([base + (middle - 0.5 * height) * frame.superior, base + (middle + 0.5 * height) * frame.superior])


def _walls(mask: np.ndarray, offset, geometry: Geometry, frame: VertebraFrame, centre_left: float,
           reach: float) -> tuple[float, float] | None:
    """The posterior and anterior walls (anterior coordinates, mm) where rays along the anterior axis leave the mask.

    The rays run through the body's centre on its mid-sagittal plane (a bundle, ``RAY_SPREAD_MM``
    apart, medians taken), and the run that holds the centre ends on the mask's 0.5 surface.
    In front, that is the anterior wall, which percentiles of the body's voxels miss on a thin
    anterior wedge (the opening that finds the body rounds it off). Behind, it is the posterior
    wall where the spinal canal follows, and runs on into the posterior elements where a mask
    joins them there: the caller keeps it only when it lies within ``WALL_TOLERANCE_MM`` of the
    body's voxels.
    """
    ends = []
    t = np.arange(-reach, reach, RAY_STEP_MM)
    for ds in (-RAY_SPREAD_MM, 0.0, RAY_SPREAD_MM):
        for dv in (-RAY_SPREAD_MM, 0.0, RAY_SPREAD_MM):
            points = frame.centre + np.outer(t, frame.anterior) + ds * frame.superior + (centre_left + dv) * frame.left
            runs, _ = ndimage.label(_inside(mask, offset, geometry, points))
            here = runs[len(t) // 2]
            if here:
                where = np.nonzero(runs == here)[0]
                ends.append((t[where[0]] - 0.5 * RAY_STEP_MM, t[where[-1]] + 0.5 * RAY_STEP_MM))
    if len(ends) < 5:
        return None
    back, front = np.median(np.array(ends), axis=0)
    return float(back), float(front)


def _inside(mask: np.ndarray, offset, geometry: Geometry, points: np.ndarray) -> np.ndarray:
    """Whether each LPS point lies inside the 0.5 surface of ``mask`` (a box of the series' grid at ``offset``)."""
    steps = geometry.direction * np.array([geometry.spacing[2], geometry.spacing[1], geometry.spacing[0]])
    ijk = np.linalg.solve(steps, (points - geometry.origin).T)
    kji = ijk[::-1] - np.asarray(offset, dtype=np.float64)[:, None]
    return ndimage.map_coordinates(mask.astype(np.float32), kji, order=1, cval=0.0) >= 0.5


def _inside_run(body: np.ndarray, offset, geometry: Geometry, frame: VertebraFrame, u: float, v: float,
                reach: float) -> tuple[float, float]:
    """Where the ray at (anterior u, left v), along the superior axis, runs inside the mask's 0.5 surface.

    (start, end) along the superior axis from the frame's centre, mm; the longest run (the
    body, not a spur beside it); (0, 0) where the ray misses the mask.
    """
    t = np.arange(-reach, reach, RAY_STEP_MM)
    points = frame.centre + np.outer(t, frame.superior) + u * frame.anterior + v * frame.left
    runs, count = ndimage.label(_inside(body, offset, geometry, points))
    if count == 0:
        return 0.0, 0.0
    where = np.nonzero(runs == 1 + int(np.argmax(np.bincount(runs)[1:])))[0]
    return float(t[where[0]] - 0.5 * RAY_STEP_MM), float(t[where[-1]] + 0.5 * RAY_STEP_MM)


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
