"""Vertebral bodies of the real chest CT (``../shared/data/real-ct-thorax-dicom``) by classical image processing.

The scan has no labels, and the demo model (trained on phantoms) finds only six lumps on
it, so its masks cannot serve as truth. Instead:

* **Disc levels** were read by eye, once, from the scan's midsagittal image (the mean of
  columns 246-253) by the author of this file; they are the constants ``DISC_SLICES``
  (slice indices from the scan's lowest slice; a disc half-way between two slices has a
  .5). Ten whole bodies lie between them, about T2/T3 (top) to T11/T12 (bottom). The
  next one up (slices 119-127, in the streaks of the shoulders) is left out: this
  processing could not outline it (its mask took in the neighbouring bone).
* **The body's footprint** in each slab between two discs: the slab's mean axial image,
  smoothed (1 mm), above ``BONE_HU``, opened by a disc of ``OPENING_MM`` (the pedicles,
  ribs and arch are thinner and fall away), the component at the body's centre
  (``CENTRE_Y``, a line through the bodies read from the same image, x = ``CENTRE_X``),
  holes filled.
* **Per slice**, the footprint is narrowed to that slice's own bone (the smoothed slice
  above ``BONE_HU``, closed by 1.5 mm, joined to the footprint less ``INNER_MM`` -- low
  trabecular bone inside is body too, even where the posterior wall has its venous gap --
  holes filled), so that the waist of the body and
  the endplates are followed; a slice whose own bone covers less than 70 % of the
  footprint keeps the footprint.

These are body-only masks (no posterior elements), roughly a voxel off at the surface:
good enough to carry inserted lesions and to be classified, not a segmentation result.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

DISC_SLICES = (3.5, 17.0, 30.0, 42.0, 54.0, 65.5, 78.5, 88.0, 98.0, 108.5, 118.5)
"""Slice indices of the intervertebral discs, read by eye from the midsagittal image (lowest first)."""

CENTRE_Y = ((0, 287), (30, 290), (60, 292), (90, 285), (110, 277), (125, 267), (140, 255))
"""(slice, row) points of a line through the vertebral bodies, read from the same image."""
CENTRE_X = 250
BONE_HU = 120.0
OPENING_MM = 4.0
MAX_RADIUS_MM = 22.0
INNER_MM = 3.0


def thorax_bodies(hu: np.ndarray, spacing) -> np.ndarray:
    """A label map (uint8, same grid as ``hu``) of the whole bodies between ``DISC_SLICES``: 1 = lowest."""
    hu = np.asarray(hu, np.float32)
    sz, sy, sx = (float(s) for s in spacing)
    labels = np.zeros(hu.shape, np.uint8)
    smooth = ndimage.gaussian_filter(hu, (0.0, 1.0 / sy, 1.0 / sx))
    for index, (low, high) in enumerate(zip(DISC_SLICES[:-1], DISC_SLICES[1:]), start=1):
        first, last = int(np.floor(low)) + 1, int(np.ceil(high)) - 1
        if first < 0 or last >= hu.shape[0] or last < first:
            continue
        centre = (int(round(np.interp((first + last) / 2, *zip(*CENTRE_Y)))), CENTRE_X)
        footprint = _footprint(smooth[first:last + 1].mean(axis=0), centre, (sy, sx))
        if footprint is None:
            continue
        for z in range(first, last + 1):
            labels[z][_narrowed(smooth[z], footprint, (sy, sx))] = index
    return labels


def _disc(radius_mm: float, pixel: tuple[float, float]) -> np.ndarray:
    ry, rx = (int(np.ceil(radius_mm / p)) for p in pixel)
    y, x = np.ogrid[-ry:ry + 1, -rx:rx + 1]
    return (y * pixel[0]) ** 2 + (x * pixel[1]) ** 2 <= radius_mm ** 2


def _footprint(image: np.ndarray, centre: tuple[int, int], pixel: tuple[float, float]) -> np.ndarray | None:
    """The body's cross-section in a slab's mean image: bone, opened, the component at ``centre``, filled."""
    y, x = np.ogrid[:image.shape[0], :image.shape[1]]
    near = ((y - centre[0]) * pixel[0]) ** 2 + ((x - centre[1]) * pixel[1]) ** 2 <= MAX_RADIUS_MM ** 2
    bone = ndimage.binary_fill_holes(ndimage.binary_closing(image > BONE_HU, _disc(1.0, pixel)) & near)
    opened = ndimage.binary_opening(bone, _disc(OPENING_MM, pixel))
    components, count = ndimage.label(opened)
    if count == 0:
        return None
    distance = ndimage.distance_transform_edt(components == 0)
    nearest = ndimage.distance_transform_edt(components == 0, return_distances=False, return_indices=True)
    if distance[centre] > 10 / pixel[0]:
        return None
    label = components[tuple(axis[centre] for axis in nearest)]
    body = components == label
    return ndimage.binary_fill_holes(ndimage.binary_dilation(body, _disc(OPENING_MM / 2, pixel)) & bone)


def _narrowed(image: np.ndarray, footprint: np.ndarray, pixel: tuple[float, float]) -> np.ndarray:
    """The footprint limited to this slice's own bone, or the footprint when that bone covers too little of it."""
    inner = ndimage.binary_erosion(footprint, _disc(INNER_MM, pixel))
    own = ndimage.binary_fill_holes((ndimage.binary_closing(image > BONE_HU, _disc(1.5, pixel)) & footprint) | inner)
    return own if own.sum() >= 0.7 * footprint.sum() else footprint
