"""Thinner and thicker slices from one real scan: 1, 2 and 3 mm series along z.

A scanner's slice is the patient's values averaged over the slice profile. Here the
profile is a box of the new thickness: the volume is interpolated linearly along z onto a
fine grid (``FINE_MM``), then each new slice is the mean of the fine samples within its
thickness, centred every ``thickness`` mm. Thicker slices so average bone, cortex, noise
and an inserted lesion together, as a real 3 mm reconstruction does.

Thinner than the source (1 mm from 1.5 or 2 mm) is only an interpolation: the edges and
the noise along z are those of the source, smoothed, not those of a true 1 mm scan.
Masks go through the same average and keep the voxels more than half inside.
"""
from __future__ import annotations

import numpy as np

FINE_MM = 0.25


def reslice_positions(n_slices: int, slice_mm: float, thickness_mm: float) -> np.ndarray:
    """Centres (mm from the first source slice's centre) of the new slices that lie wholly inside the source."""
    extent = (n_slices - 1) * slice_mm
    first = thickness_mm / 2 - slice_mm / 2 if thickness_mm > slice_mm else 0.0
    first = max(first, 0.0)
    last = extent - first
    count = int(np.floor((last - first) / thickness_mm + 1e-6)) + 1
    return first + thickness_mm * np.arange(max(count, 0))


def reslice(volume: np.ndarray, slice_mm: float, thickness_mm: float) -> np.ndarray:
    """``volume`` (z, y, x) with slices of ``slice_mm`` turned into contiguous slices of ``thickness_mm`` (float32)."""
    volume = np.asarray(volume, np.float32)
    centres = reslice_positions(volume.shape[0], slice_mm, thickness_mm)
    out = np.empty((len(centres),) + volume.shape[1:], np.float32)
    half = max(thickness_mm, slice_mm) / 2 if thickness_mm > slice_mm else 0.0
    for k, centre in enumerate(centres):
        samples = np.arange(centre - half, centre + half + 1e-6, FINE_MM) if half else np.array([centre])
        position = np.clip(samples / slice_mm, 0, volume.shape[0] - 1)
        below = np.floor(position).astype(int)
        above = np.minimum(below + 1, volume.shape[0] - 1)
        w = (position - below).astype(np.float32)
        weights = np.zeros(volume.shape[0], np.float64)
        np.add.at(weights, below, 1 - w)
        np.add.at(weights, above, w)
        weights /= weights.sum()
        used = np.nonzero(weights)[0]
        out[k] = np.tensordot(weights[used].astype(np.float32), volume[used], axes=1)
    return out


def reslice_mask(mask: np.ndarray, slice_mm: float, thickness_mm: float) -> np.ndarray:
    """A boolean mask resliced like the image: voxels more than half inside stay."""
    return reslice(np.asarray(mask, np.float32), slice_mm, thickness_mm) > 0.5
