"""The column found from the CT alone, where the network found no vertebra in a short field of view.

The demo network was trained on whole trunks; on a 40-110 mm crop of the spine (a targeted
reconstruction, or a few slices of a study) it has no context and finds nothing. The CT
still shows the vertebrae plainly, so for a scan this short (``MAX_SCAN_MM``) the column is
found as a reader finds it:

1. **the spinal canal**: bone projected along the scan (the share of slices in which each
   (y, x) is bone) shows each vertebra's ring, its body in front and its arch behind, round
   the canal: a hole of a canal's size (``CANAL_AREA_MM2``) in that picture; of the holes
   on the column nearest the bone's midline, the one farthest back (the body's marrow is a
   hole too, in front of the canal). A contrast-filled large vessel against the body's
   front (the aorta's lumen is as bright as marrow) is then read as soft tissue for every
   later step (``vessels``, ``locate``);
2. **the body**: in front of the canal, from its posterior wall to its anterior cortex, on
   the same projection taken over a slab of ``SLAB_MM`` round each slice (dark marrow, as
   dark as soft tissue in an old adult, still shows its endplates there). A canal with no
   body of a vertebra's depth in front of it (``column.BODY_DEPTH_MM``) is no canal: a knee
   or a skull has holes, not a spine;
3. **the discs**: on the body's core profile (``column.core_profile``), the clearest
   dark layers between bright endplates (``column.disc_score`` with the window of the pitch
   the body's depth suggests), at least ``MIN_SEPARATION`` of that pitch apart;
4. **the bone of each vertebra**: split by the disc planes, as in ``column.label_parts``;
5. **the names**: a short field seldom shows what names a vertebra (the last rib with a
   rib-free vertebra below it, the sacrum, C7). Where no landmark is shown, the names
   are a stated prior, not a finding (``prior_names``), and the naming verdict says the
   levels cannot be settled: the SR and the QC picture then say that the levels are unconfirmed.

All arrays are LPS (z, y, x): axis 0 grows towards the head, axis 1 towards the back.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from pipelines.levels import LEVELS
from pipelines.model import column as col
from pipelines.model import vessels

MAX_SCAN_MM = 150.0      # a field at most this tall, where the network found nothing, is looked at this way
PROJECTION_SHARES = (0.1, 0.2, 0.3, 0.5)  # a (y, x) is bone in the projection when it is bone in this share of slices
CANAL_AREA_MM2 = (40.0, 900.0)  # a canal's cross-section (lumbar ~ 250 mm2): the projection blurs it smaller or larger
NO_BONE_SHARE = 0.08     # under this share of slices a (y, x) holds no bone (noise puts a few voxels over BONE_HU)
SAME_COLUMN_MM = 8.0     # holes this close left to right lie on one column (the canal, the body's marrow)
SLAB_MM = 12.0           # the body is found on the projection of this far above and below each slice
MIN_BODY_SLICES = 0.5    # a spine shows its body in front of the canal in at least this share of slices
PITCH_PER_DEPTH = 1.1    # a vertebra's pitch (disc to disc) is about this times its body's depth (T12 30/33 mm, L3 35/38)
MIN_SEPARATION = 0.6     # two discs are at least this share of that pitch apart (dark marrow mid-body is no disc)
RADIUS_PER_DEPTH = 0.7   # a body's outline lies within this times its depth of its centre (L3 35 mm deep, 50 wide)
RIB_ROOT_MM = 26.0       # a rib's neck passes this close to the centreline (the body's side is ~20 mm out)
MIN_PIECE_MM2 = 10.0     # bone pieces under this in a slice are noise (a disc on a noisy scan), not the body's cortex


def short_field(shape, spacing) -> bool:
    """Whether a scan is short enough (``MAX_SCAN_MM``) for the column to be looked for on the CT alone."""
    return shape[0] * float(spacing[0]) <= MAX_SCAN_MM


def bone_share(hu: np.ndarray, spacing) -> np.ndarray:
    """Per voxel, whether it is bone (``column.BONE_HU`` after a light smoothing)."""
    sy, sx = float(spacing[1]), float(spacing[2])
    return ndimage.gaussian_filter(hu.astype(np.float32), (0.5, 1.0 / sy, 1.0 / sx)) >= col.BONE_HU


def canal_candidates(dense: np.ndarray, spacing) -> list[tuple[float, float]]:
    """(y, x) centres of the holes of a canal's size in the bone projected along the scan, at each share."""
    sy, sx = float(spacing[1]), float(spacing[2])
    share = dense.mean(axis=0)
    ring = ndimage.generate_binary_structure(2, 1)
    out = []
    for level in PROJECTION_SHARES:
        bone = ndimage.binary_closing(share >= level, ring, iterations=max(int(round(1.5 / sy)), 1))
        holes, n = ndimage.label(ndimage.binary_fill_holes(bone) & ~bone)
        for k in range(1, n + 1):
            yy, xx = np.nonzero(holes == k)
            if CANAL_AREA_MM2[0] <= len(yy) * sy * sx <= CANAL_AREA_MM2[1]:
                out.append((float(yy.mean()), float(xx.mean())))
    return out


