"""The CT components of the Spinal Instability Neoplastic Score (Fisher et al., Spine 2010), each with its rule.

Scored only for a vertebra with a lesion call (lytic, blastic or mixed):

* location: junctional (C7-T2, T11-L1, L5) 3; mobile (L2-L4) 2; semi-rigid (T3-T10) 1;
* bone lesion quality: lytic 2, mixed 1, blastic 0;
* vertebral body collapse: >= 50 % 3; below 50 % 2; none but > 50 % of the body involved 1;
  none 0 (collapse: Genant grade 1 or more);
* posterolateral involvement (facet, pedicle or costovertebral joint): bilateral 3,
  unilateral 1, none 0.

The partial score is their sum. Pain (0-3) and radiographic alignment (0-4) need the
clinician or standing images and are never scored here: ``not_assessed`` says so.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from pipelines.measure.frame import VertebraFrame

LESIONS = ("lytic", "blastic", "mixed")
_JUNCTIONAL = {"T1", "T2", "T11", "T12", "L1", "L5"}
_MOBILE = {"L2", "L3", "L4"}
QUALITY = {"lytic": 2, "mixed": 1, "blastic": 0}
NOT_ASSESSED = ["pain (needs the clinician)", "radiographic alignment (needs standing images)"]
ELEMENT_FOCUS_MM3 = 100.0
ELEMENT_LYTIC_HU = 150.0


def location_score(level: str) -> tuple[int, str]:
    if level in _JUNCTIONAL:
        return 3, "junctional (C7-T2, T11-L1, L5-S1)"
    if level in _MOBILE:
        return 2, "mobile spine (L2-L4)"
    return 1, "semi-rigid (T3-T10)"


def collapse_score(loss_pct: float | None, grade: int | None, involved_fraction: float | None) -> tuple[int | None, str]:
    if grade is None:
        return None, "body heights not measured"
    if grade >= 1 and loss_pct is not None and loss_pct >= 50:
        return 3, f"collapse of {loss_pct:g} % (50 % or more)"
    if grade >= 1:
        return 2, f"collapse of {loss_pct:g} % (below 50 %)"
    if involved_fraction is not None and involved_fraction > 0.5:
        return 1, f"no collapse, {100 * involved_fraction:.0f} % of the body involved"
    return 0, "no collapse"


def posterolateral_score(sides: list[str]) -> tuple[int, str]:
    if len(sides) == 2:
        return 3, "bilateral"
    if sides:
        return 1, f"unilateral ({sides[0]})"
    return 0, "none"


def sins(level: str, lesion: str, genant_grade: int | None, loss_pct: float | None,
         involved_fraction: float | None, involved_sides: list[str]) -> tuple[dict | None, str]:
    """The components, each with its points and rule, and the partial score; None with the reason if not scored."""
    if lesion not in LESIONS:
        return None, f"no lesion called ({lesion})"
    components = {}
    for name, (points, rule) in {
            "location": location_score(level),
            "bone_lesion_quality": (QUALITY[lesion], lesion),
            "vertebral_body_collapse": collapse_score(loss_pct, genant_grade, involved_fraction),
            "posterolateral_involvement": posterolateral_score(involved_sides)}.items():
        components[name] = {"points": points, "rule": rule}
    scored = [c["points"] for c in components.values() if c["points"] is not None]
    return {"components": components, "partial_score": int(sum(scored)),
            "components_scored": len(scored), "not_assessed": list(NOT_ASSESSED)}, ""


def involved_sides(hu: np.ndarray, elements: np.ndarray, left_mm: np.ndarray, spacing) -> list[str]:
    """The sides ('left', 'right') whose posterior elements hold a hypodense focus of ELEMENT_FOCUS_MM3 or more.

    ``elements`` is the vertebra's posterior-element mask (its body removed), ``left_mm`` the
    signed left coordinate of each voxel of the box in the vertebra's frame. The elements'
    outer voxel is left out (partial volume with soft tissue reads low on any bone).
    """
    inner = ndimage.binary_erosion(elements)
    smooth = ndimage.gaussian_filter(hu.astype(np.float32), [1.0 / s for s in spacing])
    focus = inner & (smooth < ELEMENT_LYTIC_HU)
    voxel_mm3 = float(np.prod(spacing))
    labels, count = ndimage.label(focus)
    sides = set()
    for index in range(1, count + 1):
        piece = labels == index
        if piece.sum() * voxel_mm3 >= ELEMENT_FOCUS_MM3:
            sides.add("left" if float(np.median(left_mm[piece])) > 0 else "right")
    return sorted(sides)


def frame_left(shape, offset, geometry, frame: VertebraFrame) -> np.ndarray:
    """The left coordinate (mm) of every voxel of a box of the series' grid, in ``frame``."""
    k, j, i = np.meshgrid(*(np.arange(n) + o for n, o in zip(shape, offset)), indexing="ij")
    steps = geometry.direction * np.array([geometry.spacing[2], geometry.spacing[1], geometry.spacing[0]])
    points = geometry.origin + np.stack([i, j, k], axis=-1).astype(np.float64) @ steps.T
    return (points - frame.centre) @ frame.left
