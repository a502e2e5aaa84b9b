"""Metastatic involvement of one vertebra: none, lytic, blastic or mixed, with the reasons.

An explainable rule on the CT values inside the vertebra, not a black box:

1. the vertebra's mask is eroded by ``cortex_mm`` so that the cortex (700-1200 HU) and
   its blurred edge do not count as "dense";
2. the CT is smoothed a little (``smooth_mm``) so that noise does not make foci;
3. voxels below ``lytic_max_hu`` form hypodense foci, voxels above ``blastic_min_hu`` form
   hyperdense foci; the largest connected focus of each kind is measured;
4. a kind is present when its largest focus is at least ``min_focus_mm3``; both kinds
   present makes "mixed".

The thresholds live in ``LesionThresholds`` and every number that decided the class is
returned in ``features``. Any classifier with the same ``classify`` signature (a learned
one, say) can replace ``ThresholdClassifier``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np
from scipy import ndimage


LESION_CLASSES = ["none", "lytic", "blastic", "mixed"]
"""The classes a vertebra can get, in the order reports list them."""


@dataclass(frozen=True)
class LesionThresholds:
    """Documented defaults: normal trabecular bone is ~120-300 HU, lytic foci ~0-100, blastic ~600-1200."""

    cortex_mm: float = 3.0
    smooth_mm: float = 1.0
    lytic_max_hu: float = 100.0
    blastic_min_hu: float = 480.0
    min_focus_mm3: float = 40.0


@dataclass(frozen=True)
class LesionFinding:
    """The class of one vertebra and the measurements behind it."""

    kind: str  # none | lytic | blastic | mixed
    features: dict


class LesionClassifier(Protocol):
    def classify(self, hu: np.ndarray, mask: np.ndarray, spacing) -> LesionFinding: ...


class ThresholdClassifier:
    """The rule above; stateless apart from its thresholds."""

    def __init__(self, thresholds: LesionThresholds | None = None):
        self.t = thresholds or LesionThresholds()

    def classify(self, hu: np.ndarray, mask: np.ndarray, spacing) -> LesionFinding:
        """Classify the vertebra ``mask`` (bool, same grid as ``hu``) of a CT with ``spacing`` (sz, sy, sx)."""
        box = _bbox(mask, margin=2)
        if box is None:
            return LesionFinding("none", {"interior_ml": 0.0})
        m = mask[box]
        voxel_mm3 = float(np.prod(spacing))
        radius = [max(int(round(self.t.cortex_mm / s)), 1) for s in spacing]
        interior = ndimage.binary_erosion(m, structure=_ellipsoid_structure(radius))
        smooth = ndimage.gaussian_filter(hu[box].astype(np.float32), [self.t.smooth_mm / s for s in spacing])
        lytic = _largest_focus(interior & (smooth < self.t.lytic_max_hu)) * voxel_mm3
        blastic = _largest_focus(interior & (smooth > self.t.blastic_min_hu)) * voxel_mm3
        values = smooth[interior]
        features = {
            "interior_ml": round(interior.sum() * voxel_mm3 / 1000, 2),
            "interior_median_hu": round(float(np.median(values)), 1) if values.size else None,
            "largest_hypodense_focus_mm3": round(lytic, 1),
            "largest_hyperdense_focus_mm3": round(blastic, 1),
            "thresholds": asdict(self.t),
        }
        has_lytic = lytic >= self.t.min_focus_mm3
        has_blastic = blastic >= self.t.min_focus_mm3
        kind = {(False, False): "none", (True, False): "lytic",
                (False, True): "blastic", (True, True): "mixed"}[(has_lytic, has_blastic)]
        return LesionFinding(kind, features)


def _largest_focus(mask: np.ndarray) -> int:
    components, count = ndimage.label(mask)
    if count == 0:
        return 0
    return int(np.bincount(components.ravel())[1:].max())


def _ellipsoid_structure(radius: list[int]) -> np.ndarray:
    grids = np.ogrid[tuple(slice(-r, r + 1) for r in radius)]
    return sum((g / r) ** 2 for g, r in zip(grids, radius)) <= 1.0


def _bbox(mask: np.ndarray, margin: int):
    objects = ndimage.find_objects(mask.astype(np.uint8))
    if not objects or objects[0] is None:
        return None
    return tuple(slice(max(s.start - margin, 0), s.stop + margin) for s in objects[0])