def body_in_front(dense: np.ndarray, spacing, canal: tuple[float, float]) -> np.ndarray:
    """Per slice, (front, back) y of the body in front of ``canal`` on the slab's projection; NaN where none is."""
    sz, sy = float(spacing[0]), float(spacing[1])
    half = max(int(round(SLAB_MM / sz)), 1)
    y0, x = int(round(canal[0])), int(round(canal[1]))
    band = dense[:, :y0 + 1, max(x - 2, 0):x + 3].mean(axis=2).astype(np.float32)  # (z, y) bone share on the midline
    slab = ndimage.uniform_filter1d(band, 2 * half + 1, axis=0, mode="nearest")
    out = np.full((dense.shape[0], 2), np.nan)
    for z in range(dense.shape[0]):
        found = _body_on_ray(slab[z], y0, sy)
        if found is not None:
            out[z] = found
    return out


def _body_on_ray(share: np.ndarray, start: int, sy: float) -> tuple[int, int] | None:
    """(front, back) of the body on a ray of bone shares from the canal forwards, or None."""
    limit = max(start - int(col.BODY_DEPTH_MM[1] / sy), 0)
    back = next((y for y in range(start, limit, -1) if share[y] >= PROJECTION_SHARES[0]), None)
    if back is None:
        return None
    front = _last_bone(share, back, -1, int(col.BODY_DEPTH_MM[1] / sy), sy)
    depth = (back - front + 1) * sy
    if not col.BODY_DEPTH_MM[0] <= depth <= col.BODY_DEPTH_MM[1]:
        return None
    return front, back


def find_centre(hu: np.ndarray, spacing) -> tuple[np.ndarray, dict, np.ndarray] | None:
    """Per slice the body's centre (y, x), what was seen, and the bone (``bone_share``, for the later steps);
    None when the scan shows no canal with a body in front."""
    dense = bone_share(hu, spacing)
    valid = []
    for canal in canal_candidates(dense, spacing):
        bodies = body_in_front(dense, spacing, canal)
        seen = int(np.isfinite(bodies[:, 0]).sum())
        if seen >= MIN_BODY_SLICES * hu.shape[0]:
            valid.append((canal[0], seen, canal, bodies))
    if not valid:
        return None
    share = dense.mean(axis=0)
    midline = float(np.average(np.nonzero(share >= PROJECTION_SHARES[0])[1]))  # bone is about symmetric round the spine
    nearest = min(valid, key=lambda v: abs(v[2][1] - midline))  # the column: the hole nearest the midline ...
    same_column = [v for v in valid if abs(v[2][1] - nearest[2][1]) * float(spacing[2]) <= SAME_COLUMN_MM]
    _, seen, canal, bodies = max(same_column, key=lambda v: v[0])  # ... its canal behind the body's marrow hole
    valid = np.flatnonzero(np.isfinite(bodies[:, 0]))
    middle = bodies[valid].mean(axis=1)
    y = np.interp(np.arange(hu.shape[0]), valid, middle)
    x = body_middle_x(dense, spacing, canal, float(np.median(middle)))
    centre = np.column_stack([ndimage.gaussian_filter1d(y, max(3.0 / float(spacing[0]), 0.5), mode="nearest"),
                              np.full(hu.shape[0], x)])
    depth_mm = float(np.median(bodies[valid, 1] - bodies[valid, 0] + 1) * float(spacing[1]))
    return centre, {"canal_yx": [round(canal[0], 1), round(canal[1], 1)], "body_depth_mm": round(depth_mm, 1),
                    "slices_with_body": seen}, dense


