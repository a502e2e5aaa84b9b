"""Anatomical cross-checks of a vertebra naming, made on the CT itself, without the network.

The network names vertebrae from what it learnt; the anatomy gives three facts that a
reader uses to count vertebrae and that can be measured classically on the CT:

* **the ribs**: the thoracic vertebrae T1-T12 bear ribs, the lumbar ones do not, so the
  last rib-bearing vertebra is T12 (and the first is T1). A rib is found as bone
  (>= ``BONE_HU``) that passes beside the spine, through the *paravertebral shell* where
  the rib's neck meets the transverse process (the costotransverse joint, ``SHELL_*``),
  and belongs to a piece of bone that runs on laterally to at least ``RIB_REACH_MM`` from
  the spine's axis; a transverse process alone ends well before that. Each such passage
  is a *rib level*; left and right are paired by height.
* **the sacrum**: L5 stands on it. Right below the lowest named vertebra, bone on the
  spine's axis that belongs to a piece reaching far laterally (the sacral alae and the
  iliac bones behind them) is the sacrum.
* **the count**: 12 rib levels are expected between a rib-free vertebra above the first
  rib and one below the last; a different count is reported, never corrected.

``check_naming`` compares these with the network's names and returns a ``NamingCheck``:
the evidence, a verdict (``consistent``, ``shifted`` by k levels with the suggested
offset, or ``cannot_be_settled``) and whether the shift is unambiguous enough to be
applied (``apply``). ``column_check`` says whether the named vertebrae form one
contiguous column (heights and spacings against the expected vertebral pitch).

All arrays are (z, y, x) in the LPS order the model uses: axis 0 grows towards the head,
axis 1 towards the back, axis 2 towards the patient's left; ``spacing`` is (sz, sy, sx) mm.
Rules and thresholds are adult anatomy, rounded; they are evidence for a person and for
a cautious relabelling, not a diagnosis.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

from pipelines.levels import LEVELS
from pipelines.model import ct_column
from pipelines.model.column import Column, rebuild_column
from pipelines.model.postprocess import disc_cuts

BONE_HU = 200.0          # rib cortex on a 1-3 mm CT; cartilage and muscle stay below
AXIS_HALF_WIDTH_MM = 40.0  # vertebra voxels farther than this from the column's median are not its axis
BODY_BEHIND_AXIS_MM = 5.0  # the axis (the vertebra voxels' median) runs at the back of the body: the body is in front
SHELL_INNER_MM = 22.0    # the shell starts lateral to the vertebral body ...
SHELL_OUTER_MM = 38.0    # ... and ends at the tip of a thoracic transverse process
SHELL_FRONT_MM = -30.0   # from the axis (the named vertebra's median, near the canal) forwards ...
SHELL_BACK_MM = 40.0     # ... and backwards: rib heads and necks, not the scapula's body
RIB_REACH_MM = 60.0      # a rib goes on laterally beyond this; a transverse process does not
MIN_NECK_MM3 = 150.0     # smaller passages through the shell are noise or a vessel's calcification
SAME_LEVEL_MM = 12.0     # two rib levels closer than this are one (the pitch is 17 mm or more at T1-T3)
PAIR_MM = 10.0           # a left and a right rib level this close in height are one pair
CROP_LATERAL_MM = 85.0   # the rib test looks this far to either side of the axis ...
CROP_AP_MM = 60.0        # ... and this far in front of and behind it
SACRUM_REACH_MM = 70.0   # the sacral alae and the iliac bones behind them
SACRUM_GAP_MM = 12.0     # the sacrum starts within a disc's height below L5
SACRUM_DEPTH_MM = 60.0   # how far below the lowest vertebra the sacrum test looks
SI_JOINT_MM = 8.0        # a sacroiliac joint space is a few millimetres
ILIUM_REACH_MM = 80.0    # an iliac bone lies far lateral ...
ILIUM_MIN_ML = 15.0      # ... and is large (a rib out there is a few ml)
NEXT_LEVEL_MM = (10.0, 45.0)  # where the next vertebra's transverse process lies beyond a rib level
MIN_PROCESS_MM = 10.0    # rib-free bone there over this height is a transverse process: a rib-free vertebra
MIN_PROCESS_SLICE_MM3 = 20.0  # (per slice; less is noise)
EXPECTED_THORACIC = 12

# Expected craniocaudal pitch (vertebral body + disc, mm) of an adult, rounded from published means.
PITCH_MM: dict[str, float] = {
    "T1": 19, "T2": 20, "T3": 20, "T4": 20, "T5": 21, "T6": 22, "T7": 22, "T8": 23, "T9": 24,
    "T10": 25, "T11": 26, "T12": 28, "L1": 31, "L2": 33, "L3": 34, "L4": 34, "L5": 33,
}
TOO_FAR = 1.5    # centroid spacing over this many expected pitches: a vertebra is missing between
TOO_CLOSE = 0.6  # under this: two pieces of one vertebra, or an overlap
TOO_TALL = 1.5   # a vertebra taller than this many pitches is probably several run together

REBUILT_NO_HEIGHTS = ("the column was rebuilt from the CT (the network ran vertebrae together): its disc planes are "
                      "estimated to a few millimetres, not the endplates, so no body height or collapse grade is "
                      "measured on it")
CT_ONLY_NO_HEIGHTS = ("the vertebrae were found on the CT alone (the network found none in this short field): their "
                      "disc planes are estimated to a few millimetres, not the endplates, so no body height or "
                      "collapse grade is measured on them")
RULE = ("ribs: T1-T12 bear ribs and T12 is the last rib-bearing vertebra (12 thoracic vertebrae expected "
        "unless the scan shows otherwise); sacrum: L5 stands on it")


@dataclass
class NamedVertebra:
    """One vertebra as the network named it, measured on its core (voxels near the column's axis)."""

    level: str
    voxels: int
    centroid_mm: tuple[float, float, float]   # (z, y, x) in mm from voxel (0, 0, 0)
    z_range: tuple[int, int]                   # lowest and highest slice index of its core
    height_mm: float
    cut: bool = False                          # it reaches the first or the last slice: the scan cuts it


@dataclass
class RibLevel:
    """One height at which ribs leave the spine: the slice index of the neck's centre, and the sides."""

    z: float
    sides: list[str]
    reach_mm: float

    def z_mm(self, spacing) -> float:
        return self.z * float(spacing[0])


@dataclass
class NamingCheck:
    """The anatomical evidence on a naming and the verdict (see the module docstring)."""

    rule: str
    verdict: str                 # consistent | shifted | cannot_be_settled
    reason: str
    offset: int | None = None    # levels to add to every network name (e.g. +4: its T8 is T12)
    apply: bool = False          # the evidence is unambiguous enough to rename
    evidence: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """The check as summary.json records it."""
        return asdict(self)


# --- the column's geometry --------------------------------------------------------------------------

def named_vertebrae(labels: np.ndarray, spacing, label_map: dict[int, str]) -> list[NamedVertebra]:
    """The named vertebrae (T1-L5), head to feet, each measured on its voxels near the column's axis.

    A network's label can spill onto a rib or the scapula; only voxels within
    ``AXIS_HALF_WIDTH_MM`` of the column's axis count for the centroid, and of those only
    the ones in front of the axis (``BODY_BEHIND_AXIS_MM``: the body, not the arch) for the
    height and the slice range: a thoracic spinous process reaches down over the next
    vertebra, so the arch would make every vertebra look two levels tall.
    """
    axis = column_axis(labels > 0, spacing)
    out = []
    for label, level in label_map.items():
        if level not in LEVELS:
            continue
        points = np.argwhere(labels == label)
        if len(points) == 0:
            continue
        core = points[_near_axis(points, axis, spacing)]
        core = core if len(core) else points
        body = core[(core[:, 1] - axis[core[:, 0], 0]) * float(spacing[1]) <= BODY_BEHIND_AXIS_MM]
        body = body if len(body) else core
        z_lo, z_hi = int(body[:, 0].min()), int(body[:, 0].max())
        centroid = tuple(round(float(c) * float(s), 1) for c, s in zip(core.mean(0), spacing))
        cut = int(points[:, 0].min()) == 0 or int(points[:, 0].max()) == labels.shape[0] - 1
        out.append(NamedVertebra(level, int(len(points)), centroid, (z_lo, z_hi),
                                 round((z_hi - z_lo + 1) * float(spacing[0]), 1), cut))
    return sorted(out, key=lambda v: LEVELS.index(v.level))


def column_axis(vertebra: np.ndarray, spacing) -> np.ndarray:
    """Per slice, the (y, x) index of the spine's axis: the median of the vertebra voxels near the column.

    Slices without vertebra voxels take the nearest slice's value; NaN when there is no vertebra at all.
    """
    nz = vertebra.shape[0]
    axis = np.full((nz, 2), np.nan)
    points = np.argwhere(vertebra)
    if len(points) == 0:
        return axis
    centre = np.median(points[:, 1:], 0)
    near = np.all(np.abs(points[:, 1:] - centre) * np.asarray(spacing[1:]) < 2 * AXIS_HALF_WIDTH_MM, axis=1)
    points = points[near] if near.any() else points
    for z in np.unique(points[:, 0]):
        in_slice = points[points[:, 0] == z, 1:]
        median = np.median(in_slice, 0)
        close = np.all(np.abs(in_slice - median) * np.asarray(spacing[1:]) < AXIS_HALF_WIDTH_MM, axis=1)
        axis[z] = np.median(in_slice[close], 0) if close.any() else median
    known = np.flatnonzero(~np.isnan(axis[:, 0]))
    for a in range(2):
        smooth = ndimage.median_filter(axis[known, a], size=min(9, len(known)), mode="nearest")
        axis[:, a] = np.interp(np.arange(nz), known, smooth)
    return axis


def _near_axis(points: np.ndarray, axis: np.ndarray, spacing) -> np.ndarray:
    offset = (points[:, 1:] - axis[points[:, 0]]) * np.asarray(spacing[1:])
    return np.all(np.abs(offset) < AXIS_HALF_WIDTH_MM, axis=1)


def column_check(vertebrae: list[NamedVertebra], heights: bool = True) -> dict:
    """Whether the named vertebrae form one contiguous column, and every problem found, in words.

    Checks: no level missing between two named ones; the spacing of consecutive centroids
    against the expected pitch (``TOO_FAR``, ``TOO_CLOSE``), except next to a vertebra the
    scan cuts (the centre of what is left is not the vertebra's); each vertebra's height
    against its own pitch (``TOO_TALL``: several vertebrae run together).
    """
    problems: list[str] = []
    steps = []
    for upper, lower in zip(vertebrae[:-1], vertebrae[1:]):
        skipped = LEVELS.index(lower.level) - LEVELS.index(upper.level) - 1
        distance = abs(upper.centroid_mm[0] - lower.centroid_mm[0])
        expected = (PITCH_MM[upper.level] + PITCH_MM[lower.level]) / 2 * (skipped + 1)
        ratio = distance / expected
        steps.append({"from": upper.level, "to": lower.level, "distance_mm": round(distance, 1),
                      "expected_mm": round(expected, 1), "ratio": round(ratio, 2)})
        if skipped:
            problems.append(f"{skipped} level(s) missing between {upper.level} and {lower.level}")
        if upper.cut or lower.cut:
            steps[-1]["not_judged"] = "a vertebra cut by the scan: its centre is not its own"
        elif ratio > TOO_FAR:
            problems.append(f"{upper.level} to {lower.level}: {distance:.0f} mm between centres, "
                            f"{expected:.0f} mm expected: a vertebra is probably missing between them")
        elif ratio < TOO_CLOSE:
            problems.append(f"{upper.level} to {lower.level}: {distance:.0f} mm between centres, "
                            f"{expected:.0f} mm expected: they overlap or are parts of one vertebra")
    for v in vertebrae if heights else []:
        if v.height_mm > TOO_TALL * PITCH_MM[v.level]:
            problems.append(f"{v.level} is {v.height_mm:.0f} mm tall, about "
                            f"{v.height_mm / PITCH_MM[v.level]:.1f} vertebrae: several were probably run together")
    return {"contiguous": not problems, "problems": problems, "steps": steps}


# --- ribs -------------------------------------------------------------------------------------------

def rib_levels(hu: np.ndarray, spacing, axis: np.ndarray) -> tuple[list[RibLevel], np.ndarray]:
    """The heights at which ribs leave the spine (head to feet), and per slice the rib-free bone in the shell (mm3).

    The second is what tells a rib-free vertebra: a transverse process in the shell
    whose bone does not run on laterally (C7 above T1, L1 below T12).
    """
    hu, axis = _around_axis(hu, spacing, axis)
    scans = {side: _side_scan(hu, spacing, axis, side) for side in ("right", "left")}
    free = scans["right"][1] + scans["left"][1]
    levels = _pair(scans["right"][0], scans["left"][0], float(spacing[0]))
    return _merge_levels(levels, PAIR_MM / float(spacing[0])), free


def _around_axis(hu: np.ndarray, spacing, axis: np.ndarray, lateral_mm: float = CROP_LATERAL_MM,
                 ap_mm: float = CROP_AP_MM) -> tuple[np.ndarray, np.ndarray]:
    """The part of the CT a test needs (``lateral_mm``, ``ap_mm`` around the axis), and the axis in its indices.

    For the rib test, lateral reach is then measured up to the crop's edge, beyond ``RIB_REACH_MM``.
    """
    half_x = int(np.ceil(lateral_mm / float(spacing[2])))
    half_y = int(np.ceil(ap_mm / float(spacing[1])))
    y0 = max(int(np.floor(axis[:, 0].min())) - half_y, 0)
    y1 = min(int(np.ceil(axis[:, 0].max())) + half_y + 1, hu.shape[1])
    x0 = max(int(np.floor(axis[:, 1].min())) - half_x, 0)
    x1 = min(int(np.ceil(axis[:, 1].max())) + half_x + 1, hu.shape[2])
    return hu[:, y0:y1, x0:x1], axis - [y0, x0]


def _merge_levels(levels: list[RibLevel], within: float) -> list[RibLevel]:
    """Rib levels (head to feet) closer than ``within`` slices are one: a rib's neck and head seen twice."""
    out: list[RibLevel] = []
    for level in levels:
        if out and out[-1].z - level.z < within:
            last = out[-1]
            last.z = round((last.z + level.z) / 2, 1)
            last.sides = sorted(set(last.sides) | set(level.sides), reverse=True)
            last.reach_mm = max(last.reach_mm, level.reach_mm)
        else:
            out.append(level)
    return out


def _lateral_offsets(shape, spacing, axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Signed distance (mm) of every voxel from the axis along x (+ = left) and y (+ = back), broadcastable."""
    _, yy, xx = np.indices((1, shape[1], shape[2]), sparse=True)
    dx = (xx - axis[:, 1][:, None, None]) * float(spacing[2])
    dy = (yy - axis[:, 0][:, None, None]) * float(spacing[1])
    return dx, dy


def _side_scan(hu: np.ndarray, spacing, axis: np.ndarray, side: str) -> tuple[list[tuple[float, float]], np.ndarray]:
    """(slice index, lateral reach mm) of each rib neck on one side, and the rib-free shell bone per slice (mm3)."""
    dx, dy = _lateral_offsets(hu.shape, spacing, axis)
    lateral = dx if side == "left" else -dx
    bone = (hu >= BONE_HU) & (lateral >= SHELL_INNER_MM)
    pieces, count = ndimage.label(bone)
    voxel_mm3 = float(np.prod(spacing))
    in_shell = bone & (lateral < SHELL_OUTER_MM) & (dy >= SHELL_FRONT_MM) & (dy <= SHELL_BACK_MM)
    if count == 0:
        return [], np.zeros(hu.shape[0])
    reach = ndimage.maximum(np.broadcast_to(lateral, hu.shape), pieces, np.arange(1, count + 1))
    rib_piece = np.concatenate([[False], reach >= RIB_REACH_MM])
    shell = in_shell & rib_piece[pieces]
    free = (in_shell & ~shell).sum(axis=(1, 2)) * voxel_mm3
    necks, _ = ndimage.label(shell)
    pitch = max(int(round(12.0 / float(spacing[0]))), 1)
    found: list[tuple[float, float]] = []
    for index, box in enumerate(ndimage.find_objects(necks), start=1):
        if box is None:
            continue
        mask = necks[box] == index
        if mask.sum() * voxel_mm3 < MIN_NECK_MM3:
            continue
        parent_reach = float(reach[np.bincount(pieces[box][mask]).argmax() - 1])
        profile = mask.sum(axis=(1, 2))
        edges = [0, *disc_cuts(profile, pitch, ratio=0.5), len(profile)]
        for low, high in zip(edges[:-1], edges[1:]):
            part = profile[low:high]
            if part.sum() * voxel_mm3 >= MIN_NECK_MM3:
                z = box[0].start + low + float(np.average(np.arange(len(part)), weights=part))
                found.append((z, parent_reach))
    return _merge_close(sorted(found, reverse=True), SAME_LEVEL_MM / float(spacing[0])), free


def _merge_close(levels: list[tuple[float, float]], within: float) -> list[tuple[float, float]]:
    """Passages (head to feet) closer than ``within`` slices to a level's mean height join that level.

    Compared with the mean, not with the last passage, so that a run of passages at a
    few millimetres from each other does not chain several rib levels into one.
    """
    merged: list[list[tuple[float, float]]] = []
    for item in levels:
        if merged and np.mean([z for z, _ in merged[-1]]) - item[0] < within:
            merged[-1].append(item)
        else:
            merged.append([item])
    return [(float(np.mean([z for z, _ in group])), max(r for _, r in group)) for group in merged]


def _pair(right: list[tuple[float, float]], left: list[tuple[float, float]], sz: float) -> list[RibLevel]:
    """Left and right rib levels at about the same height are one level; the others stay one-sided."""
    levels = [RibLevel(z, ["right"], r) for z, r in right]
    for z, r in left:
        twin = min((lv for lv in levels if "left" not in lv.sides), key=lambda lv: abs(lv.z - z), default=None)
        if twin is not None and abs(twin.z - z) * sz <= PAIR_MM:
            twin.z = (twin.z + z) / 2
            twin.sides.append("left")
            twin.reach_mm = max(twin.reach_mm, r)
        else:
            levels.append(RibLevel(z, ["left"], r))
    for lv in levels:
        lv.z = round(lv.z, 1)
        lv.reach_mm = round(lv.reach_mm, 1)
    return sorted(levels, key=lambda lv: -lv.z)


def rib_free_process(free: np.ndarray, spacing, z_from: float, z_to: float) -> float:
    """Height (mm) of the longest run of slices between ``z_from`` and ``z_to`` with rib-free shell bone.

    A transverse process is 10-15 mm high: a run that short at the scan's edge may be
    the top of a vertebra whose rib lies just outside the scan, so ``MIN_PROCESS_MM`` is asked.
    """
    lo, hi = sorted((int(np.floor(z_from)), int(np.ceil(z_to))))
    lo, hi = max(lo, 0), min(hi, len(free) - 1)
    best = run = 0
    for value in free[lo:hi + 1] if hi >= lo else []:
        run = run + 1 if value >= MIN_PROCESS_SLICE_MM3 else 0
        best = max(best, run)
    return best * float(spacing[0])


# --- the sacrum -------------------------------------------------------------------------------------

def sacrum_below(hu: np.ndarray, spacing, labels: np.ndarray, axis: np.ndarray, lowest: NamedVertebra,
                 ribs: list[RibLevel] = ()) -> dict:
    """Whether the sacrum stands right below the lowest named vertebra, or why that cannot be told.

    The bone on the axis within ``SACRUM_GAP_MM`` below the vertebra is followed (the
    named vertebrae's own voxels left out). It is the sacrum when it articulates with the
    iliac bones: it reaches ``SACRUM_REACH_MM`` laterally itself with ``ILIUM_MIN_ML`` of
    bone out there (a rib is thinner), or it comes within ``SI_JOINT_MM`` of a large bone
    farther out (a sacroiliac joint). A rib level below the vertebra rules the sacrum out.
    """
    sz = float(spacing[0])
    bottom = lowest.z_range[0]
    gap = max(int(round(SACRUM_GAP_MM / sz)), 1)
    if bottom - gap < 0:
        return {"in_view": False, "found": False,
                "reason": f"the scan ends {bottom * sz:.0f} mm below {lowest.level}: the sacrum is not in view"}
    start = max(bottom - int(round(SACRUM_DEPTH_MM / sz)), 0)
    rib_below = [r for r in ribs if start <= r.z < bottom]
    if rib_below:
        return {"in_view": True, "found": False,
                "reason": f"a rib-bearing vertebra lies right below {lowest.level}: no sacrum there"}
    hu_slab, axis_slab = _around_axis(hu[start:bottom], spacing, axis[start:bottom], 150.0, 100.0)
    labels_slab, _ = _around_axis(labels[start:bottom], spacing, axis[start:bottom], 150.0, 100.0)
    slab = (hu_slab >= BONE_HU) & ~ndimage.binary_dilation(labels_slab > 0, iterations=2)
    dx, dy = _lateral_offsets(slab.shape, spacing, axis_slab)
    central = slab & (np.abs(dx) < 15.0) & (dy > -45.0) & (dy < 10.0)
    central[: max(slab.shape[0] - gap, 0)] = False  # only bone that starts right below the vertebra
    if not central.any():
        return {"in_view": True, "found": False,
                "reason": f"no bone on the spine's axis within {SACRUM_GAP_MM:.0f} mm below {lowest.level}"}
    pieces, count = ndimage.label(slab)
    ids = np.unique(pieces[central])
    piece = np.isin(pieces, ids[ids > 0])
    lateral = np.abs(np.broadcast_to(dx, slab.shape))
    reach = float(lateral[piece].max())
    wide = (piece & (lateral >= SACRUM_REACH_MM)).sum() * float(np.prod(spacing)) / 1000.0 >= ILIUM_MIN_ML
    joint = _joint_gap(piece, pieces, count, lateral, spacing)
    found = wide or (joint is not None and joint <= SI_JOINT_MM)
    if found:
        how = (f"reaches {reach:.0f} mm from the axis" if wide
               else f"meets the iliac bone ({joint:.0f} mm joint space)")
        what = f"the bone right below {lowest.level} {how}: the sacrum"
    else:
        what = (f"the bone right below {lowest.level} reaches {reach:.0f} mm from the axis and does not meet "
                f"an iliac bone: no sacrum shown right below it")
    return {"in_view": True, "found": bool(found), "reach_mm": round(reach, 1),
            "joint_gap_mm": None if joint is None else round(joint, 1), "reason": what}


def _joint_gap(piece: np.ndarray, pieces: np.ndarray, count: int, lateral: np.ndarray, spacing) -> float | None:
    """Smallest distance (mm) from ``piece`` to a large bone reaching ``ILIUM_REACH_MM`` laterally; None if none."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    sizes = np.bincount(pieces.ravel(), minlength=count + 1)
    far = ndimage.maximum(lateral, pieces, np.arange(1, count + 1)) if count else np.zeros(0)
    big = np.flatnonzero((sizes[1:] * voxel_ml >= ILIUM_MIN_ML) & (far >= ILIUM_REACH_MM)) + 1
    big = big[~np.isin(big, np.unique(pieces[piece]))]
    if len(big) == 0:
        return None
    distance = ndimage.distance_transform_edt(~piece, sampling=spacing)
    return float(distance[np.isin(pieces, big)].min())


# --- the verdict ------------------------------------------------------------------------------------

def check_naming(hu: np.ndarray, spacing, labels: np.ndarray, label_map: dict[int, str]) -> NamingCheck:
    """Cross-check the network's vertebra names with the ribs, the sacrum and the count on the CT.

    ``hu`` and ``labels`` are LPS (z, y, x) arrays of one grid with ``spacing`` (sz, sy, sx).
    """
    vertebrae = named_vertebrae(labels, spacing, label_map)
    if not vertebrae:
        return NamingCheck(RULE, "cannot_be_settled", "no vertebra was named: nothing to check")
    axis = column_axis(labels > 0, spacing)
    ribs, free = rib_levels(hu, spacing, axis)
    numbering = _rib_numbering(free, spacing, ribs)
    per_vertebra = _ribs_per_vertebra(vertebrae, ribs, numbering, spacing)
    sacrum = sacrum_below(hu, spacing, labels, axis, vertebrae[-1], ribs)
    evidence = {
        "named": [v.level for v in vertebrae],
        "rib_levels": [{"z_mm": round(r.z_mm(spacing), 1), "sides": r.sides, "reach_mm": r.reach_mm,
                        "anatomical_level": numbering["names"][i] if numbering["names"] else None}
                       for i, r in enumerate(ribs)],
        "rib_count": len(ribs),
        "rib_numbering": {k: v for k, v in numbering.items() if k != "names"},
        "rib_bearing": [p["level"] for p in per_vertebra if p["rib_levels"]],
        "vertebrae": per_vertebra,
        "sacrum": sacrum,
        "column": column_check(vertebrae),
    }
    return _verdict(vertebrae, per_vertebra, numbering, sacrum, evidence)


def _rib_numbering(free: np.ndarray, spacing, ribs: list[RibLevel]) -> dict:
    """Which thoracic level each rib level is, when the last (or the first) rib is shown to be one.

    The last rib level is T12 when the next vertebra down shows (a transverse process in
    the paravertebral shell, ``NEXT_LEVEL_MM`` below) and bears no rib; otherwise the
    first is T1 when the vertebra above it shows without a rib (C7).
    """
    if not ribs:
        return {"from": None, "names": [], "reason": "no rib found beside the spine"}
    sz = float(spacing[0])
    near, far = NEXT_LEVEL_MM[0] / sz, NEXT_LEVEL_MM[1] / sz
    below = rib_free_process(free, spacing, ribs[-1].z - near, ribs[-1].z - far)
    above = rib_free_process(free, spacing, ribs[0].z + near, ribs[0].z + far)
    n = len(ribs)
    seen = {"rib_free_process_below_mm": round(below, 1), "rib_free_process_above_mm": round(above, 1)}
    last, first = below >= MIN_PROCESS_MM, above >= MIN_PROCESS_MM
    if last and first:
        seen["both_ends"] = True
        seen["count_as_expected"] = n == EXPECTED_THORACIC
        if n != EXPECTED_THORACIC:
            seen["count_note"] = (f"{n} rib levels between rib-free vertebrae, {EXPECTED_THORACIC} expected: a rib level "
                                  f"was missed or merged, or this spine has {n} rib-bearing vertebrae")
    if last:
        names = [_thoracic(EXPECTED_THORACIC - (n - 1 - i)) for i in range(n)]
        return {"from": "last rib", "names": names, **seen,
                "reason": "the vertebra below the last rib level shows without a rib: that level is T12"
                          + (f"; {seen['count_note']}" if "count_note" in seen else "")}
    if first:
        names = [_thoracic(1 + i) for i in range(n)]
        return {"from": "first rib", "names": names, **seen,
                "reason": "the vertebra above the first rib level shows without a rib: that level is T1"}
    return {"from": None, "names": [], **seen,
            "reason": "the scan shows no rib-free vertebra next to the last or the first rib level, "
                      "so the rib levels cannot be numbered"}


def _thoracic(number: int) -> str:
    """T1..T12, and beyond: 'T0' above T1 (a cervical rib) or 'T13' (a 13th rib-bearing level)."""
    return f"T{number}"


def _ribs_per_vertebra(vertebrae: list[NamedVertebra], ribs: list[RibLevel], numbering: dict,
                       spacing) -> list[dict]:
    """For each named vertebra: the rib levels whose neck lies within its height, with their anatomical names."""
    rows = []
    for v in vertebrae:
        lo, hi = v.z_range
        inside = [i for i, r in enumerate(ribs) if lo - 0.5 <= r.z <= hi + 0.5]
        names = [numbering["names"][i] for i in inside] if numbering["names"] else []
        rows.append({"level": v.level, "rib_levels": len(inside),
                     "rib_z_mm": [round(ribs[i].z_mm(spacing), 1) for i in inside],
                     "anatomical_levels": names})
    return rows


def _verdict(vertebrae, per_vertebra, numbering, sacrum, evidence) -> NamingCheck:
    """Consistent, shifted by k, or cannot be settled, from the offsets each piece of evidence gives."""
    merged = [p for p in per_vertebra if p["rib_levels"] >= 2]
    offsets: list[tuple[str, int]] = []
    for p in per_vertebra:
        if p["rib_levels"] == 1 and p["anatomical_levels"]:
            anatomical = p["anatomical_levels"][0]
            if anatomical in LEVELS:
                offsets.append((f"{p['level']} bears the rib level that the rib count makes {anatomical}",
                                LEVELS.index(anatomical) - LEVELS.index(p["level"])))
    lumbar_with_rib = [p["level"] for p in per_vertebra if p["level"].startswith("L") and p["rib_levels"]]
    if sacrum.get("found"):
        lowest = vertebrae[-1].level
        offsets.append((f"{lowest} stands on the sacrum, so it is L5", LEVELS.index("L5") - LEVELS.index(lowest)))
    distinct = sorted({k for _, k in offsets})
    evidence["offsets"] = [{"evidence": why, "offset": k} for why, k in offsets]
    if merged:
        what = "; ".join(f"{p['level']} spans {p['rib_levels']} rib levels"
                         + (f" ({', '.join(p['anatomical_levels'])} by the rib count)" if p["anatomical_levels"] else "")
                         for p in merged)
        return NamingCheck(RULE, "cannot_be_settled",
                           f"{what}: the network ran several vertebrae together, so its names cannot be "
                           f"checked level by level", _single(distinct), False, evidence)
    if not offsets:
        reason = numbering["reason"] + "; " + sacrum["reason"]
        if lumbar_with_rib:
            reason = f"{', '.join(lumbar_with_rib)} named lumbar but bear(s) a rib; " + reason
        return NamingCheck(RULE, "cannot_be_settled", reason, None, False, evidence)
    if len(distinct) > 1:
        return NamingCheck(RULE, "cannot_be_settled",
                           "the anatomical evidence disagrees with itself: "
                           + "; ".join(f"{why} (offset {k:+d})" for why, k in offsets), None, False, evidence)
    k = distinct[0]
    reasons = "; ".join(why for why, _ in offsets)
    if k == 0:
        return NamingCheck(RULE, "consistent", reasons, 0, False, evidence)
    unambiguous = _unambiguous(offsets, numbering, sacrum, evidence["column"])
    names = ", ".join(f"{v.level}->{_shift(v.level, k)}" for v in vertebrae)
    return NamingCheck(RULE, "shifted", f"the network's names are off by {k:+d} level(s): {reasons} ({names})",
                       k, unambiguous, evidence)


def _unambiguous(offsets, numbering: dict, sacrum: dict, column: dict) -> bool:
    """Whether a shift may be applied: a contiguous column and two independent confirmations.

    One rule alone can be fooled (a missed 12th rib moves every name by one), so the rib
    count must be confirmed from both ends with the expected 12 levels, or the sacrum must
    agree with the ribs.
    """
    if not column["contiguous"]:
        return False
    ribs_agree = any("rib count" in why for why, _ in offsets)
    both_ends = bool(numbering.get("both_ends")) and bool(numbering.get("count_as_expected"))
    return (ribs_agree and both_ends) or (ribs_agree and bool(sacrum.get("found")))


def _single(values: list[int]) -> int | None:
    return values[0] if len(values) == 1 else None


def _shift(level: str, k: int) -> str:
    i = LEVELS.index(level) + k
    return LEVELS[i] if 0 <= i < len(LEVELS) else ("above T1" if i < 0 else "below L5")


def shifted_label_map(label_map: dict[int, str], offset: int) -> dict[int, int]:
    """Label id -> the label id its vertebra gets when every level moves by ``offset`` (0 = dropped).

    Levels the shift pushes outside T1-L5 are dropped; labels that are not vertebrae keep their id.
    """
    id_of = {level: label for label, level in label_map.items()}
    out = {}
    for label, level in label_map.items():
        if level not in LEVELS:
            out[label] = label
            continue
        i = LEVELS.index(level) + offset
        out[label] = id_of.get(LEVELS[i], 0) if 0 <= i < len(LEVELS) else 0
    return out


# --- is this a spine at all? ------------------------------------------------------------------------

MIN_TRUNK_WIDTH_MM = 180.0  # a trunk at T1-L5 is wider than this; a head, a neck or a limb is not
BODY_HU = -300.0            # soft tissue and bone: the patient, not the air or the table's foam
MAX_MIDLINE_OFFSET = 0.25   # a vertebra sits within this fraction of the trunk's width of its middle
MIN_POSTERIOR_DEPTH = 0.35  # ... and behind this fraction of the trunk's depth, from the front (the sternum and
                            # what lies before the aorta are in front of it; lordotic L4-L5 bodies lie at ~45 %)


def trunk_position(hu: np.ndarray, spacing, vertebra: NamedVertebra) -> dict:
    """Where a named vertebra sits in the cross-section of the body at its centre slice, in words and numbers.

    Width of the body (its largest piece above ``BODY_HU``) at the vertebra's centre
    slice, the vertebra's left-right offset from the body's middle as a fraction of the
    width, and its depth from the front as a fraction of the body's front-back extent.
    Where the field of view cuts the body (a targeted spine reconstruction), the cut
    direction is not judged.
    """
    z = int(round(vertebra.centroid_mm[0] / float(spacing[0])))
    z = min(max(z, 0), hu.shape[0] - 1)
    body, count = ndimage.label(hu[z] > BODY_HU)
    if count == 0:
        return {"level": vertebra.level, "inside_trunk": False, "reason": "no body in its slice"}
    largest = np.argmax(np.bincount(body.ravel())[1:]) + 1
    rows, cols = np.nonzero(body == largest)
    width = (cols.max() - cols.min() + 1) * float(spacing[2])
    depth = (rows.max() - rows.min() + 1) * float(spacing[1])
    y, x = vertebra.centroid_mm[1] / float(spacing[1]), vertebra.centroid_mm[2] / float(spacing[2])
    offset = abs(x - (cols.min() + cols.max()) / 2) * float(spacing[2]) / width
    posterior = (y - rows.min()) * float(spacing[1]) / depth
    # A targeted spine reconstruction (150-250 mm field) cuts the body: what the field cuts is not judged.
    cut_sides = cols.min() == 0 or cols.max() == body.shape[1] - 1
    cut_front_back = rows.min() == 0 or rows.max() == body.shape[0] - 1
    problems = []
    if width < MIN_TRUNK_WIDTH_MM and not cut_sides:
        problems.append(f"the body is {width:.0f} mm wide there, narrower than a trunk ({MIN_TRUNK_WIDTH_MM:.0f} mm)")
    if offset > MAX_MIDLINE_OFFSET and not cut_sides:
        problems.append(f"it lies {100 * offset:.0f} % of the body's width off the midline")
    if posterior < MIN_POSTERIOR_DEPTH and not cut_front_back:
        problems.append(f"it lies in the front of the body ({100 * posterior:.0f} % of its depth, "
                        f"{100 * MIN_POSTERIOR_DEPTH:.0f} % at least for a vertebra)")
    return {"level": vertebra.level, "inside_trunk": not problems, "body_width_mm": round(float(width), 1),
            "midline_offset": round(float(offset), 3), "depth_from_front": round(float(posterior), 3),
            "field_cuts_body": bool(cut_sides or cut_front_back),
            "reason": "; ".join(problems) or "behind the middle of a trunk, near its midline"}


@dataclass
class Review:
    """The outcome of ``review_vertebrae``: the labels to report (LPS), the naming record, and why nothing is reported."""

    labels: np.ndarray
    naming: dict
    no_vertebra: str | None = None
    lesion_labels: np.ndarray | None = None  # where lesions are judged, when not the whole vertebra (a rebuilt column)
    no_heights: str | None = None  # why no body height may be measured on these labels (a rebuilt column)


def review_vertebrae(hu: np.ndarray, spacing, labels: np.ndarray, label_map: dict[int, str]) -> Review:
    """Check the network's vertebrae against the CT: are they a spine, and does the anatomy agree with their names?

    * No vertebra at all, or none inside a trunk (a head, a knee, a phantom of something
      else): the labels are emptied and ``no_vertebra`` says why; no lesion is reported then.
    * Vertebrae outside the trunk's column while others are in it (a label on the scapula)
      are dropped, and the record lists them with the reason.
    * Then ``check_naming`` gives the verdict; a shift is applied to the labels only when
      it is unambiguous (``NamingCheck.apply``), and the record says whether it was.
    """
    vertebrae = named_vertebrae(labels, spacing, label_map)
    if not vertebrae:
        found = review_ct_only(hu, spacing, labels, label_map)
        if found is not None:
            return found
        reason = "the model found no vertebra (T1-L5) in this series"
        if ct_column.short_field(hu.shape, spacing):
            reason += ", nor does the CT show a spinal canal with a vertebral body in front of it and a disc"
        return Review(labels, {"rule": RULE, "verdict": "no_vertebra", "reason": reason, "evidence": {}}, reason)
    positions = [trunk_position(hu, spacing, v) for v in vertebrae]
    if not any(p["inside_trunk"] for p in positions):
        found = review_ct_only(hu, spacing, np.where(_is_vertebra(labels, label_map), 0, labels), label_map)
        if found is not None:
            found.naming["dropped"] += [{"level": p["level"], "reason": f"the network's, not a vertebra of the "
                                                                         f"spine: {p['reason']}"} for p in positions]
            return found
        narrow = all(p.get("body_width_mm", 0.0) < MIN_TRUNK_WIDTH_MM for p in positions)
        reason = ("no vertebra found: what the model took for vertebrae (" + ", ".join(v.level for v in vertebrae)
                  + (") does not lie in a trunk: " if narrow else ") lies off the spine: ")
                  + "; ".join(f"{p['level']}: {p['reason']}" for p in positions)
                  + (". Is this a spine CT?" if narrow else ""))
        empty = np.where(_is_vertebra(labels, label_map), 0, labels).astype(labels.dtype)
        return Review(empty, {"rule": RULE, "verdict": "no_vertebra", "reason": reason,
                              "evidence": {"positions": positions}}, reason)
    outside = [p for p in positions if not p["inside_trunk"]]
    if outside:
        id_of = {level: label for label, level in label_map.items()}
        labels = np.where(np.isin(labels, [id_of[p["level"]] for p in outside]), 0, labels).astype(labels.dtype)
    check = check_naming(hu, spacing, labels, label_map)
    rebuilt = _rebuild_if_run_together(hu, spacing, labels, label_map, check)
    if rebuilt is not None:
        labels = rebuilt.labels
        check = _rebuilt_check(check, rebuilt, named_vertebrae(labels, spacing, label_map),
                               [v.level for v in vertebrae])
    check.evidence["positions"] = positions
    record = {**check.as_dict(), "applied": False,
              "dropped": [{"level": p["level"], "reason": f"not a vertebra of the spine: {p['reason']}"}
                          for p in outside]}
    if check.verdict == "shifted" and check.apply and check.offset:
        lut = np.arange(max(256, int(labels.max()) + 1), dtype=labels.dtype)
        for old, new in shifted_label_map(label_map, check.offset).items():
            lut[old] = new
        labels = lut[labels]
        record["applied"] = True
        record["network_names"] = [v.level for v in vertebrae]
    if rebuilt is None:
        return Review(labels, record)
    return Review(labels, record, lesion_labels=rebuilt.cores, no_heights=REBUILT_NO_HEIGHTS)


def review_ct_only(hu: np.ndarray, spacing, labels: np.ndarray, label_map: dict[int, str]) -> Review | None:
    """The vertebrae of a short field found on the CT alone (``ct_column``), where the network found none in the
    column; None if the CT shows none either.

    Named by the rib numbering where the field numbers its ribs, else by ``ct_column.prior_names``:
    the verdict is then ``cannot_be_settled``, and the SR and the QC picture say so.
    Vertebrae that do not lie in a trunk's column (``trunk_position``) are left out, as the network's are.
    """
    if not ct_column.short_field(hu.shape, spacing):
        return None
    found = ct_column.locate(hu, spacing)
    if found is None:
        return None
    bone_ct, centre, seen, dense = found  # bone_ct: the CT with contrast-filled vessels read as soft tissue
    axis = np.tile(np.asarray(seen["canal_yx"], float), (hu.shape[0], 1))
    ribs, free = rib_levels(bone_ct, spacing, axis)
    numbering = _rib_numbering(free, spacing, ribs)
    column = ct_column.column_from_ct(bone_ct, spacing, label_map, centre, seen, dense, [r.z for r in ribs],
                                      numbering["names"] or None, numbering.get("from"))
    if column is None:
        return None
    vertebrae = named_vertebrae(column.labels, spacing, label_map)
    positions = [trunk_position(hu, spacing, v) for v in vertebrae]
    outside = [p["level"] for p in positions if not p["inside_trunk"]]
    if len(outside) == len(vertebrae):
        return None
    id_of = {level: label for label, level in label_map.items()}
    drop = np.isin(column.labels, [id_of[level] for level in outside])
    kept = [v for v in vertebrae if v.level not in outside]
    contiguous = column_check(kept, heights=False)
    settled = column.record["named_by"] == "the rib numbering" and contiguous["contiguous"]
    levels = f"{kept[0].level}-{kept[-1].level}" if len(kept) > 1 else kept[0].level
    ribs_seen = column.record.get("rib_numbering_set_aside", numbering["reason"])
    if column.record["ribs_leaving_field_z_mm"]:
        ribs_seen += ("; ribs run out of the field's edge from z " +
                      ", ".join(f"{z:.0f}" for z in column.record["ribs_leaving_field_z_mm"]) + " mm")
    reason = (f"the network found no vertebra in this short field ({hu.shape[0] * float(spacing[0]):.0f} mm); "
              f"{len(kept)} vertebrae ({levels}) were found on the CT alone, " +
              (f"named by the rib numbering ({numbering['reason']})" if settled else
               f"but nothing in the field names them ({ribs_seen}): the names are a prior "
               f"({column.record['named_by']}), not a finding"))
    evidence = {"ct_only": column.record, "named": [v.level for v in kept], "column": contiguous,
                "rib_levels": [{"z_mm": round(r.z_mm(spacing), 1), "sides": r.sides, "reach_mm": r.reach_mm}
                               for r in ribs],
                "rib_numbering": {k: v for k, v in numbering.items() if k != "names"}, "positions": positions}
    record = {"rule": RULE, "verdict": "consistent" if settled else "cannot_be_settled", "reason": reason,
              "offset": 0 if settled else None, "apply": False, "evidence": evidence, "applied": False,
              "dropped": [{"level": p["level"], "reason": f"not a vertebra of the spine: {p['reason']}"}
                          for p in positions if not p["inside_trunk"]]}
    out = np.where(drop, 0, column.labels).astype(labels.dtype)
    cores = np.where(drop, 0, column.cores).astype(labels.dtype)
    return Review(out, record, lesion_labels=cores, no_heights=CT_ONLY_NO_HEIGHTS)


def _rebuild_if_run_together(hu, spacing, labels, label_map, check: NamingCheck) -> Column | None:
    """The column rebuilt from the CT (``column.rebuild_column``) where the network ran vertebrae together.

    Only then, and only where the rib levels are numbered: a network whose vertebrae each
    bear at most one rib level keeps its own segmentation, checked as it is.
    """
    merged = any(p["rib_levels"] >= 2 for p in check.evidence.get("vertebrae", []))
    ribs = check.evidence.get("rib_levels", [])
    if not merged or not ribs or any(r["anatomical_level"] is None for r in ribs):
        return None
    axis = column_axis(labels > 0, spacing)
    rib_z = [r["z_mm"] / float(spacing[0]) for r in ribs]
    return rebuild_column(hu, spacing, axis, rib_z, [r["anatomical_level"] for r in ribs], label_map)


def _rebuilt_check(network: NamingCheck, rebuilt: Column, vertebrae: list[NamedVertebra],
                   network_names: list[str]) -> NamingCheck:
    """The naming record of a rebuilt column: named by the rib count, the network's verdict kept as evidence.

    Each rebuilt vertebra lies under the disc at its own rib level by construction, so the
    rib rule is what names it; the record says so, with the rib numbering's own reason (which end was
    shown rib-free, and whether 12 levels were counted) and the column's contiguity
    (levels without gaps, centres at the expected pitch; heights are not judged: a body
    tilted by the kyphosis spans more slices than its height).
    """
    evidence = dict(network.evidence)
    column = column_check(vertebrae, heights=False)
    evidence.update({"rebuilt": {**rebuilt.record, "network_names": network_names},
                     "network_verdict": {"verdict": network.verdict, "reason": network.reason},
                     "named": [v.level for v in vertebrae], "column": column})
    numbering = network.evidence.get("rib_numbering", {})
    reason = (f"the network ran vertebrae together ({network.reason.split(':')[0]}), so the column was rebuilt "
              f"from the CT: {len(vertebrae)} vertebrae ({vertebrae[0].level}-{vertebrae[-1].level}), one under "
              f"the disc at each rib level, named by the rib count ({numbering.get('reason', '')})") if vertebrae else \
        "the network ran vertebrae together and the column could not be rebuilt from the CT"
    verdict = "consistent" if vertebrae and column["contiguous"] else "cannot_be_settled"
    return NamingCheck(RULE, verdict, reason, 0 if verdict == "consistent" else None, False, evidence)


def _is_vertebra(labels: np.ndarray, label_map: dict[int, str]) -> np.ndarray:
    ids = [label for label, level in label_map.items() if level in LEVELS]
    return np.isin(labels, ids)


def naming_note(naming: dict) -> str | None:
    """One sentence for the SR and the QC picture when the naming is not plainly confirmed; None when it is."""
    verdict = naming.get("verdict")
    if verdict in (None, "consistent"):
        return None
    if verdict == "no_vertebra":
        return naming["reason"]
    if verdict == "shifted" and naming.get("applied"):
        return (f"Vertebra levels renamed by {naming['offset']:+d} from the network's names on anatomical evidence: "
                f"{naming['reason']}")
    if verdict == "shifted":
        return (f"Vertebra levels uncertain: the anatomy suggests the names are off by {naming['offset']:+d} level(s), "
                f"not applied (the evidence is not unambiguous): {naming['reason']}")
    return f"Vertebra levels could not be confirmed on anatomical evidence: {naming['reason']}"
