"""Clean-up of a predicted vertebra label map: one vertebra, one piece, one level.

A network's arg-max leaves specks (a few voxels of "T7" inside T8, a blob on a rib) and,
where it is unsure, runs neighbouring vertebrae together or names a whole stretch of the
thoracic spine with one level. Three steps, each cheap and each explainable:

1. ``remove_fragments``: per label, components smaller than ``min_fraction`` of the
   largest are dropped.
2. ``vertebra_instances``: the vertebrae as separate pieces, whatever their labels. Each
   connected piece of vertebra (all levels together) is cut where its cross-section along
   the head-feet axis dips deeply (under ``DIP_RATIO`` of the bone on either side): that
   is a disc the network ran across. Pieces smaller than ``min_ml`` are fragments.
3. ``name_column``: levels follow each other without gaps from head to feet. The pieces
   that form the column are sorted head to feet; piece k is level s + k for the one offset
   s that the evidence agrees with best; a piece beside a column piece (a detached
   spinous process, a rib head) takes its level. A piece that would fall outside T1-L5
   (C7, the sacrum) goes back to background. The evidence for an offset, piece by piece:

   * the share of the piece's voxels the network gave that level (each piece one vote,
     so that a big lumbar vertebra does not outvote the small thoracic ones);
   * ``FOUND_WEIGHT`` when the level is within T1-L5: the network was trained to leave
     C7 and the sacrum as background, so a piece it found is more likely T1 than C7.

So the labels are trusted where the network is sure (the lumbar levels above the sacrum,
the last rib-bearing vertebra) and counting carries that to the rest of the column.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

MIN_FRACTION = 0.1
MIN_PIECE_ML = 2.0  # the smallest vertebra (T1) is about 10 ml; a sliver cut by the scan's edge may be less
DIP_RATIO = 0.3     # a cross-section under 30 % of the bone above and below it is a disc
MIN_PART_MM = 10.0  # no cut leaves a part thinner than this (a thoracic vertebra is ~20 mm disc to disc)
FOUND_WEIGHT = 0.5  # a piece the network found is a vertebra of T1-L5 rather than C7 or the sacrum
RIB_WEIGHT = 2.0    # the last rib-bearing vertebra above one without ribs is T12 (the first below one without, T1)
MIN_RIB_CONTACT = 5  # voxels of rib within RIB_REACH of a vertebra for it to bear a rib
RIB_REACH = 2        # voxels


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


@dataclass
class _Piece:
    centre: float   # along the superior axis, in voxels
    low: float      # lowest and highest index it covers along that axis
    high: float
    box: tuple
    size: int
    mask: np.ndarray


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


def vertebra_instances(vertebra: np.ndarray, spacing, min_ml: float = MIN_PIECE_ML,
                       superior_axis: int = 0) -> tuple[np.ndarray, int]:
    """Instance map (int32, 0 = none) of the vertebrae in the mask ``vertebra``, and their number.

    Connected pieces of vertebra are cut at deep dips of their cross-section along
    ``superior_axis``; pieces and parts under ``min_ml`` are left out.
    """
    pieces, _ = ndimage.label(vertebra, ndimage.generate_binary_structure(3, 1))
    out = np.zeros(vertebra.shape, np.int32)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    min_part = max(int(round(MIN_PART_MM / spacing[superior_axis])), 1)
    other = tuple(a for a in range(3) if a != superior_axis)
    n = 0
    for index, box in enumerate(ndimage.find_objects(pieces), start=1):
        if box is None:
            continue
        mask = pieces[box] == index
        if mask.sum() * voxel_ml < min_ml:
            continue
        edges = [0, *disc_cuts(mask.sum(axis=other), min_part), mask.shape[superior_axis]]
        for low, high in zip(edges[:-1], edges[1:]):
            part = np.zeros_like(mask)
            cut = [slice(None)] * 3
            cut[superior_axis] = slice(low, high)
            part[tuple(cut)] = mask[tuple(cut)]
            if part.sum() * voxel_ml >= min_ml:
                n += 1
                out[box][part] = n
    return out, n


def disc_cuts(area: np.ndarray, min_part: int, ratio: float = DIP_RATIO) -> list[int]:
    """Indices where a piece's cross-section profile dips to a disc; each part keeps ``min_part`` slices.

    A cut goes at the deepest slice of a valley whose floor is under ``ratio`` of the
    largest cross-section on both sides (the part above since the last cut, and all below).
    """
    cuts: list[int] = []
    start, z, n = 0, min_part, len(area)
    while z <= n - min_part - 1:
        floor = ratio * min(area[start:z].max(), area[z + 1:].max())
        if area[z] > floor:
            z += 1
            continue
        end = z
        while end + 1 <= n - min_part - 1 and area[end + 1] <= floor:
            end += 1
        cut = z + int(np.argmin(area[z:end + 1]))
        cuts.append(cut)
        start, z = cut, cut + min_part
    return cuts


def name_column(labels: np.ndarray, spacing, label_map: dict[int, str], levels: list[str],
                superior_axis: int = 0, min_ml: float = MIN_PIECE_ML,
                anchors: dict[str, float] | None = None, rib_label: int | None = None) -> np.ndarray:
    """A new label map: every vertebra one piece with one level, levels consecutive head to feet.

    Labels that are not vertebrae (a bundle may also segment ribs or organs) are kept as
    they are. ``superior_axis`` is the array axis whose index grows towards the head.
    ``anchors`` weighs the votes for some levels more (a model's auxiliary C7 and sacrum,
    the landmarks one counts from); without it every level's vote counts once.
    ``rib_label`` (a model's auxiliary rib class) adds the rib-bearing count: the lowest
    vertebra touching a rib, with a rib-free one below it, gets ``RIB_WEIGHT`` votes for T12,
    and the highest, with a rib-free one above it, for T1.
    """
    is_vertebra = np.zeros(256, bool)
    is_vertebra[[label for label, level in label_map.items() if level in levels]] = True
    vertebra = is_vertebra[labels]
    instances, _ = vertebra_instances(vertebra, spacing, min_ml, superior_axis)
    pieces, votes_of = _pieces(instances, labels, label_map, levels, superior_axis)
    out = np.where(vertebra, 0, labels).astype(labels.dtype)
    if not pieces:
        return out
    stack, hosts = _stack(pieces)
    weights = None if not anchors else np.array([anchors.get(level, 1.0) for level in levels])
    bonus = None
    if rib_label is not None:
        bonus = rib_bonus(rib_bearing([pieces[i] for i in stack], labels, rib_label), levels)
    offset = best_offset([votes_of[i] for i in stack], len(levels), weights, bonus)
    target = {i: offset + k for k, i in enumerate(stack)}
    target.update({i: target[host] for i, host in hosts.items()})
    id_of = {level: label for label, level in label_map.items()}
    for i, piece in enumerate(pieces):
        if 0 <= target[i] < len(levels) and levels[target[i]] in id_of:
            out[piece.box][piece.mask] = id_of[levels[target[i]]]
    return out


def rib_bearing(column: list[_Piece], labels: np.ndarray, rib_label: int) -> list[bool]:
    """For each column piece (head to feet): does a rib touch it (within RIB_REACH voxels)?"""
    rib = labels == rib_label
    if not rib.any():
        return [False] * len(column)
    flags = []
    for piece in column:
        box = tuple(slice(max(b.start - RIB_REACH, 0), min(b.stop + RIB_REACH, n)) for b, n in zip(piece.box, labels.shape))
        mask = np.zeros(tuple(b.stop - b.start for b in box), bool)
        mask[tuple(slice(p.start - b.start, p.stop - b.start) for p, b in zip(piece.box, box))] = piece.mask
        grown = ndimage.binary_dilation(mask, iterations=RIB_REACH)
        flags.append(int((grown & rib[box]).sum()) >= MIN_RIB_CONTACT)
    return flags


def rib_bonus(flags: list[bool], levels: list[str]) -> list[np.ndarray]:
    """Extra votes from the rib-bearing count: T12 for the last rib-bearing piece, T1 for the first.

    Each end counts only where the column goes on past it without ribs (a scan that stops at
    T10 says nothing about T12).
    """
    bonus = [np.zeros(len(levels)) for _ in flags]
    bearing = [k for k, flag in enumerate(flags) if flag]
    if not bearing or "T12" not in levels or "T1" not in levels:
        return bonus
    last, first = max(bearing), min(bearing)
    if last + 1 < len(flags) and not flags[last + 1]:
        bonus[last][levels.index("T12")] += RIB_WEIGHT
    if first >= 1 and not flags[first - 1]:
        bonus[first][levels.index("T1")] += RIB_WEIGHT
    return bonus


def best_offset(votes: list[np.ndarray], n_levels: int, level_weights: np.ndarray | None = None,
                bonus: list[np.ndarray] | None = None) -> int:
    """The offset s (piece k, head to feet, is level s + k) the network's labels agree with best.

    ``votes[k]`` counts piece k's voxels per level. Each piece gives one vote, split by
    the share of its voxels per level (times ``level_weights`` of that level, if given),
    plus ``FOUND_WEIGHT`` when its level is within the levels named. Ties go to the offset
    nearest zero, so the answer never depends on dict order.
    """
    shares = [v / max(float(v.sum()), 1.0) for v in votes]
    if level_weights is not None:
        shares = [share * level_weights for share in shares]
    if bonus is not None:  # votes from outside the network's labels (the rib-bearing count)
        shares = [share + extra for share, extra in zip(shares, bonus)]

    def score(s: int) -> float:
        inside = [share[s + k] for k, share in enumerate(shares) if 0 <= s + k < n_levels]
        return round(float(sum(inside)) + FOUND_WEIGHT * len(inside), 9)

    return max(range(-len(votes), n_levels + 1), key=lambda s: (score(s), -abs(s)))


def _pieces(instances, labels, label_map, levels, superior_axis) -> tuple[list[_Piece], list[np.ndarray]]:
    """Each instance as a ``_Piece``, and the count of its voxels the network gave each level."""
    level_of = np.full(256, -1, np.int64)
    for label, level in label_map.items():
        if level in levels:
            level_of[label] = levels.index(level)
    pieces, votes = [], []
    for index, box in enumerate(ndimage.find_objects(instances), start=1):
        if box is None:
            continue
        mask = instances[box] == index
        along = np.argwhere(mask)[:, superior_axis] + box[superior_axis].start
        pieces.append(_Piece(float(along.mean()), float(along.min()), float(along.max()), box, int(mask.sum()), mask))
        named = level_of[labels[box][mask]]
        votes.append(np.bincount(named[named >= 0], minlength=len(levels)))
    return pieces, votes
