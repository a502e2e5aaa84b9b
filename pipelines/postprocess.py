"""Clean-up of a predicted vertebra label map.

A network's arg-max leaves specks: a few voxels of "T7" inside T8, a blob on a rib.
Per label, the largest connected component is the vertebra; any other component smaller
than ``min_fraction`` of it is a fragment and goes back to background. Larger extra
components are kept: they are bone the network saw, perhaps under the wrong level, and
deleting them would hide that from the reader.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

MIN_FRACTION = 0.1


def remove_fragments(labels: np.ndarray, spacing, min_fraction: float = MIN_FRACTION) -> np.ndarray:
    """Return ``labels`` (modified in place) without the small disconnected pieces of each label."""
    boxes = ndimage.find_objects(labels)
    structure = ndimage.generate_binary_structure(3, 1)
    for index, box in enumerate(boxes):
        if box is None:
            continue
        label = index + 1
        region = labels[box]
        mask = region == label
        components, count = ndimage.label(mask, structure)
        if count <= 1:
            continue
        sizes = np.bincount(components.ravel())[1:]
        small = np.flatnonzero(sizes < min_fraction * sizes.max()) + 1
        region[np.isin(components, small)] = 0
    return labels


def vertebra_stats(labels: np.ndarray, hu: np.ndarray, spacing, label_map: dict[int, str]) -> list[dict]:
    """Per label present: level, voxels, volume (ml) and mean HU, cranial to caudal by label order."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    counts = np.bincount(labels.ravel(), minlength=256)
    sums = np.bincount(labels.ravel(), weights=hu.ravel().astype(np.float64), minlength=256)
    out = []
    for label, level in sorted(label_map.items()):
        n = int(counts[label]) if label < len(counts) else 0
        if n == 0:
            continue
        out.append({"level": level, "label": label, "voxels": n, "volume_ml": round(n * voxel_ml, 2),
                    "mean_hu": round(float(sums[label] / n), 1)})
    return out
