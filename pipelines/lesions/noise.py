"""The noise of a CT series, measured once on its homogeneous soft tissue and fat.

The lesion rule judges a focus against the scan's own noise: the same HU step is a lesion
on a quiet 3 mm scan and noise on a low-dose 1 mm one. Noise is measured where the
anatomy is flat, so that texture and edges do not count as noise: voxels whose local mean
(a Gaussian of ``LOCAL_MM`` in-plane) lies in the fat or soft-tissue band and whose local
gradient is among the lowest ``FLAT_FRACTION`` of that band. The noise is the robust SD
(1.4826 x MAD) of the residual (value minus local mean) there. Every ``slice_step``-th
slice is enough (a chest CT has millions of such voxels) and keeps this under a second.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

LOCAL_MM = 2.0
FLAT_FRACTION = 0.3
BANDS_HU = ((-150.0, -50.0), (-20.0, 100.0))  # fat, soft tissue (muscle, organs)
MIN_VOXELS = 200


@dataclass(frozen=True)
class NoiseEstimate:
    """Voxel-to-voxel noise SD in HU of one series, with how it was found (``source``) and on how many voxels."""

    sd_hu: float | None
    voxels: int
    source: str


def estimate_noise(hu: np.ndarray, spacing, slice_step: int = 4) -> NoiseEstimate:
    """The robust noise SD (HU) of ``hu`` (slices, rows, columns) in its flat fat and soft tissue.

    ``sd_hu`` is None when fewer than ``MIN_VOXELS`` flat voxels exist (a crop of bone only):
    the classifier then falls back on the vertebra's own spread.
    """
    spacing = tuple(float(s) for s in spacing)
    step = max(1, int(slice_step)) if hu.shape[0] >= 4 * slice_step else 1
    slices = np.asarray(hu[::step], np.float32)
    sigma = (0.0, LOCAL_MM / spacing[1], LOCAL_MM / spacing[2])  # in-plane only: slices may be far apart
    local = ndimage.gaussian_filter(slices, sigma)
    gradient = ndimage.gaussian_gradient_magnitude(slices, sigma)
    residual = slices - local
    pieces = []
    for low, high in BANDS_HU:
        band = (local > low) & (local < high)
        if band.sum() < MIN_VOXELS:
            continue
        flat = band & (gradient <= np.quantile(gradient[band], FLAT_FRACTION))
        pieces.append(residual[flat])
    values = np.concatenate(pieces) if pieces else np.empty(0, np.float32)
    if values.size < MIN_VOXELS:
        return NoiseEstimate(None, int(values.size), "too little flat fat or soft tissue")
    sd = 1.4826 * float(np.median(np.abs(values - np.median(values))))
    return NoiseEstimate(round(sd, 1), int(values.size), "flat fat and soft tissue of the series")