def locate(hu: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray, dict, np.ndarray] | None:
    """``find_centre`` on the CT with its contrast-filled large vessels read as soft tissue (``vessels``), and that CT.

    The canal comes first (a vessel is known from bone only by where it lies in front of
    it); with a vessel found, the body is looked for again without it, since a lumen as
    bright as marrow against the body's front would read as more body. Returns (the CT the
    column's bone is taken from, centre, seen, bone), or None when no canal with a body shows.
    """
    found = find_centre(hu, spacing)
    if found is None:
        return None
    mask, lumens = vessels.vessel_lumens(hu, spacing, found[1]["canal_yx"])
    if not lumens:
        return hu, *found
    cleared = vessels.without_vessels(hu, mask)
    again = find_centre(cleared, spacing)
    if again is None:
        return hu, *found
    centre, seen, dense = again
    return cleared, centre, {**seen, "vessels_left_out": lumens}, dense


def body_middle_x(dense: np.ndarray, spacing, canal: tuple[float, float], y: float) -> float:
    """The x half-way between the body's sides, on the projection's row through its middle (``y``).

    From the canal's x, each way, the side is the last bone before ``column.FRONT_GAP_MM``
    without any: the canal lies on the midline only as far as the arch is symmetric.
    """
    sx = float(spacing[2])
    row = dense[:, int(round(y)), :].mean(axis=0)
    x0 = int(round(canal[1]))
    reach = int(col.BODY_DEPTH_MM[1] / sx) + 1
    return (_last_bone(row, x0, -1, reach, sx) + _last_bone(row, x0, 1, reach, sx)) / 2


def _last_bone(share: np.ndarray, start: int, step: int, steps: int, voxel_mm: float) -> int:
    """From ``start``, ``steps`` voxels at most in direction ``step``: the last with bone (``NO_BONE_SHARE``)
    before ``column.FRONT_GAP_MM`` without any."""
    last, gap = start, 0
    for i in range(steps):
        at = start + step * i
        if not 0 <= at < len(share):
            break
        if share[at] >= NO_BONE_SHARE:
            last, gap = at, 0
        else:
            gap += 1
            if gap * voxel_mm >= col.FRONT_GAP_MM:
                break
    return last


def find_discs(profile: np.ndarray, sz: float, pitch_mm: float) -> tuple[list[float], list[float]]:
    """Slice indices of the discs head to feet, and their scores: the clearest first, each far enough from the others.

    A disc scores ``column.END_SCORE_HU`` or more with the endplate window of ``pitch_mm``;
    a candidate closer than ``MIN_SEPARATION`` of the pitch to a disc already taken is the
    dark marrow in the middle of a body, or the same disc again.
    """
    score = col.disc_score(profile, sz, col.endplate_window(pitch_mm))
    apart = MIN_SEPARATION * pitch_mm / sz
    taken: list[int] = []
    for z in np.argsort(-score, kind="stable"):
        if score[z] < col.END_SCORE_HU:
            break
        if all(abs(int(z) - t) >= apart for t in taken):
            taken.append(int(z))
    taken.sort(reverse=True)
    return [_plateau_middle(score, z) for z in taken], [round(float(score[z]), 1) for z in taken]


def _plateau_middle(score: np.ndarray, z: int, within_hu: float = 10.0) -> float:
    """The middle of the run of slices round ``z`` that score within ``within_hu`` of it: a thick disc's middle."""
    lo, hi = z, z
    while lo > 0 and score[lo - 1] >= score[z] - within_hu:
        lo -= 1
    while hi < len(score) - 1 and score[hi + 1] >= score[z] - within_hu:
        hi += 1
    return (lo + hi) / 2


def disc_layers(profile: np.ndarray, sz: float, discs: list[float], pitch_mm: float) -> np.ndarray:
    """Per slice, whether it lies in a disc: between a disc's two endplates (the brightest slice within the window
    on each side), or between the field's edge and the endplate of a disc the edge cuts (``_edge_disc``)."""
    k = max(int(round(col.endplate_window(pitch_mm) / sz)), 1)
    layer = np.zeros(len(profile), bool)
    for d in discs:
        z = int(round(d))
        below = profile[max(z - k, 0):z]
        above = profile[z + 1:z + 1 + k]
        lo = max(z - k, 0) + int(np.argmax(below)) if len(below) else z
        hi = z + 1 + int(np.argmax(above)) if len(above) else z
        layer[lo + 1:hi] = True
    apart = MIN_SEPARATION * pitch_mm / sz  # as between two discs: a disc cut by the edge is a vertebra from the next
    n = len(profile)
    if all(d >= apart for d in discs):
        layer[:_edge_disc(profile, k)] = True
    if all(n - 1 - d >= apart for d in discs):
        layer[n - _edge_disc(profile[::-1], k):] = True
    return layer


