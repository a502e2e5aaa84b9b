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

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

MIN_FRACTION = 0.1
MIN_PIECE_ML = 2.0  # the smallest vertebra (T1) is about 10 ml; a sliver cut by the scan's edge may be less
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

    Vertebrae follow each other without gaps, so once the vertebrae (connected pieces of
    each label) are sorted along the head-feet axis, vertebra k must be level s + k for one
    offset s. The offset most of the voxels agree with wins; pieces that disagree (a T8
    called T7, say) are renamed. A piece lying beside a bigger one at the same height (a
    detached spinous process, a rib head) is not a vertebra of its own: it is not counted
    and takes the level of the bigger piece. ``superior_axis`` is the array axis whose
    index grows towards the head. Returns ``labels`` (modified in place).
    """
    id_of = {level: label for label, level in label_map.items()}
    pieces = _instances(labels, label_map, levels, superior_axis)
    stack, hosts = _stack(pieces)
    if len(stack) < 2:
        return labels
    votes: dict[int, int] = {}
    for k, i in enumerate(stack):
        votes[pieces[i].level - k] = votes.get(pieces[i].level - k, 0) + pieces[i].size
    offset = max(votes, key=votes.get)
    target = {i: offset + k for k, i in enumerate(stack)}
    target.update({i: target[host] for i, host in hosts.items()})
    for i, piece in enumerate(pieces):
        t = target[i]
        if t != piece.level and 0 <= t < len(levels) and levels[t] in id_of:
            labels[piece.box][piece.mask] = id_of[levels[t]]
    return labels


@dataclass
class _Piece:
    centre: float   # along the superior axis, in voxels
    low: float      # lowest and highest index it covers along that axis
    high: float
    box: tuple
    level: int      # index in ``levels`` of its current label
    size: int
    mask: np.ndarray


def _instances(labels, label_map, levels, superior_axis) -> list[_Piece]:
    """Connected pieces of every vertebra label, sorted from head to feet."""
    pieces = []
    boxes = ndimage.find_objects(labels)
    for index, box in enumerate(boxes):
        level = label_map.get(index + 1)
        if box is None or level not in levels:
            continue
        components, count = ndimage.label(labels[box] == index + 1)
        for c in range(1, count + 1):
            mask = components == c
            along = np.argwhere(mask)[:, superior_axis] + box[superior_axis].start
            pieces.append(_Piece(float(along.mean()), float(along.min()), float(along.max()), box,
                                 levels.index(level), int(mask.sum()), mask))
    pieces.sort(key=lambda p: -p.centre)
    return pieces


def _stack(pieces: list[_Piece]) -> tuple[list[int], dict[int, int]]:
    """Indices of the pieces that form the column (head to feet), and side piece -> the piece it sits beside.

    Biggest first, a piece joins the column unless its centre lies in the middle half of
    the head-feet extent of a piece already in it.
    """
    column: list[int] = []
    hosts: dict[int, int] = {}
    for i in sorted(range(len(pieces)), key=lambda i: -pieces[i].size):
        p = pieces[i]
        host = next((j for j in column if _inside(p.centre, pieces[j])), None)
        if host is None:
            column.append(i)
        else:
            hosts[i] = host
    return sorted(column, key=lambda i: -pieces[i].centre), hosts


def _inside(centre: float, piece: _Piece) -> bool:
    quarter = (piece.high - piece.low) / 4
    return piece.low + quarter <= centre <= piece.high - quarter


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
