"""Synthetic lytic, blastic and mixed lesions implanted into the vertebral bodies of real CT scans.

No scan here shows a metastasis, so the lesion classifier is measured on real bone with
lesions of known kind, size, place and contrast put in:

* **Shape and partial volume.** A lesion is a ball of ``diameter_mm``. Each voxel gets
  the fraction of its volume inside the ball (``ball_fraction``: ``SUBSAMPLES`` points per
  axis across the voxel, the slice profile of an acquired slice being its thickness), so
  that the edge is a partial-volume ramp one slice wide, as in a scan, not a painted step.
* **Texture and noise.** Inside, the value moves towards ``target_hu`` and keeps the scan's
  own fluctuation: the voxel's residual (value minus a ``LOCAL_MM`` Gaussian local mean)
  is added back, scaled to the scan's noise SD (a tumour replaces the trabeculae, so their
  extra texture goes, the scanner's noise stays). ``new = (1 - f) * old + f * (target +
  k * residual)``, with f the ball fraction and k = min(1, noise / local residual SD).
* **Place.** The centre is drawn among the body voxels at least ``depth_fraction`` of the
  radius deep inside the body mask, so that the ball lies in the body (it may touch the
  cortex, as lesions do). A mixed vertebra carries a lytic and a blastic ball that do not
  overlap.
* **Truth** is a ``LesionTruth`` per lesion: kind, diameter, centre (mm on the array
  grid), target HU and the contrast against the body's median.

Inserted at the scan's own slices, before any reslicing: ``reslice.py`` then makes the
1, 2 and 3 mm series from the same implanted volume, so the thicker slices average the
lesion with the slice profile just as they average the bone.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

SUBSAMPLES = 5
LOCAL_MM = 1.5


@dataclass(frozen=True)
class LesionTruth:
    """One inserted lesion: what, how big, where (z, y, x mm from the array's first voxel) and how dense."""

    kind: str  # lytic | blastic
    diameter_mm: float
    centre_mm: tuple[float, float, float]
    target_hu: float
    contrast_hu: float  # target minus the body's median before insertion

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def ball_fraction(shape: tuple[int, int, int], spacing, centre_mm, radius_mm: float,
                  subsamples: int = SUBSAMPLES) -> np.ndarray:
    """The fraction (0..1, float32) of each voxel inside a ball: its partial-volume weight.

    Each voxel is sampled at ``subsamples`` points per axis across its extent (along z the
    slice thickness, the slice profile taken as a box), so a slice that cuts the ball's
    edge gets the share of its thickness that lies inside.
    """
    spacing = np.asarray(spacing, float)
    centre = np.asarray(centre_mm, float)
    out = np.zeros(shape, np.float32)
    low = np.maximum(np.floor((centre - radius_mm) / spacing - 1).astype(int), 0)
    high = np.minimum(np.ceil((centre + radius_mm) / spacing + 2).astype(int), shape)
    if np.any(high <= low):
        return out
    offsets = (np.arange(subsamples) + 0.5) / subsamples - 0.5
    axes = [(np.arange(lo, hi)[:, None] + offsets[None, :]).ravel() * s - c
            for lo, hi, s, c in zip(low, high, spacing, centre)]
    dz, dy, dx = np.meshgrid(*axes, indexing="ij", sparse=True)
    inside = (dz ** 2 + dy ** 2 + dx ** 2 <= radius_mm ** 2).astype(np.float32)
    n = [hi - lo for lo, hi in zip(low, high)]
    inside = inside.reshape(n[0], subsamples, n[1], subsamples, n[2], subsamples).mean(axis=(1, 3, 5))
    out[low[0]:high[0], low[1]:high[1], low[2]:high[2]] = inside
    return out


def inserted_ml(body: np.ndarray, spacing, lesions: list[LesionTruth]) -> float:
    """The lesions' volume inside ``body`` (ml): each voxel's share of a ball, summed (a ball may stick out of it)."""
    share = sum(ball_fraction(body.shape, spacing, les.centre_mm, les.diameter_mm / 2) for les in lesions)
    return float(np.minimum(share, 1.0)[body].sum()) * float(np.prod(spacing)) / 1000.0


def implant(hu: np.ndarray, spacing, lesions: list[LesionTruth], noise_hu: float) -> np.ndarray:
    """``hu`` (float32 copy) with every lesion blended in, keeping the scan's own noise (module docstring)."""
    hu = np.asarray(hu, np.float32)
    sigma = [LOCAL_MM / s for s in spacing]
    local = ndimage.gaussian_filter(hu, sigma)
    residual = hu - local
    residual_sd = np.sqrt(ndimage.gaussian_filter(residual ** 2, [2 * x for x in sigma]))
    keep = np.minimum(1.0, noise_hu / np.maximum(residual_sd, 1e-3))
    out = hu.copy()
    for lesion in lesions:
        weight = ball_fraction(hu.shape, spacing, lesion.centre_mm, lesion.diameter_mm / 2)
        lesion_values = lesion.target_hu + keep * residual
        out = (1 - weight) * out + weight * lesion_values
    return out


def place(body: np.ndarray, spacing, diameter_mm: float, rng: np.random.Generator,
          avoid: list[LesionTruth] = (), depth_fraction: float = 0.8) -> tuple[float, float, float] | None:
    """A centre (mm) in ``body`` deep enough for a ball of ``diameter_mm``, away from ``avoid``; None if none fits."""
    depth = ndimage.distance_transform_edt(np.pad(body, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    radius = diameter_mm / 2
    spacing = np.asarray(spacing, float)
    for fraction in (depth_fraction, 0.65, 0.5):
        candidates = np.argwhere(depth >= fraction * radius) * spacing
        for other in avoid:
            far = np.linalg.norm(candidates - np.asarray(other.centre_mm), axis=1) >= radius + other.diameter_mm / 2 + 1
            candidates = candidates[far]
        if len(candidates):
            return tuple(float(v) for v in candidates[rng.integers(len(candidates))])
    return None