def _edge_disc(profile: np.ndarray, k: int) -> int:
    """How many slices from the field's first one lie in a disc the edge cuts (0 when the field starts in bone).

    The endplate is the brightest of the first ``k`` + 1 slices; the disc, the run of slices
    from the edge each darker than it by ``column.END_SCORE_HU`` (a disc's score with one
    side only: the other endplate is beyond the field). A field that starts in a body has
    no such run: its first slices are marrow, near the brightest of them. Dark marrow can
    look the same (on the real L2-L4 crop, L2's marrow reads 28-34 HU under an endplate of
    291), so ``disc_layers`` takes the run only where the edge lies a disc's separation from
    the discs found (there, 12 mm from the L2/L3 disc: L2 Dice 0.61 -> 0.50 without it). On the real
    T11-T12 series the T12/L1 disc fills the two lowest slices (73 and 71 HU under an
    endplate of 208): they were taken as T12's body, 3,700 voxels past TotalSegmentator's
    T12, which labels only the disc's bony rim there (now 300; T12 Dice 0.665 -> 0.685).
    On the held-out short-field phantoms (``research.evaluate_short_fields``) 48 of 82
    vertebrae are found, 47 before; mean vertebra Dice 0.706 and median best Dice 0.536 as before.
    """
    head = profile[:k + 1]
    if len(head) < 2:
        return 0
    top = float(head.max())
    run = 0
    while run < int(np.argmax(head)) and top - profile[run] >= col.END_SCORE_HU:
        run += 1
    return run


def ribs_leaving_field(dense: np.ndarray, spacing, centre: np.ndarray) -> list[float]:
    """Slice indices where a rib runs out of the scan's top or bottom: rib evidence a short field can still give.

    In a 40 mm field a lower rib leaves through the first or the last slice before it runs
    far enough out to pass the rib test of the whole scan (``anatomy.RIB_REACH_MM``). A bone
    piece beside the column that reaches ``column.RIB_MARKER_MM`` or more from the
    centreline (past any transverse process), starts at the column (within ``RIB_ROOT_MM``:
    a rib's head and neck; an iliac wing starts farther out, at the sacroiliac joint) and
    touches the first or last slice is one; its level is where it is nearest the column.
    """
    sy, sx = float(spacing[1]), float(spacing[2])
    dx = np.abs(np.arange(dense.shape[2])[None, :] - centre[:, 1][:, None]) * sx  # (z, x)
    dy = (np.arange(dense.shape[1])[None, :] - centre[:, 0][:, None]) * sy      # (z, y)
    near_column = (np.abs(dy)[:, :, None] <= col.BOX_BACK_MM) & (dx[:, None, :] <= 2 * col.RIB_MARKER_MM)
    pieces, n = ndimage.label(dense & near_column & (dx[:, None, :] >= col.BODY_RADIUS_MM))
    found = []
    for k, box in enumerate(ndimage.find_objects(pieces), start=1):
        if box is None or (box[0].start > 0 and box[0].stop < dense.shape[0]):
            continue
        z, y, x = np.nonzero(pieces[box] == k)
        z = z + box[0].start
        lateral = dx[z, x + box[2].start]
        if lateral.max() >= col.RIB_MARKER_MM and lateral.min() <= RIB_ROOT_MM:
            found.append(float(np.median(z[lateral <= lateral.min() + 5.0])))
    return sorted(found, reverse=True)


def prior_names(n_parts: int, rib_bearing: list[bool]) -> tuple[list[str], str]:
    """Names for ``n_parts`` vertebrae head to feet when nothing in the field names them, and the prior used.

    A prior, not a finding: rib-bearing vertebrae are thoracic, so a column with ribs is
    named to end at T12 with its lowest rib-bearing vertebra (a short field with ribs and
    nothing to number them is most often the thoraco-lumbar junction); a column without any
    rib is lumbar, named round L3, the middle of L1-L5.
    """
    if any(rib_bearing):
        last = max(i for i, bears in enumerate(rib_bearing) if bears)
        first = LEVELS.index("T12") - last
        how = "the lowest rib-bearing vertebra named T12"
    else:
        first = LEVELS.index("L3") - (n_parts - 1) // 2
        first = min(max(first, LEVELS.index("L1")), max(LEVELS.index("L5") - n_parts + 1, LEVELS.index("L1")))
        how = "no rib: lumbar, named round L3"
    names = [LEVELS[first + i] if 0 <= first + i < len(LEVELS) else f"beyond {LEVELS[-1]}" for i in range(n_parts)]
    return names, how


