"""Clean-up of a predicted vertebra label map.

A network's arg-max leaves specks: a few voxels of "T7" inside T8, a blob on a rib.
Three steps, each cheap and each explainable:

1. ``unify_instances``: vertebrae are separated by discs, so each connected piece of
   vertebra (all levels together) is one vertebra; a piece that one level dominates is
   given that level throughout, which repairs patchy level labels inside one bone.
   Pieces smaller than ``min_ml`` are fragments and go back to background.
2. ``remove_fragments``: per label, components smaller than ``min_fraction`` of the
   largest are dropped. Larger extra components are kept: they are bone the network saw,
   perhaps under the wrong level, and deleting them would hide that from the reader.
3. ``relabel_by_order``: levels follow each other without gaps from head to feet.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

MIN_FRACTION = 0.1
MIN_PIECE_ML = 0.3
DOMINANT_SHARE = 0.6


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


def relabel_by_order(labels: np.ndarray, label_map: dict[int, str], levels: list[str],
                     superior_axis: int = 0) -> np.ndarray:
    """Make level names consecutive from head to feet, trusting the majority of the network's votes.

    Vertebrae follow each other without gaps, so once the instances (connected pieces of
    each label) are sorted along the head-feet axis, instance k must be level s + k for one
    offset s. The offset most of the voxels agree with wins; pieces that disagree (a T8
    called T7, say) are renamed. ``superior_axis`` is the array axis whose index grows
    towards the head. Returns ``labels`` (modified in place).
    """
    id_of = {level: label for label, level in label_map.items()}
    pieces = _instances(labels, label_map, levels, superior_axis)
    if len(pieces) < 2:
        return labels
    votes: dict[int, int] = {}
    for k, (_, level_index, size, _) in enumerate(pieces):
        votes[level_index - k] = votes.get(level_index - k, 0) + size
    offset = max(votes, key=votes.get)
    for k, (box, level_index, _, mask) in enumerate(pieces):
        target = offset + k
        if target != level_index and 0 <= target < len(levels) and levels[target] in id_of:
            labels[box][mask] = id_of[levels[target]]
    return labels


def _instances(labels, label_map, levels, superior_axis):
    """Connected pieces of every vertebra label, sorted from head to feet: (box, level index, voxels, mask)."""
    pieces = []
    boxes = ndimage.find_objects(labels)
    for index, box in enumerate(boxes):
        level = label_map.get(index + 1)
        if box is None or level not in levels:
            continue
        components, count = ndimage.label(labels[box] == index + 1)
        for c in range(1, count + 1):
            mask = components == c
            centre = np.argwhere(mask)[:, superior_axis].mean() + box[superior_axis].start
            pieces.append((centre, box, levels.index(level), int(mask.sum()), mask))
    pieces.sort(key=lambda p: -p[0])
    return [p[1:] for p in pieces]


def unify_instances(labels: np.ndarray, spacing, vertebra_labels: list[int], min_ml: float = MIN_PIECE_ML,
                    dominant_share: float = DOMINANT_SHARE) -> np.ndarray:
    """Give each connected piece of vertebra the level that dominates it; drop tiny pieces. In place."""
    is_vertebra = np.zeros(256, bool)
    is_vertebra[vertebra_labels] = True
    pieces, count = ndimage.label(is_vertebra[labels], ndimage.generate_binary_structure(3, 1))
    if count == 0:
        return labels
    table = np.bincount(pieces.ravel().astype(np.int64) * 256 + labels.ravel(), minlength=(count + 1) * 256)
    table = table.reshape(count + 1, 256)[1:]
    sizes = table.sum(1)
    dominant = table.argmax(1)
    share = table.max(1) / np.maximum(sizes, 1)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    lut = np.full(count + 1, -1, np.int32)  # -1: keep the voxel's own label
    lut[1:][sizes * voxel_ml < min_ml] = 0
    unify = (share >= dominant_share) & (sizes * voxel_ml >= min_ml)
    lut[1:][unify] = dominant[unify]
    mapped = lut[pieces]
    keep = mapped < 0
    labels[~keep] = mapped[~keep].astype(labels.dtype)
    return labels
