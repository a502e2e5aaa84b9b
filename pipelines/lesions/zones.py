"""Where in a vertebra lesions are looked for: the surface, the body and its two zones.

Pure morphology on a vertebra's bounding box, every length in millimetres and honouring
anisotropic voxels (1-3 mm slices, sub-millimetre pixels):

1. **Surface** (``snap_to_cortex``): the mask's surface is moved onto the cortex by at most
   one voxel, so that distances do not depend on which way the segmentation erred.
2. **Body** (``vertebral_body``): a ball rolls inside the mask (a morphological opening by
   distance transforms); the posterior elements are thinner and fall away, the largest
   piece left is the vertebral body.
3. **Zones** (``trabecular_core``): the *blastic zone* leaves out a shell of cortex plus
   one voxel per axis (the cortex and endplates are dense and would pass for sclerosis)
   and keeps away from the posterior elements; the *lytic zone* leaves out only a thin
   shell, so that hypodense foci reaching the cortex are seen.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def snap_to_cortex(mask: np.ndarray, hu: np.ndarray, grow_above_hu: float, peel_below_hu: float) -> np.ndarray:
    """``mask`` with its surface moved by at most one voxel onto the cortex.

    The true surface of a vertebra is cortex. A label one voxel too narrow leaves the cortex
    just outside: neighbours reading ``grow_above_hu`` or more are added. A label one voxel
    too wide carries a layer of disc, canal or soft tissue: outermost voxels reading below
    ``peel_below_hu`` are taken off.
    """
    outer = mask & ~ndimage.binary_erosion(mask, border_value=1)
    peeled = mask & ~(outer & (hu < peel_below_hu))
    return peeled | (ndimage.binary_dilation(peeled) & ~mask & (hu >= grow_above_hu))


def vertebral_body(mask: np.ndarray, spacing, radius_mm: float) -> np.ndarray:
    """The largest part of ``mask`` a ball of ``radius_mm`` can roll in: the body without its thin processes.

    A smaller ball is used when the mask is too thin for the configured one (a small or
    eroded vertebra), so that a body is always found when there is a mask.
    """
    depth = ndimage.distance_transform_edt(mask, sampling=spacing)
    radius = min(radius_mm, 0.7 * float(depth.max()))
    if radius <= 0:
        return np.zeros_like(mask)
    components, count = ndimage.label(depth >= radius)
    if count == 0:
        return np.zeros_like(mask)
    seed = components == (np.argmax(np.bincount(components.ravel())[1:]) + 1)
    return mask & (ndimage.distance_transform_edt(~seed, sampling=spacing) <= radius)


def trabecular_core(body: np.ndarray, spacing, cortex_mm: float, margin_voxels: float) -> np.ndarray:
    """``body`` less a shell of ``cortex_mm`` plus ``margin_voxels`` voxels along each axis (an ellipsoidal erosion)."""
    semi_axes = [cortex_mm + margin_voxels * s for s in spacing]
    if min(semi_axes) <= 0:
        return body.copy()
    padded = np.pad(body, 1)  # the box edge is outside the body, even where the mask touches it
    depth = ndimage.distance_transform_edt(padded, sampling=[s / a for s, a in zip(spacing, semi_axes)])
    return depth[1:-1, 1:-1, 1:-1] > 1.0


def posterior_elements(mask: np.ndarray, body: np.ndarray, spacing, radius_mm: float) -> np.ndarray:
    """The parts of ``mask`` off the ``body`` that a ball of ``radius_mm`` fits in: pedicles and arch, not rims.

    The opening that finds the body leaves thin rims of the body's own surface outside it
    (its corners, a ragged label edge); on a mask of the body alone they are all there is.
    Keeping the blastic zone away from them would take in most of a small body, so only
    parts at least twice ``radius_mm`` thick count as posterior elements.
    """
    off_body = mask & ~body
    if radius_mm <= 0 or not off_body.any():
        return off_body
    seed = ndimage.distance_transform_edt(np.pad(off_body, 1), sampling=spacing)[1:-1, 1:-1, 1:-1] > radius_mm
    if not seed.any():
        return seed
    return off_body & (ndimage.distance_transform_edt(~seed, sampling=spacing) <= radius_mm)


def farther_than(region: np.ndarray, spacing, distance_mm: float) -> np.ndarray:
    """Voxels more than ``distance_mm`` from every voxel of ``region`` (all of them when it is empty)."""
    if not region.any() or distance_mm <= 0:
        return np.ones_like(region)
    return ndimage.distance_transform_edt(~region, sampling=spacing) > distance_mm


def bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...] | None:
    """The box around the True voxels of ``mask`` grown by ``margin`` voxels (clipped), or None when empty."""
    objects = ndimage.find_objects(np.asarray(mask, np.uint8))
    if not objects or objects[0] is None:
        return None
    return tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(objects[0], mask.shape))
