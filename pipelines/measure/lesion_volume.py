"""The volume of a vertebra's lesion, at the half-way iso-level between its focus and the bone around it.

The lesion classifier (``pipelines.lesions``) finds a focus where the smoothed HU strays a
fixed margin from the bone's reference: enough to call a lesion, but its edge then lies
where the blur has carried that margin, not on the lesion's border, and the error is a
shell whose share changes with the size (a growth between two studies read wrongly). Here
the border is the half-way level between the reference HU and the focus' mean HU (the
iso-surface a blurred step crosses at its true edge), on lightly smoothed HU inside the
vertebral body, counting the connected pieces at least ``MIN_PIECE_MM3`` large.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

SMOOTH_MM = 0.5
MIN_PIECE_MM3 = 20.0
KINDS = {"lytic": ("hypodense",), "blastic": ("hyperdense",), "mixed": ("hypodense", "hyperdense")}


def lesion_volume_mm3(hu: np.ndarray, body: np.ndarray, spacing, features: dict, lesion: str) -> float | None:
    """The lesion's volume (mm3) in ``body`` (on ``hu``'s grid), or None when the classifier gave no focus to start from."""
    reference = features.get("reference_hu")
    if lesion not in KINDS or reference is None:
        return None
    smooth = ndimage.gaussian_filter(hu.astype(np.float32), [SMOOTH_MM / s for s in spacing])
    voxel_mm3 = float(np.prod(spacing))
    total = 0.0
    for kind in KINDS[lesion]:
        mean = features.get(f"{kind}_focus_mean_hu")
        if mean is None or not features.get(f"{kind}_focus_mm3"):
            continue
        level = 0.5 * (float(reference) + float(mean))
        inside = body & ((smooth < level) if kind == "hypodense" else (smooth > level))
        pieces, count = ndimage.label(inside)
        if count:
            sizes = np.bincount(pieces.ravel())[1:] * voxel_mm3
            total += float(sizes[sizes >= MIN_PIECE_MM3].sum())
    return total