def column_from_ct(hu: np.ndarray, spacing, label_map: dict[int, str], centre: np.ndarray, seen: dict, dense: np.ndarray,
                   rib_z: list[float], rib_names: list[str] | None, numbered_from: str | None = None
                   ) -> col.Column | None:
    """The vertebrae between the discs found on the CT, named by the rib numbering where there is one, else by the prior.

    ``centre``, ``seen`` and ``dense`` come from ``find_centre``; ``rib_z`` are the rib levels' slice
    indices (head to feet) and ``rib_names`` their numbering, None when the field does not
    number them; ``numbered_from`` says from which end ("last rib", "first rib"). In a short
    field the numbering stands only where the rib-free vertebra it rests on is whole, between
    two discs (``_numbering_stands``): a vertebra cut by the field may hide its rib beyond it.
    None when no disc shows: one body with nothing to split is not told from another bone.
    """
    sz = float(spacing[0])
    pitch_mm = PITCH_PER_DEPTH * seen["body_depth_mm"]
    profile = col.core_profile(hu, spacing, centre)
    discs, scores = find_discs(profile, sz, pitch_mm)
    if not discs:
        return None
    n_parts = len(discs) + 1
    leaving = ribs_leaving_field(dense, spacing, centre)
    part_of = [sum(z < d for d in discs) for z in rib_z]  # 0 = above the first disc
    bearing = [i in part_of + [sum(z < d for d in discs) for z in leaving] for i in range(n_parts)]
    set_aside = None
    if rib_names and not _numbering_stands(part_of, n_parts, numbered_from, leaving, rib_z, sz):
        set_aside, rib_names = f"the rib numbering ({numbered_from} level) was set aside: the rib-free " \
                               "vertebra it rests on is cut by the field, or a rib runs out of the field beyond it", None
    if rib_names:
        anchor = LEVELS.index(rib_names[0]) - part_of[0] if rib_names[0] in LEVELS else None
        names = [LEVELS[anchor + i] if anchor is not None and 0 <= anchor + i < len(LEVELS) else "unnamed"
                 for i in range(n_parts)]
        how = "the rib numbering"
    else:
        names, how = prior_names(n_parts, bearing)
    radius = max(col.BODY_RADIUS_MM, RADIUS_PER_DEPTH * seen["body_depth_mm"])
    labels, cores, kept, dropped = col.label_parts(hu, spacing, centre, discs, names, label_map,
                                                   radius_mm=radius, min_piece_mm2=MIN_PIECE_MM2,
                                                   disc_slices=disc_layers(profile, sz, discs, pitch_mm))
    if not kept:
        return None
    record = {"method": "found on the CT alone (the network found no vertebra in this short field): the canal and "
                        "the body in front of it on the bone projected along the scan, the discs by their endplates "
                        "on the body's core, the bone split between them",
              "levels": kept, "left_out": dropped, "named_by": how, "rib_bearing": bearing,
              **({"rib_numbering_set_aside": set_aside} if set_aside else {}),
              "ribs_leaving_field_z_mm": [round(z * sz, 1) for z in leaving],
              "discs_z_mm": [round(d * sz, 1) for d in discs], "disc_scores_hu": scores,
              "pitch_mm_from_body_depth": round(pitch_mm, 1), **seen,
              "lesions_judged_on": f"the body's core only: {col.CORE_MARGIN_MM:.0f} mm or more from the disc planes"}
    return col.Column(labels, cores, record)


def _numbering_stands(part_of: list[int], n_parts: int, numbered_from: str | None, leaving: list[float],
                      rib_z: list[float], sz: float) -> bool:
    """Whether a rib numbering holds in a short field: its rib-free vertebra lies whole in the field, with no rib cut
    by the field beyond the numbered end (parts are counted head to feet, 0 above the first disc)."""
    if numbered_from == "last rib":
        free = max(part_of) + 1
        beyond = [z for z in leaving if z < min(rib_z) - col.RIB_MARKER_MM / 4 / sz]
    elif numbered_from == "first rib":
        free = min(part_of) - 1
        beyond = [z for z in leaving if z > max(rib_z) + col.RIB_MARKER_MM / 4 / sz]
    else:
        return False
    return 0 < free < n_parts - 1 and not beyond
