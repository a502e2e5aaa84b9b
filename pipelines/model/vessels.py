"""Contrast-filled large vessels in a short field, so that the column found on the CT alone leaves them out.

With contrast, the aorta's lumen reads 130-250 HU: as bright as a body's marrow and over
the bone threshold (``column.BONE_HU``), and it lies against the body's front. On the real
T11-T12 series its lumen (about 150 HU) and calcified wall were taken for the body's front:
the body read 48 mm deep, and 7,600 voxels of aorta went into T12.

What tells a vessel from bone is that it does not change along the scan. Over a field that
holds a disc, every point of a vertebral body passes through an endplate or a disc, so its
HU varies by 40 HU or more from slice to slice; a vessel's lumen stays within noise. A
vessel is thus a core of (y, x) whose in-plane smoothed HU stays bright (``LUMEN_HU``) with
a spread along the scan under ``STEADY_HU``, of a large vessel's size and round
(``CORE_MM2``, ``ROUND``: an enhancing liver is steady too, but large and not round), well
in front of the spinal canal (``MIN_FRONT_MM``: never the body itself). Round that core the
lumen runs out to its wall, where the spread along the scan rises (pulsation and the wall's
calcification), or where the HU averaged along the scan falls from the lumen's
(``EDGE_DROP_HU``: a vessel without a calcified wall, as in the phantoms); the vessel is the
disk out to the nearer of the two, plus the wall (``WALL_MM``).

All arrays are LPS (z, y, x): axis 1 grows towards the back.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

SMOOTH_MM = 2.0          # in-plane smoothing before the lumen's HU and spread are read
LUMEN_HU = 110.0         # a contrast-filled lumen stays at least this bright in every part of the field ...
STEADY_HU = 20.0         # ... with a spread along the scan under this (a body's marrow varies by 40 HU or more)
CORE_MM2 = (50.0, 1000.0)  # a large vessel's steady core is this large (the aorta's lumen ~500 mm2; the liver more)
ROUND = 0.3              # ... and round: its area at least this share of the disk out to its farthest point
MIN_FRONT_MM = 40.0      # its centre lies at least this far in front of the canal (the body lies nearer)
MIN_FIELD_MM = 30.0      # a field shorter than a vertebra's pitch may hold no disc: a body's marrow may look steady
MAX_RADIUS_MM = 12.0     # the lumen's edge is looked for at most this far out from the core's own radius
EDGE_DROP_HU = 40.0      # the lumen ends where the HU averaged along the scan falls this far below its core's
WALL_MM = 1.5            # the wall (and its calcification) outside the lumen's edge


def vessel_lumens(hu: np.ndarray, spacing, canal_yx) -> tuple[np.ndarray, list[dict]]:
    """A (y, x) mask of the large contrast-filled vessels crossing the field, and a record of each; empty when none."""
    sz, sy, sx = (float(s) for s in spacing)
    mask = np.zeros(hu.shape[1:], bool)
    if hu.shape[0] * sz < MIN_FIELD_MM:
        return mask, []
    smooth = ndimage.gaussian_filter(hu.astype(np.float32), (0, SMOOTH_MM / sy, SMOOTH_MM / sx))
    spread, average = smooth.std(axis=0), hu.mean(axis=0, dtype=np.float32)
    steady = (smooth.min(axis=0) >= LUMEN_HU) & (spread <= STEADY_HU)
    pieces, n = ndimage.label(steady)
    yy, xx = np.indices(mask.shape, dtype=np.float32)
    found = []
    for k in range(1, n + 1):
        y, x = np.nonzero(pieces == k)
        area = len(y) * sy * sx
        cy, cx = float(y.mean()), float(x.mean())
        farthest = float(np.hypot((y - cy) * sy, (x - cx) * sx).max()) + 0.5 * max(sy, sx)
        if not (CORE_MM2[0] <= area <= CORE_MM2[1] and area >= ROUND * np.pi * farthest ** 2
                and (float(canal_yx[0]) - cy) * sy >= MIN_FRONT_MM):
            continue  # too small, too large or not round (an organ: the liver at portal phase), or the body itself
        distance = np.hypot((yy - cy) * sy, (xx - cx) * sx)
        radius = _lumen_edge(spread, average, distance, float(np.sqrt(area / np.pi)))
        mask |= distance <= radius + WALL_MM
        found.append({"centre_yx": [round(cy, 1), round(cx, 1)], "lumen_radius_mm": round(radius, 1),
                      "steady_core_mm2": round(area, 1)})
    return mask, found


def _lumen_edge(spread: np.ndarray, average: np.ndarray, distance: np.ndarray, core_mm: float) -> float:
    """The lumen's radius: on 1 mm rings round the core, where the spread along the scan stops rising (the wall)
    or where the HU averaged along the scan falls ``EDGE_DROP_HU`` below the core's, whichever is nearer."""
    radii = np.arange(core_mm, core_mm + MAX_RADIUS_MM, 0.5)
    rings = [(distance >= r - 0.5) & (distance < r + 0.5) for r in radii]
    spreads = [float(spread[ring].mean()) for ring in rings]
    lumen_hu = float(average[distance <= core_mm].mean())
    peak = next((i for i in range(len(radii) - 1) if spreads[i + 1] < spreads[i]), len(radii) - 1)
    drop = next((i for i, ring in enumerate(rings) if average[ring].mean() < lumen_hu - EDGE_DROP_HU), len(radii) - 1)
    return float(radii[min(peak, drop)])


def without_vessels(hu: np.ndarray, mask: np.ndarray, soft_tissue_hu: float = 40.0) -> np.ndarray:
    """``hu`` with the vessels' (y, x) read as soft tissue in every slice: no bone, no body (a copy; ``hu`` is kept)."""
    if not mask.any():
        return hu
    return np.where(mask[None], np.float32(soft_tissue_hu), hu).astype(hu.dtype, copy=False)
