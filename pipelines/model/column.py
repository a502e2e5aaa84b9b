"""The vertebral column rebuilt from the CT's own anatomy, where the network ran vertebrae together.

On real CT the demo network finds the spine but runs two to four vertebrae into one label,
and its names are then meaningless (``anatomy.check_naming`` says so: one label spans
several rib levels). The CT itself shows what a reader counts with:

1. **the bodies' centreline**: per slice, the middle of the body on the midline, between
   its posterior wall (the first bone in front of the canal) and its anterior cortex
   (``body_centreline``), smoothed along the column;
2. **the discs**: a rib's head articulates at the top of its own vertebra (for ribs 2-9
   across the disc above it), so the disc above vertebra k lies at, or up to 10 mm above,
   rib level k. There it is found by its endplates: a dark layer of the body's core
   between two bright ones (``disc_score``, on a small disk square to the centreline, so
   that a disc tilted by the kyphosis is sampled across). Where the endplates do not stand
   out (shoulder streaks), the disc goes at the offset the clear ones show. The disc under
   the last rib's vertebra is looked for one pitch further down. Each disc is a plane
   square to the centreline (thoracic kyphosis tilts the discs by up to ~35 deg);
3. **the bone of each vertebra**: bone around the column (HU >= ``BONE_HU``; the body is
   the convex hull of its cortex in front of its posterior wall, so dark marrow is in and
   the canal out), the bodies split by the disc planes, the rest (pedicles, laminae,
   processes) flooded from the bodies through bone by a watershed that competes with the
   ribs (bone far lateral), so a spinous process goes to its own vertebra, a rib to the ribs;
4. **the names**: the vertebra under the disc at rib level k is the level the rib count
   gave that rib (``anatomy._rib_numbering``: T12 is the last rib-bearing vertebra when
   one without a rib shows below, else T1 the first when one without shows above); the
   one below the last is L1 (or the next level), the one above the first is C7 (never
   reported).

Lesions are judged on the bodies' cores only (``Column.cores``): the disc planes are
placed to a few millimetres, so a neighbour's endplate must never be read as a focus.
It runs only where the rib levels are numbered; a vertebra cut by the edge of the scan (no
disc found on one side within the scan) is kept and measured as such by the later steps.
All arrays are LPS (z, y, x): axis 0 grows towards the head, axis 1 towards the back.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from pipelines.levels import LEVELS

BONE_HU = 150.0          # cortex and dense trabecular bone after a light smoothing; disc and muscle stay below
AXIS_BEHIND_MM = 8.0     # the walk to the body starts this far behind the network's axis (inside the canal)
BODY_DEPTH_MM = (12.0, 60.0)  # a body is this deep front to back (T1 ~15 mm, L5 ~35 mm), at most
FRONT_SOFT_HU = 60.0     # in front of the body: soft tissue or fat ...
FRONT_GAP_MM = 5.0       # ... over this depth ends the body
CORE_RADIUS_MM = 6.0     # the body's core, where the disc profile is sampled
TANGENT_MM = 20.0        # the column's direction is smoothed over this (sd); the centre wobbles by a few mm
ENDPLATE_MM = 4.0        # a thoracic disc's endplates lie within this above and below it ...
PITCH_ENDPLATE = 0.2     # ... below the ribs, within this share of the pitch (a lumbar disc is 8-12 mm thick) ...
MAX_ENDPLATE_MM = 8.0    # ... up to this
DISC_SEARCH_MM = (-3.0, 10.0)  # the disc above a rib's vertebra lies this far from the rib level (below, above)
END_WINDOW = (0.6, 1.4)  # each disc below the last rib's vertebra lies this many pitches below the one above it
MAX_BELOW_RIBS = 6       # L1-L5 and a transitional L6 at most
END_SCORE_HU = 60.0      # ... and is kept where its endplates stand out by this much
CLEAR_SCORE_HU = 45.0    # a disc whose endplates stand out less is placed at the offset the clear ones show
RIB_MARKER_MM = 48.0     # bone this far lateral to the centreline is rib (a thoracic transverse process ends at ~40)
BOX_LATERAL_MM = 60.0    # the column's bone lies within this distance left and right of the centreline ...
BOX_FRONT_MM = 35.0      # ... from this far in front of the body centre ...
BOX_BACK_MM = 85.0       # ... to this far behind it (the tip of a spinous process)
CANAL_HU = 40.0          # the spinal canal behind the body holds CSF, cord and epidural fat: under this ...
CANAL_GAP_MM = 3.0       # ... over this depth behind the body's posterior wall
BODY_RADIUS_MM = 22.0    # a body's outline lies within this of its centre (L5 is ~50 x 35 mm)
MIN_BODY_SLICE_MM2 = 40.0  # less bone than this in a slice of the body zone: a disc, no body there
CORE_MARGIN_MM = 3.0     # lesions are judged on body voxels at least this far from the disc planes ...
CORE_RADIUS_LESION_MM = 16.0  # ... and this close to the centreline (not the pedicles or the rib heads)
MIN_VERTEBRA_ML = 2.0    # a part under this (a sliver of a vertebra cut by the scan) is not reported


@dataclass
class Column:
    """The rebuilt column: label map (the bundle's ids), and what was found, for the record."""

    labels: np.ndarray
    cores: np.ndarray | None = None  # the bodies' cores (same ids), where a lesion may be judged
    record: dict = field(default_factory=dict)


def body_centreline(hu: np.ndarray, spacing, axis: np.ndarray) -> np.ndarray:
    """Per slice, the (y, x) voxel index of the vertebral body's centre, smoothed along the column.

    ``axis`` is ``anatomy.column_axis`` of the network's vertebrae (per slice (y, x)): it runs
    through the spinal canal or just in front of it. Along the midline, walking forwards
    from there, the body starts at its posterior wall (the first bone, ``BONE_HU``) and ends
    at its anterior cortex: the last bone before ``FRONT_GAP_MM`` of soft tissue or fat.
    The centre is halfway; slices where no body shows (a disc) take their neighbours' value.
    """
    sy = float(spacing[1])
    smooth = ndimage.gaussian_filter1d(hu.astype(np.float32), 1.5 / sy, axis=1)
    centre = np.full((hu.shape[0], 2), np.nan)
    for z in range(hu.shape[0]):
        y0, x = int(round(axis[z, 0] + AXIS_BEHIND_MM / sy)), int(round(axis[z, 1]))
        if not 0 <= x < hu.shape[2]:
            continue
        band = smooth[z, :, max(x - 2, 0):x + 3].mean(axis=1)
        found = _body_along_ray(band, min(y0, hu.shape[1] - 1), sy)
        if found is not None:
            centre[z] = ((found[0] + found[1]) / 2, x)
    valid = np.flatnonzero(~np.isnan(centre[:, 0]))
    if len(valid) == 0:
        return np.asarray(axis, float).copy()
    steps = max(int(round(20.0 / float(spacing[0]))) | 1, 3)
    for a in range(2):
        values = ndimage.median_filter(centre[valid, a], size=min(steps, len(valid)), mode="nearest")
        centre[:, a] = np.interp(np.arange(hu.shape[0]), valid, values)
    return ndimage.gaussian_filter1d(centre, max(3.0 / float(spacing[0]), 0.5), axis=0, mode="nearest")


def _body_along_ray(band: np.ndarray, start: int, sy: float) -> tuple[int, int] | None:
    """(front, back) y index of the body on a ray from ``start`` towards the front (smaller y), or None."""
    limit = max(start - int(BODY_DEPTH_MM[1] / sy), 0)
    back = next((y for y in range(start, limit, -1) if band[y] >= BONE_HU), None)
    if back is None:
        return None
    front, gap = back, 0
    for y in range(back, max(back - int(BODY_DEPTH_MM[1] / sy), 0), -1):
        if band[y] >= BONE_HU:
            front, gap = y, 0
        elif band[y] < FRONT_SOFT_HU:
            gap += 1
            if gap * sy >= FRONT_GAP_MM:
                break
    if (back - front) * sy < BODY_DEPTH_MM[0]:
        return None
    return front, back


def core_profile(hu: np.ndarray, spacing, centre: np.ndarray) -> np.ndarray:
    """Mean HU of the body's core per slice: a disk of ``CORE_RADIUS_MM`` round the centreline, square to it.

    The disk is tilted with the column (``tangents``), so that a disc of a kyphotic
    thoracic spine is sampled across, not obliquely; it is small, because a thoracic disc
    of an old adult is one 2 mm slice thin and a wider disk would blur it with the tilt.
    """
    offsets = np.arange(-CORE_RADIUS_MM, CORE_RADIUS_MM + 0.01, 1.0)
    a, b = np.meshgrid(offsets, offsets, indexing="ij")
    inside = a ** 2 + b ** 2 <= CORE_RADIUS_MM ** 2
    a, b = a[inside], b[inside]
    sp = np.asarray(spacing, float)
    out = np.zeros(hu.shape[0])
    for z, n in enumerate(tangents(centre, spacing)):
        u = np.cross(n, [0.0, 0.0, 1.0])
        u /= max(np.linalg.norm(u), 1e-9)
        v = np.cross(n, u)
        origin = np.array([z, centre[z, 0], centre[z, 1]]) * sp
        points = origin[:, None] + u[:, None] * a + v[:, None] * b
        out[z] = float(ndimage.map_coordinates(hu, points / sp[:, None], order=1, mode="nearest").mean())
    return out


def disc_score(profile: np.ndarray, sz: float, endplate_mm: float = ENDPLATE_MM) -> np.ndarray:
    """Per slice, how much darker the core is than the brighter of the endplates on either side of it.

    A disc between real vertebrae is a dark layer between two bright endplates, each within
    ``endplate_mm``: the score is the lower of the two sides' brightest value minus the
    slice's own. Trabecular bone (as dark as 100 HU in an old adult, the disc 80-100 HU)
    has no such rims, so a dark patch in the middle of a body scores little, as long as
    ``endplate_mm`` is under half the body's height (``endplate_window``).
    """
    k = max(int(round(endplate_mm / sz)), 1)
    n = len(profile)
    score = np.zeros(n)
    for z in range(n):
        above = profile[z + 1:z + 1 + k]
        below = profile[max(z - k, 0):z]
        if len(above) and len(below):
            score[z] = min(above.max(), below.max()) - profile[z]
    return score


def endplate_window(pitch_mm: float) -> float:
    """How far (mm) from a disc's middle its endplates are looked for, below the ribs, where the pitch is known.

    A lumbar disc is 8-12 mm thick, so its endplates lie beyond the thoracic
    ``ENDPLATE_MM``: on the real L2-L4 crop in ``../shared/data`` its two discs score under
    45 HU with 4 mm, well over ``END_SCORE_HU`` with this window (``tests/test_column_rebuild.py``).
    A window near half a body's height would instead find the middle of a body with dark
    marrow between its two endplates, so it is ``PITCH_ENDPLATE`` of the pitch (a body is
    about three quarters of it), at least ``ENDPLATE_MM`` and at most ``MAX_ENDPLATE_MM``.
    """
    return float(np.clip(PITCH_ENDPLATE * pitch_mm, ENDPLATE_MM, MAX_ENDPLATE_MM))


def tangents(centre: np.ndarray, spacing) -> np.ndarray:
    """Unit vectors (mm; z, y, x) along the centreline, per slice, towards the head, smoothed over ``TANGENT_MM``."""
    smooth = ndimage.gaussian_filter1d(centre, max(TANGENT_MM / float(spacing[0]), 0.5), axis=0, mode="nearest")
    step = np.gradient(smooth, axis=0) * np.asarray(spacing[1:], float)  # mm of y, x per slice
    t = np.column_stack([np.full(len(centre), float(spacing[0])), step])
    return t / np.linalg.norm(t, axis=1, keepdims=True)


def disc_positions(profile: np.ndarray, rib_z: list[float], sz: float) -> tuple[list[float], dict]:
    """Slice indices (head to feet) of the disc above each rib's vertebra and the one below the last, and their scores.

    ``rib_z`` are the rib levels' slice indices, head to feet; ``profile`` is
    ``core_profile``. A rib's head articulates at the top of its own vertebra (across the
    disc above it, for ribs 2-9), and the rib level is measured where the neck passes the
    transverse process, a little lower: so the disc above vertebra k lies from just below
    to ``DISC_SEARCH_MM`` above rib level k (measured on the real chest CT: 8 of its 10
    discs read by eye found within 3 mm). Each disc is the best ``disc_score`` there; where
    that is weak (``CLEAR_SCORE_HU``), the disc goes at the median offset from their rib
    levels that the clear discs show.
    Below the last rib's vertebra the next disc is looked for ``END_WINDOW`` pitches down
    (the pitch of the vertebra above it), and kept when the window lies in the scan and the
    score, with the endplates looked for as far as the pitch allows (``endplate_window``), is clear
    (``END_SCORE_HU``); and so on down the lumbar spine, one vertebra at a time.
    """
    score = disc_score(profile, sz)
    n = len(profile)
    discs, scores = [], []
    for rib in rib_z:
        lo = min(max(int(np.ceil(rib + DISC_SEARCH_MM[0] / sz)), 0), n - 1)
        hi = min(max(int(np.floor(rib + DISC_SEARCH_MM[1] / sz)), lo), n - 1)
        z = lo + int(np.argmax(score[lo:hi + 1]))
        discs.append(float(z))
        scores.append(round(float(score[z]), 1))
    clear = [d - r for d, r, sc in zip(discs, rib_z, scores) if sc >= CLEAR_SCORE_HU]
    offset = float(np.median(clear)) if clear else DISC_SEARCH_MM[1] / 2 / sz
    how = []
    for i, (rib, sc) in enumerate(zip(rib_z, scores)):
        if sc < CLEAR_SCORE_HU:  # no clear endplates (shoulder streaks, a thin disc): where the others lie
            discs[i] = float(np.clip(round(rib + offset), 0, n - 1))
        how.append("endplates" if sc >= CLEAR_SCORE_HU else "rib level + the clear discs' offset")
    notes: dict = {"scores_hu": scores, "found_by": how, "offset_mm": round(offset * sz, 1), "below_last": []}
    if len(rib_z) >= 2:
        pitch = discs[-2] - discs[-1] if discs[-2] > discs[-1] else rib_z[-2] - rib_z[-1]
        while len(notes["below_last"]) < MAX_BELOW_RIBS:  # L1, L2, ... down to the sacrum or the scan's end
            lumbar = disc_score(profile, sz, endplate_window(pitch * sz))
            below = _end_disc(lumbar, discs[-1] - END_WINDOW[1] * pitch, discs[-1] - END_WINDOW[0] * pitch)
            if below is None:
                break
            pitch = discs[-1] - below["z"]
            discs.append(float(below["z"]))
            notes["below_last"].append(below)
    return discs, notes


def _end_disc(score: np.ndarray, lo: float, hi: float) -> dict | None:
    """The next disc down below the last rib's vertebra, if the scan shows one: a clear disc score inside the scan."""
    lo_i, hi_i = max(int(np.floor(lo)), 1), min(int(np.ceil(hi)), len(score) - 2)
    if hi_i - lo_i < 1:
        return None  # the window lies off the scan: the vertebra is cut, or there is none below
    z = lo_i + int(np.argmax(score[lo_i:hi_i + 1]))
    if score[z] < END_SCORE_HU or (z == lo_i and lo_i > lo):
        return None  # no clear disc, or its best point is where the scan cuts the window
    return {"z": z, "score_hu": round(float(score[z]), 1)}


def column_box(shape, spacing, centre: np.ndarray) -> tuple[slice, slice, slice]:
    """The part of the volume that can hold the column's bone (``BOX_*`` round the centreline)."""
    sy, sx = float(spacing[1]), float(spacing[2])
    y0 = int(max(np.floor(centre[:, 0].min() - BOX_FRONT_MM / sy), 0))
    y1 = int(min(np.ceil(centre[:, 0].max() + BOX_BACK_MM / sy) + 1, shape[1]))
    x0 = int(max(np.floor(centre[:, 1].min() - BOX_LATERAL_MM / sx), 0))
    x1 = int(min(np.ceil(centre[:, 1].max() + BOX_LATERAL_MM / sx) + 1, shape[2]))
    return slice(0, shape[0]), slice(y0, y1), slice(x0, x1)


def column_bone(hu: np.ndarray, spacing, centre: np.ndarray, radius_mm: float = BODY_RADIUS_MM,
                min_piece_mm2: float = 0.0, disc_slices: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Bone of the column and the part of it that is vertebral body (two bool arrays shaped like ``hu``).

    Bone is dense voxels (``BONE_HU`` after a light smoothing). The body, per slice, is the
    convex hull of the bone within ``radius_mm`` of the body's centre and in front of
    its posterior wall (``posterior_walls``): real marrow can be as dark as soft tissue (a
    median of 60 HU is normal at L3), so it is the cortex that outlines a body, and the
    wall keeps the hull out of the spinal canal behind it. ``radius_mm`` is how far from the
    centre the outline may lie; on a noisy scan, pieces of bone under ``min_piece_mm2`` in a
    slice (noise over ``BONE_HU`` in a disc) are left out of the hull, so a disc is no body.
    In ``disc_slices`` (bool per slice: between a disc's two endplates) no hull is taken at
    all (the ring of a disc's rim would outline the disc as a body), and a slice or more
    from the endplates the rim itself is no bone of the column.
    """
    from skimage.morphology import convex_hull_image

    sy, sx = float(spacing[1]), float(spacing[2])
    dense = ndimage.gaussian_filter(hu.astype(np.float32), (0.5, 0.7, 0.7)) >= BONE_HU
    back = posterior_walls(hu, spacing, centre)
    yy, xx = np.indices(hu.shape[1:], dtype=np.float32)
    body = np.zeros(hu.shape, bool)
    pieces_of = min_piece_mm2 / (sy * sx)
    for z in range(hu.shape[0]):
        cy, cx = centre[z]
        zone = (((yy - cy) * sy) ** 2 + ((xx - cx) * sx) ** 2 <= radius_mm ** 2) & (yy <= back[z] + 0.5)
        if disc_slices is not None and disc_slices[z]:
            if pieces_of > 0:
                dense[z] = _without_small_pieces(dense[z], pieces_of)
            if disc_slices[max(z - 1, 0)] and disc_slices[min(z + 1, len(disc_slices) - 1)]:
                dense[z] &= ~zone  # the disc's rim, a slice or more from the endplates: not the body
            continue
        seen = dense[z] & zone
        if pieces_of > 0:
            seen = _without_small_pieces(seen, pieces_of)
        if seen.sum() * sy * sx >= MIN_BODY_SLICE_MM2:
            body[z] = convex_hull_image(seen) & zone
    return dense | body, body


def _without_small_pieces(mask: np.ndarray, min_voxels: float) -> np.ndarray:
    """A 2-D mask without its connected pieces of fewer than ``min_voxels`` voxels."""
    pieces, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(pieces.ravel())
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[pieces]


def posterior_walls(hu: np.ndarray, spacing, centre: np.ndarray) -> np.ndarray:
    """Per slice, the y index of the body's posterior wall on the midline, smoothed along the column.

    Walking backwards from the body's centre, the wall is the last bone (``BONE_HU``) before
    ``CANAL_GAP_MM`` of what fills the spinal canal (CSF, cord, epidural fat: under
    ``CANAL_HU``). Slices where none is found (a disc) take their neighbours' value;
    without any, the wall is ``BODY_RADIUS_MM`` behind the centre.
    """
    sy = float(spacing[1])
    smooth = ndimage.gaussian_filter1d(hu.astype(np.float32), 1.0 / sy, axis=1)
    gap = max(int(round(CANAL_GAP_MM / sy)), 1)
    back = np.full(hu.shape[0], np.nan)
    for z in range(hu.shape[0]):
        y, x = (int(round(c)) for c in centre[z])
        if not (0 <= x < hu.shape[2] and 0 <= y < hu.shape[1]):
            continue
        band = smooth[z, :, max(x - 2, 0):x + 3].mean(axis=1)
        last, run = None, 0
        for yy in range(y, min(y + int(BODY_RADIUS_MM / sy) + gap, hu.shape[1])):
            if band[yy] >= BONE_HU:
                last, run = yy, 0
            elif band[yy] < CANAL_HU:
                run += 1
                if run >= gap:
                    break
        if last is not None and run >= gap:
            back[z] = last
    valid = np.flatnonzero(~np.isnan(back))
    if len(valid) == 0:
        return centre[:, 0] + BODY_RADIUS_MM / sy
    steps = max(int(round(10.0 / float(spacing[0]))) | 1, 3)
    values = ndimage.median_filter(back[valid], size=min(steps, len(valid)), mode="nearest")
    return np.interp(np.arange(hu.shape[0]), valid, values)


def split_column(bone: np.ndarray, body: np.ndarray, spacing, centre: np.ndarray, discs: list[float]) -> np.ndarray:
    """Instance map (int32) of the bone between consecutive disc planes: 1 above the first disc, 2 below it, ...

    The bodies are split by the disc planes (square to the centreline). The rest of the
    bone (pedicles, laminae, processes) floods from the bodies through bone (a watershed on
    a flat image: each voxel goes to the marker with the shortest path through bone to
    it), competing with the ribs (bone beyond ``RIB_MARKER_MM`` laterally): a spinous
    process goes to its own vertebra through its pedicles, a rib to the ribs. Rib voxels
    come back as 0, and so does bone that the flood carried more than one slab below its
    body (a chain of touching processes): a thoracic spinous process reaches down over the
    next vertebra, never over two. Bone it carried above its body's slab crossed a facet
    joint from below (the articular processes of two vertebrae touch at ``BONE_HU``): it
    goes to the vertebra of its slab, whose lower arch it is (on the real L2-L4 crop, L3's
    laminae and spinous process, and L2's inferior articular processes).
    """
    from skimage.segmentation import watershed

    sz, sy, sx = (float(s) for s in spacing)
    z, y, x = np.indices(bone.shape, dtype=np.float32)
    dx = (x - centre[:, 1].astype(np.float32)[:, None, None]) * sx
    tangent = tangents(centre, spacing)
    part = np.ones(bone.shape, np.int32)
    for d in discs:
        k = int(round(d))
        t = tangent[k]
        signed = (z - d) * sz * t[0] + (y - centre[k, 0]) * sy * t[1] + (x - centre[k, 1]) * sx * t[2]
        part += (signed < 0).astype(np.int32)
    rib_id = len(discs) + 2
    markers = np.where(body, part, 0).astype(np.int32)
    markers[bone & ~body & (np.abs(dx) >= RIB_MARKER_MM)] = rib_id
    labels = watershed(np.zeros(bone.shape, np.uint8), markers, mask=bone)
    labels[labels == rib_id] = 0
    below = np.ones(bone.shape[0], np.int32)  # the slab of each slice, by the discs' heights alone
    for d in discs:
        below += (np.arange(bone.shape[0]) < d).astype(np.int32)
    reach = below[:, None, None] - labels
    up = (labels > 0) & ~body & (reach < 0)  # above its body's slab: the flood crossed a facet joint from below
    labels[(labels > 0) & ~body & (reach > 1)] = 0  # more than one slab below its body
    labels[up] = np.broadcast_to(below[:, None, None], labels.shape)[up]
    return labels.astype(np.int32)


def rebuild_column(hu: np.ndarray, spacing, axis: np.ndarray, rib_z: list[float], rib_names: list[str],
                   label_map: dict[int, str]) -> Column | None:
    """The column's vertebrae from the CT, named by the rib count; None where the evidence is too thin.

    ``axis`` is the network's column axis (per slice (y, x)), ``rib_z`` the rib levels'
    slice indices head to feet and ``rib_names`` their anatomical names (``T1`` ... ``T12``).
    The labels use the bundle's ids (``label_map``); levels outside T1-L5 (C7 above T1) and
    parts under ``MIN_VERTEBRA_ML`` are left out.
    """
    if len(rib_z) < 2 or len(rib_names) != len(rib_z):
        return None
    centre = body_centreline(hu, spacing, axis)
    discs, notes = disc_positions(core_profile(hu, spacing, centre), rib_z, float(spacing[0]))
    labels, cores, kept, dropped = label_parts(hu, spacing, centre, discs,
                                               _part_names(rib_names, below=len(notes["below_last"])), label_map)
    record = {"method": "rebuilt from the CT: bodies along their centreline, the disc above each rib's vertebra "
                        "found by its endplates just above the rib level (a rib's head articulates at the top of "
                        "its own vertebra), square to the column, the bone split between the bodies, names by "
                        "the rib count",
              "levels": kept, "left_out": dropped,
              "discs_z_mm": [round(d * float(spacing[0]), 1) for d in discs], "discs": notes}
    record["lesions_judged_on"] = (f"the body's core only: {CORE_MARGIN_MM:.0f} mm or more from the disc planes "
                                   f"and within {CORE_RADIUS_LESION_MM:.0f} mm of the centreline, "
                                   "which are placed to a few mm, so that a neighbour's endplate or the disc is "
                                   "never read as a focus")
    return Column(labels, cores, record)


def label_parts(hu: np.ndarray, spacing, centre: np.ndarray, discs: list[float], names: list[str],
                label_map: dict[int, str], **outline) -> tuple[np.ndarray, np.ndarray, list[str], list[dict]]:
    """The column's bone split by the disc planes (head to feet), each part labelled with its name's id.

    ``outline`` goes to ``column_bone`` (``radius_mm``, ``min_piece_mm2``, ``disc_slices``).
    Returns the labels and the bodies' cores (both uint8, the bundle's ids), the levels kept
    and those left out (not a reported level, or under ``MIN_VERTEBRA_ML``), with their volume.
    """
    box = column_box(hu.shape, spacing, centre)
    local = centre - [box[1].start, box[2].start]
    bone, body = column_bone(hu[box], spacing, local, **outline)
    parts = split_column(bone, body, spacing, local, discs)
    core_parts = np.where(_body_core(body, spacing, local, discs), parts, 0)
    id_of = {level: label for label, level in label_map.items()}
    labels = np.zeros(hu.shape, np.uint8)
    cores = np.zeros(hu.shape, np.uint8)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    kept, dropped = [], []
    counts = np.bincount(parts.ravel(), minlength=len(names) + 1)
    for part, name in enumerate(names, start=1):
        if name not in id_of or counts[part] * voxel_ml < MIN_VERTEBRA_ML:
            dropped.append({"level": name, "volume_ml": round(counts[part] * voxel_ml, 1)})
            continue
        labels[box][parts == part] = id_of[name]
        cores[box][core_parts == part] = id_of[name]
        kept.append(name)
    return labels, cores, kept, dropped


def _body_core(body: np.ndarray, spacing, centre: np.ndarray, discs: list[float]) -> np.ndarray:
    """The bodies' cores: body voxels ``CORE_MARGIN_MM`` from the disc planes and within ``CORE_RADIUS_LESION_MM`` of the centreline."""
    sy, sx = float(spacing[1]), float(spacing[2])
    yy, xx = np.indices(body.shape[1:], dtype=np.float32)
    near = np.stack([((yy - c[0]) * sy) ** 2 + ((xx - c[1]) * sx) ** 2 <= CORE_RADIUS_LESION_MM ** 2 for c in centre])
    return body & near & (_plane_distance(body.shape, spacing, centre, discs) >= CORE_MARGIN_MM)


def _plane_distance(shape, spacing, centre: np.ndarray, discs: list[float]) -> np.ndarray:
    """Per voxel, the distance (mm) to the nearest disc plane (inf without discs)."""
    sz, sy, sx = (float(s) for s in spacing)
    z, y, x = np.indices(shape, dtype=np.float32)
    tangent = tangents(centre, spacing)
    nearest = np.full(shape, np.inf, np.float32)
    for d in discs:
        k = int(round(d))
        t = tangent[k]
        signed = (z - d) * sz * t[0] + (y - centre[k, 0]) * sy * t[1] + (x - centre[k, 1]) * sx * t[2]
        np.minimum(nearest, np.abs(signed), out=nearest)
    return nearest


def _part_names(rib_names: list[str], below: int) -> list[str]:
    """The level of each part head to feet: above the first rib's disc, the level above it (C7 above T1);
    one vertebra per rib level, under its disc; then ``below`` more levels, one under each disc found below."""
    names = [_neighbour(rib_names[0], -1), *rib_names]
    for _ in range(below):
        names.append(_neighbour(names[-1], +1))
    return names


def _neighbour(level: str, step: int) -> str:
    """The level ``step`` away from ``level`` along T1-L5; C7 above T1 (never reported)."""
    if level in LEVELS:
        i = LEVELS.index(level) + step
        return LEVELS[i] if 0 <= i < len(LEVELS) else ("C7" if i < 0 else "S1")
    return f"beyond {level}"
