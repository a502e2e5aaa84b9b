"""v2 phantoms: real vertebra shapes, ribs with cortex, organs, bowel gas and scanner effects.

``make_phantom_v2(seed)`` is the v2 counterpart of ``research.phantoms.generator.make_phantom``
and returns the same ``Phantom`` record, so the v1 writers (NIfTI, nnU-Net, DICOM) take it.
Its ``labels`` hold the paper's T1-L5 (1-17) and the auxiliary training labels C7 (18),
sacrum S1-S3 (19) and ribs (20); ``reported_labels`` gives T1-L5 only, what evaluation
compares with. The same seed always gives the same case.

What it draws, on an LPS grid (axis 0 towards the head), in this order:

1. body outline (fat, muscle), a neck above C7, lungs with vessels, heart, liver, kidneys,
   aorta, sternum, scapulae, clavicles; in the abdomen fat and bowel loops with gas;
2. ribs T1-T12 as tubes from the costovertebral joint past the transverse process around
   the thorax, with cortex and marrow;
3. discs, then the vertebrae C5-L5 from real VerSe shapes (``templates.py``) with a cortex,
   heterogeneous trabecular bone and fatty-marrow islands; the v1 sacrum and iliac wings;
4. the scanner: in-plane blur, a slice profile of 1-3.5 mm (partial volume), correlated
   noise, streaks radiating from the spine, a global offset.

Every bone is drawn from its signed distance with sub-voxel partial volume, so the same
anatomy on a coarse and a fine grid looks the same apart from resolution.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from pipelines.levels import LEVELS
from research.phantoms.generator import Grid, Phantom, _Canvas, _ellipsoid, _local, _paint_disc, _paint_vertebra
from research.phantoms.v2.anatomy import (LABEL_C7, LABEL_RIB, LABEL_SACRUM, SPINE_LEVELS_V2, AnatomyV2, Bone,
                                          sample_anatomy_v2)
from research.phantoms.v2.templates import Template, load_templates

FOV_KINDS_V2 = ("thoracic", "neck-thoracic", "lumbar", "thoracolumbar", "short", "crop")
FOV_WEIGHTS = (0.3, 0.1, 0.2, 0.2, 0.1, 0.1)
_FOV_RANGE = {"thoracic": ("C7", "L1"), "neck-thoracic": ("C5", "T12"), "lumbar": ("T11", "S2"),
              "thoracolumbar": ("T3", "S2")}
RIB_LENGTH_DEG = {1: 100, 2: 130, 3: 150, 4: 160, 5: 165, 6: 165, 7: 165, 8: 155, 9: 145, 10: 135, 11: 100, 12: 70}
RIB_WIDTH = {1: 0.45, 2: 0.6, 3: 0.72, 4: 0.8, 5: 0.87, 6: 0.92, 7: 0.96, 8: 0.98, 9: 1.0, 10: 1.0, 11: 0.97, 12: 0.93}
N_REPORTED = len(LEVELS)

_templates_cache: list[Template] | None = None


def default_templates() -> list[Template]:
    """The VerSe templates (or the analytic fallback), loaded once per process."""
    global _templates_cache
    if _templates_cache is None:
        _templates_cache = load_templates()
    return _templates_cache


def label_of(level: str) -> int:
    """Training label of a drawn vertebra: 1-17 for T1-L5, 18 C7, 19 the sacrum, 0 for C5-C6."""
    if level in LEVELS:
        return LEVELS.index(level) + 1
    if level == "C7":
        return LABEL_C7
    if level.startswith("S"):
        return LABEL_SACRUM
    return 0


def reported_labels(labels: np.ndarray) -> np.ndarray:
    """T1-L5 only: the auxiliary labels (C7, sacrum, ribs) set to background."""
    return np.where(labels <= N_REPORTED, labels, 0).astype(np.uint8)


# --- bones ------------------------------------------------------------------------------------------


def _blend(hu: np.ndarray, sd: np.ndarray, voxel: float, cortex: float, cortical_hu: float, trabecular) -> None:
    """Paint bone with partial volume from its signed distance (mm): cortex shell, trabecular core."""
    occ = np.clip(0.5 + sd / voxel, 0.0, 1.0)
    inner = np.clip(0.5 + (sd - cortex) / voxel, 0.0, 1.0)
    hu *= 1.0 - occ
    hu += (occ - inner) * cortical_hu + inner * trabecular


def _warped(bone: Bone, u, v, w):
    """Template coordinates (w, v, u) of local coordinates after the bone's scale and warp."""
    coords = [u / bone.scale[0], v / bone.scale[1], w / bone.scale[2]]
    for k, phase, amp, comp in bone.warp:
        coords[comp] = coords[comp] + amp * np.sin(k[0] * u + k[1] * v + k[2] * w + phase)
    return coords


def _template_sd(bone: Bone, u, v, w) -> np.ndarray:
    """Signed distance (mm, scaled) of the bone's template at local coordinates."""
    t = bone.template
    cu, cv, cw = _warped(bone, u, v, w)
    idx = [cw - t.origin[0], cv - t.origin[1], cu - t.origin[2]]
    sd = ndimage.map_coordinates(t.sd, idx, order=1, mode="constant", cval=-20.0, prefilter=False)
    return sd * float(np.mean(bone.scale))


def _template_reach(bone: Bone) -> float:
    t = bone.template
    corners = np.array([[t.origin[k] + e * t.sd.shape[k] for k, e in enumerate(c)]
                        for c in np.ndindex(2, 2, 2)])  # (w, v, u)
    scale = np.array([bone.scale[2], bone.scale[1], bone.scale[0]])
    return float(np.linalg.norm(corners * scale, axis=1).max()) + 4.0


def paint_template_vertebra(cv: _Canvas, anat: AnatomyV2, level: str, label: int, texture: dict) -> dict:
    """Draw one vertebra from its template; labels where the signed distance is positive."""
    vert, bone = anat.vertebra(level), anat.bones[level]
    reach = _template_reach(bone)
    sl, x, y, z = cv.box(vert.centre - reach, vert.centre + reach)
    if any(s.stop <= s.start for s in sl):
        return {"voxels": 0, "lesion_voxels": 0}
    u, v, w = np.broadcast_arrays(*_local(vert, x, y, z))
    sd = _template_sd(bone, u, v, w)
    inside = sd > 0
    if not inside.any():
        return {"voxels": 0, "lesion_voxels": 0}
    voxel = float(np.mean(cv.grid.spacing))
    trab = bone.trabecular_median + bone.trabecular_sd * texture["grain"][sl] - bone.fat_drop * texture["fat"][sl]
    hu = cv.hu[sl]
    _blend(hu, sd, voxel, bone.cortex_mm, bone.cortical_hu, trab)
    lesion_voxels = 0
    for lesion in vert.lesions:
        focus = _ellipsoid(u, v, w, lesion.centre, lesion.radii) & (sd > bone.cortex_mm)
        hu[focus] = lesion.hu
        cv.lesions[sl][focus] = 1 if lesion.kind == "lytic" else 2
        lesion_voxels += int(focus.sum())
    if label:
        cv.labels[sl][inside] = label
    return {"voxels": int(inside.sum()), "lesion_voxels": lesion_voxels}


def _rib_path(anat: AnatomyV2, i: int, side: float) -> tuple[np.ndarray, np.ndarray]:
    """Centre line (N, 3) world mm and radius per point of rib ``i`` on ``side`` (+1 left, -1 right)."""
    vert, bone = anat.vertebra(f"T{i}"), anat.bones[f"T{i}"]
    a, b, h = vert.body
    axes = vert.axes
    s = np.array(bone.scale)
    tip = np.array(bone.template.tips[1 if side > 0 else 0]) * s
    head = vert.centre + axes.T @ np.array([side * 0.8 * a, 0.55 * b, 0.3 * h])
    tubercle = vert.centre + axes.T @ (tip + np.array([-side * 3.0, -3.0, -2.0]))
    base = anat.base
    (cx, cy), (rx, ry) = base.trunk_centre, base.trunk
    # the rib runs just outside the lung cavity (see paint_trunk), narrower for the upper ribs
    ex = (rx - base.fat - 25.0 + 6.0) * RIB_WIDTH[i]
    ey = (ry - base.fat - 20.0 + 6.0) * (0.6 + 0.4 * RIB_WIDTH[i])
    ecy = cy - 10.0 + (ry - base.fat - 14.0) - ey  # the ellipse keeps its back at the cavity's back
    dx = abs(tubercle[0] - cx) + 15.0
    theta0 = float(np.arcsin(min(dx / ex, 0.95)))
    length = np.radians(RIB_LENGTH_DEG[i] * anat.rib_length_scale)
    drop = 0.9 * (2 * h + vert.disc_below) * (1.3 if i > 6 else 1.0) * (0.4 if i == 1 else 1.0)
    n = max(int(length * max(ex, ey) / 0.7), 8)
    theta = theta0 + np.linspace(0, length, n)
    frac = (theta - theta0) / length
    shaft = np.stack([cx + side * ex * np.sin(theta), ecy + ey * np.cos(theta),
                      tubercle[2] - 3.0 - drop * frac ** 1.2], axis=1)
    neck = np.concatenate([np.linspace(head, tubercle, 12), np.linspace(tubercle, shaft[0], 12)[1:-1]])
    points = np.concatenate([neck, shaft])
    r = anat.rib_radius * (0.8 if i in (1, 12) else 1.0)
    radius = np.concatenate([np.full(len(neck), r * 1.1), r * (1.0 - 0.15 * frac)])
    return points, radius


def paint_ribs(cv: _Canvas, anat: AnatomyV2, texture: dict) -> None:
    """Ribs T1-T12 on both sides: tubes around their centre lines with cortex and marrow; label 20."""
    voxel = float(np.mean(cv.grid.spacing))
    for i in range(1, 13):
        bone = anat.bones[f"T{i}"]
        for side in (-1.0, 1.0):
            points, radius = _rib_path(anat, i, side)
            _paint_tube(cv, points, radius, voxel, bone, texture)


def _paint_tube(cv: _Canvas, points: np.ndarray, radius: np.ndarray, voxel: float, bone: Bone, texture: dict,
                label: int = LABEL_RIB) -> None:
    """Bone around a centre line: distance to the nearest centre-line point (an EDT in the tube's box)."""
    margin = float(radius.max()) + 2 * voxel
    sl, _, _, _ = cv.box(points.min(axis=0) - margin, points.max(axis=0) + margin)
    if any(s.stop <= s.start for s in sl):
        return
    shape = tuple(s.stop - s.start for s in sl)
    spacing = np.array(cv.grid.spacing)
    start = np.array([s.start for s in sl])
    zyx = points[:, ::-1]
    origin_zyx = np.array([cv.axes[d][0] for d in range(3)])
    # centre-line points every <= half a voxel so that the tube has no beads
    steps = np.linalg.norm(np.diff(zyx, axis=0) / spacing, axis=1)
    fine, fine_r = [zyx[:1]], [radius[:1]]
    for k, n in enumerate(np.ceil(steps * 2).astype(int)):
        t = np.linspace(0, 1, max(n, 1) + 1)[1:, None]
        fine.append(zyx[k] + t * (zyx[k + 1] - zyx[k]))
        fine_r.append(radius[k] + t[:, 0] * (radius[k + 1] - radius[k]))
    zyx, radius = np.concatenate(fine), np.concatenate(fine_r)
    idx = np.rint((zyx - origin_zyx) / spacing).astype(int) - start
    keep = np.all((idx >= 0) & (idx < shape), axis=1)
    if not keep.any():
        return
    seeds = np.zeros(shape, bool)
    r_at = np.zeros(shape, np.float32)
    seeds[tuple(idx[keep].T)] = True
    r_at[tuple(idx[keep].T)] = radius[keep]
    dist, nearest = ndimage.distance_transform_edt(~seeds, sampling=spacing, return_indices=True)
    sd = (r_at[tuple(nearest)] - dist).astype(np.float32)
    del nearest
    marrow = bone.trabecular_median + 0.7 * bone.trabecular_sd * texture["grain"][sl]
    hu = cv.hu[sl]
    _blend(hu, sd, voxel, 1.0, 0.8 * bone.cortical_hu, marrow)
    if label:
        labels = cv.labels[sl]
        labels[(sd > 0) & (labels == 0)] = label


# --- soft tissue ------------------------------------------------------------------------------------


def paint_trunk(cv: _Canvas, anat: AnatomyV2, rng: np.random.Generator) -> None:
    """Body outline, neck, lungs, heart, liver, kidneys, aorta, bowel and fat, in the case's tissue values."""
    base, tis = anat.base, anat.tissues
    g = cv.grid
    x = cv.axes[2].reshape(1, 1, -1)
    y = cv.axes[1].reshape(1, -1, 1)
    z = cv.axes[0].reshape(-1, 1, 1)
    (cx, cy), (rx, ry) = base.trunk_centre, base.trunk
    r_body = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
    r_inner = ((x - cx) / (rx - base.fat)) ** 2 + ((y - cy) / (ry - base.fat)) ** 2
    cv.hu[np.broadcast_to(r_body <= 1.0, g.shape)] = tis.fat
    cv.hu[np.broadcast_to(r_inner <= 1.0, g.shape)] = tis.muscle
    _neck(cv, anat, x, y, z)
    t1, t8 = anat.vertebra("T1"), anat.vertebra("T8")
    apex = t1.centre[2] + 25.0
    cone = _rib_cage_width(anat, z)  # the upper thorax is narrower, like the ribs around it
    cav_rx, cav_ry = (rx - base.fat - 25.0) * cone, (ry - base.fat - 20.0) * (0.6 + 0.4 * cone)
    back = cy - 10 + (ry - base.fat - 20.0)
    r_cav = ((x - cx) / cav_rx) ** 2 + ((y - (back - cav_ry)) / cav_ry) ** 2
    spine_y = t8.centre[1]
    mediastinum = (np.abs(x - cx - 10) < 35 + 0.25 * np.clip(spine_y - y, 0, None)) & (y < spine_y - 10)
    spine_zone = (np.abs(x - t8.centre[0]) < 45) & (y > spine_y - 25)
    dome = base.diaphragm_z + 25.0 * np.clip(1 - ((x - cx) / cav_rx) ** 2 - ((y - cy) / cav_ry) ** 2, 0, 1)
    dome = dome + np.where(x < cx, 12.0, 0.0)
    apex_cap = apex - 0.004 * ((np.abs(x - cx) - 0.5 * cav_rx) ** 2)
    lungs = (r_cav <= 1.0) & ~mediastinum & ~spine_zone & (z > dome) & (z < apex_cap)
    cv.hu[lungs] = tis.lung
    heart = (((x - cx - 25) / 60) ** 2 + ((y - (cy - 20)) / 45) ** 2 + ((z - t8.centre[2]) / 55) ** 2) <= 1
    cv.hu[np.broadcast_to(heart, g.shape)] = tis.heart
    liver = (((x - cx + 55) / 85) ** 2 + ((y - cy + 5) / 75) ** 2 + ((z - base.diaphragm_z + 60) / 80) ** 2) <= 1
    cv.hu[np.broadcast_to(liver & (z < dome), g.shape)] = tis.liver
    l1 = anat.vertebra("L1")
    for side in (-1, 1):
        kidney = (((x - l1.centre[0] - side * 65) / 30) ** 2 + ((y - l1.centre[1] - 15) / 25) ** 2
                  + ((z - l1.centre[2] + 10) / 55) ** 2) <= 1
        cv.hu[np.broadcast_to(kidney, g.shape)] = tis.kidney
    _aorta(cv, anat)
    _abdomen(cv, anat, rng, x, y, z, dome)
    _lung_vessels(cv, anat, rng)
    _airway(cv, anat)
    if anat.extras.get("table"):
        _table(cv, anat, x, y)


def _airway(cv: _Canvas, anat: AnatomyV2) -> None:
    """Trachea (air, in front of the spine) from the neck down to T4-T5, then the two main bronchi."""
    t5 = anat.vertebra("T5")
    points, radius = [], anat.extras.get("trachea_radius", 9.0)
    for vert in anat.vertebrae[: anat.vertebrae.index(t5) + 1]:
        points.append(vert.centre + np.array([0.0, -vert.body[1] - radius - 8.0, 0.0]))
    carina = points[-1]
    for side in (-1.0, 1.0):
        for t in np.linspace(0, 1, 6)[1:]:
            points.append(carina + t * np.array([side * 40.0, 5.0, -30.0]))
    points = np.array(points)
    _air_tube(cv, points, radius)


def _air_tube(cv: _Canvas, points: np.ndarray, radius: float) -> None:
    """Air within ``radius`` of a polyline (sampled every mm)."""
    dense = [points[:1]]
    for a, b in zip(points[:-1], points[1:]):
        n = max(int(np.linalg.norm(b - a)), 1)
        dense.append(a + np.linspace(0, 1, n + 1)[1:, None] * (b - a))
    for p in np.concatenate(dense)[::2]:
        sl, x, y, z = cv.box(p - radius, p + radius)
        if any(s.stop <= s.start for s in sl):
            continue
        inside = ((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) <= radius ** 2
        cv.hu[sl][np.broadcast_to(inside, cv.hu[sl].shape)] = -1000.0


def _table(cv: _Canvas, anat: AnatomyV2, x, y) -> None:
    """The scanner table under the patient: a curved shell and a flat plate, as dense as bone in places."""
    table = anat.extras["table"]
    (cx, cy), (rx, ry) = anat.base.trunk_centre, anat.base.trunk
    y0 = cy + ry + table["gap"]
    curve = y0 - table["curve"] * (x - cx) ** 2
    shell = (y >= curve) & (y <= curve + table["thickness"]) & (np.abs(x - cx) < 230)
    plate = (np.abs(y - (y0 + table["drop"])) <= 0.5 * table["thickness"]) & (np.abs(x - cx) < 230)
    cv.hu[np.broadcast_to(shell, cv.grid.shape)] = table["hu"]
    cv.hu[np.broadcast_to(plate, cv.grid.shape)] = 0.6 * table["hu"]


def _rib_cage_width(anat: AnatomyV2, z: np.ndarray) -> np.ndarray:
    """RIB_WIDTH interpolated along z between the thoracic vertebrae (0.45 above T1, 1 below T12)."""
    zs = np.array([anat.vertebra(f"T{i}").centre[2] for i in range(12, 0, -1)])
    widths = np.array([RIB_WIDTH[i] for i in range(12, 0, -1)])
    return np.interp(z, zs, widths, left=1.0, right=RIB_WIDTH[1])


def _neck(cv: _Canvas, anat: AnatomyV2, x, y, z) -> None:
    """Above the top of T1 the body narrows to the neck (shoulders end at the thoracic inlet)."""
    c7, t1 = anat.vertebra("C7"), anat.vertebra("T1")
    top = t1.centre[2] + t1.body[2] + 8.0
    nx, ny = anat.neck
    ncy = c7.centre[1] + 15.0
    above = z > top
    if not above.any():
        return
    ramp = np.clip((z - top) / 30.0, 0, 1)  # shoulders fade over 3 cm
    width = anat.base.trunk[0] * (1 - ramp) + nx * ramp
    outside = (((x - c7.centre[0]) / width) ** 2 + ((y - ncy) / ny) ** 2) > 1.0
    cv.hu[np.broadcast_to(outside & above, cv.grid.shape)] = -1000.0


def _aorta(cv: _Canvas, anat: AnatomyV2) -> None:
    for vert in anat.vertebrae[3:-3]:
        half = vert.body[2] + vert.disc_below
        sl, xb, yb, zb = cv.box(vert.centre - [60, 60, half], vert.centre + [60, 60, half])
        if any(s.stop <= s.start for s in sl):
            continue
        ax = vert.centre[0] + vert.body[0] * 0.6
        ay = vert.centre[1] - vert.body[1] - 14.0
        tube = ((xb - ax) ** 2 + (yb - ay) ** 2) <= 12.0 ** 2
        cv.hu[sl][np.broadcast_to(tube, cv.hu[sl].shape)] = anat.tissues.blood


def _smooth_noise(rng: np.random.Generator, shape, sigma_vox) -> np.ndarray:
    """Gaussian-filtered white noise with unit SD (float32)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma_vox, mode="wrap")
    return field / max(float(field.std()), 1e-6)


def _abdomen(cv: _Canvas, anat: AnatomyV2, rng, x, y, z, dome) -> None:
    """Fat between the organs and bowel loops (wall, content, gas) below the diaphragm."""
    tis, base = anat.tissues, anat.base
    spacing = np.array(cv.grid.spacing)
    l1 = anat.vertebra("L1")
    (cx, cy), (rx, ry) = base.trunk_centre, base.trunk
    r_in = ((x - cx) / (rx - base.fat - 12)) ** 2 + ((y - cy) / (ry - base.fat - 12)) ** 2
    near_spine = ((x - l1.centre[0]) ** 2 + (y - l1.centre[1] - 20) ** 2) < 55.0 ** 2
    region = (r_in <= 1.0) & ~near_spine & (z < dome - 10) & (cv.hu == tis.muscle)
    if not region.any():
        return
    fat = _smooth_noise(rng, cv.grid.shape, 7.0 / spacing)
    loops = _smooth_noise(rng, cv.grid.shape, 5.0 / spacing)
    bowel = region & (y < l1.centre[1] - 20) & (loops > 0.6)
    gas = bowel & (_smooth_noise(rng, cv.grid.shape, 3.0 / spacing) > 0.9)
    cv.hu[region & (fat > 0.4)] = tis.fat
    cv.hu[bowel] = tis.bowel
    cv.hu[bowel & ~ndimage.binary_erosion(bowel)] = tis.muscle  # the wall
    cv.hu[gas] = tis.gas


def _lung_vessels(cv: _Canvas, anat: AnatomyV2, rng) -> None:
    lungs = cv.hu == anat.tissues.lung
    if not lungs.any():
        return
    field = _smooth_noise(rng, cv.grid.shape, 1.5 / np.array(cv.grid.spacing))
    cv.hu[lungs] += 25.0 * field[lungs]
    cv.hu[lungs & (field > 2.0)] = anat.tissues.blood * 0.5


def paint_chest_wall(cv: _Canvas, anat: AnatomyV2, texture: dict) -> None:
    """Sternum, scapulae and clavicles: unlabelled bone near the ribs that the network must leave alone."""
    base = anat.base
    (cx, cy), (rx, ry) = base.trunk_centre, base.trunk
    voxel = float(np.mean(cv.grid.spacing))
    bone = anat.bones["T6"]
    t1, t3, t9 = anat.vertebra("T1"), anat.vertebra("T3"), anat.vertebra("T9")
    front = cy - (ry - base.fat - 12.0)
    sternum = ([cx, front, 0.5 * (t3.centre[2] + t9.centre[2])], [13.0, 6.0, 0.5 * (t3.centre[2] - t9.centre[2])])
    t2, t7 = anat.vertebra("T2"), anat.vertebra("T7")
    plates = [(sternum, 0.0)]
    for side in (-1, 1):
        # a plate on the back of the ribs, turned to face backwards and outwards
        angle = -side * np.radians(30.0)
        x0 = cx + side * 0.5 * rx
        y0 = cy + (ry - base.fat) * np.sqrt(max(1 - 0.25, 0.0)) - 14.0
        plates.append((([x0, y0, 0.5 * (t2.centre[2] + t7.centre[2])],
                        [45.0, 4.0, 0.5 * (t2.centre[2] - t7.centre[2]) + 5]), angle))
    for (centre, radii), angle in plates:
        centre, radii = np.array(centre), np.array(radii)
        reach = radii.max() + 3
        sl, x, y, z = cv.box(centre - [reach, reach, radii[2] + 3], centre + [reach, reach, radii[2] + 3])
        if any(s.stop <= s.start for s in sl):
            continue
        c, s_ = np.cos(angle), np.sin(angle)
        dx, dy = x - centre[0], y - centre[1]
        u, v, w = np.broadcast_arrays(c * dx + s_ * dy, -s_ * dx + c * dy, z - centre[2])
        r = np.sqrt((u / radii[0]) ** 2 + (v / radii[1]) ** 2 + (w / radii[2]) ** 2)
        sd = (1.0 - r) * radii.min()
        marrow = bone.trabecular_median + bone.trabecular_sd * texture["grain"][sl]
        _blend(cv.hu[sl], sd.astype(np.float32), voxel, 1.2, 0.8 * bone.cortical_hu, marrow)
    for side in (-1.0, 1.0):
        start = np.array([cx + side * 18.0, front + 8.0, t1.centre[2] + 5.0])
        end = np.array([cx + side * 0.8 * (rx - base.fat), cy + 0.1 * ry, t1.centre[2] + 25.0])
        points = np.linspace(start, end, 40)
        _paint_tube(cv, points, np.full(40, 6.0), voxel, bone, texture, label=0)  # clavicles are not ribs


def _pelvis(cv: _Canvas, anat: AnatomyV2, texture: dict) -> None:
    """Iliac wings beside the sacrum (v1 shape) with textured marrow."""
    s1 = anat.vertebra("S1")
    bone = anat.bones["S1"]
    voxel = float(np.mean(cv.grid.spacing))
    for side in (-1, 1):
        centre = s1.centre + np.array([side * 70.0, 10.0, 15.0])
        radii = np.array([22.0, 60.0, 55.0])
        sl, x, y, z = cv.box(centre - radii - 4, centre + radii + 4)
        if any(s.stop <= s.start for s in sl):
            continue
        u, v, w = np.broadcast_arrays(x - centre[0], y - centre[1], z - centre[2])
        shell = 1.0 - np.sqrt((u / radii[0]) ** 2 + (v / radii[1]) ** 2 + (w / radii[2]) ** 2)
        plate = 6.0 - np.abs(u - side * 0.004 * v ** 2)
        sd = np.minimum(shell * 50.0, plate).astype(np.float32)
        marrow = bone.trabecular_median + bone.trabecular_sd * texture["grain"][sl]
        _blend(cv.hu[sl], sd, voxel, 1.5, bone.cortical_hu, marrow)


# --- scanner ----------------------------------------------------------------------------------------


def scanner(hu: np.ndarray, grid: Grid, anat: AnatomyV2, rng: np.random.Generator) -> np.ndarray:
    """Blur (PSF and slice profile), correlated noise, streaks and offset; int16 HU."""
    spacing = np.array(grid.spacing)
    thickness = float(rng.uniform(1.0, 3.5))
    psf = float(rng.uniform(0.4, 1.0))
    sigma = [max(thickness / 2.355, 0.3), psf, psf]
    hu = ndimage.gaussian_filter(hu, np.array(sigma) / spacing, mode="nearest")
    noise = _smooth_noise(rng, grid.shape, np.array([0.5, rng.uniform(0.5, 1.1), 0.0]) / spacing * 2.0)
    body = hu > -900
    hu += float(rng.uniform(5, 35)) * noise * body
    if rng.random() < 0.5:
        hu += _streaks(grid, anat, rng) * body
    hu += anat.base.hu_offset * body
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


def _streaks(grid: Grid, anat: AnatomyV2, rng) -> np.ndarray:
    """Bright and dark lines through the spine in the axial plane, stronger in some slices."""
    x = grid.axis(2).reshape(1, -1)
    y = grid.axis(1).reshape(-1, 1)
    centre = np.mean([v.centre for v in anat.vertebrae], axis=0)
    field = np.zeros((grid.shape[1], grid.shape[2]), np.float32)
    for _ in range(int(rng.integers(3, 9))):
        phi = rng.uniform(0, np.pi)
        d = np.abs(-(x - centre[0]) * np.sin(phi) + (y - centre[1]) * np.cos(phi))
        field += float(rng.choice([-1, 1]) * rng.uniform(20, 80)) * np.exp(-(d / rng.uniform(1.0, 3.0)) ** 2)
    r = np.hypot(x - centre[0], y - centre[1])
    field *= np.exp(-r / 150.0).astype(np.float32)
    weight = ndimage.gaussian_filter1d(rng.uniform(0, 1, grid.shape[0]).astype(np.float32) ** 3, 2.0)
    return weight[:, None, None] * field[None]


# --- the phantom ------------------------------------------------------------------------------------


def textures(grid: Grid, rng: np.random.Generator, fat_fraction: float) -> dict:
    """Trabecular grain (unit SD, ~0.7 mm) and fatty-marrow islands (0..1) over the whole grid."""
    spacing = np.array(grid.spacing)
    grain = _smooth_noise(rng, grid.shape, 0.7 / spacing)
    islands = _smooth_noise(rng, grid.shape, 2.0 / spacing)
    threshold = float(np.quantile(islands[::4, ::4, ::4], 1.0 - max(fat_fraction, 1e-3)))
    fat = np.clip((islands - threshold) / 0.5, 0.0, 1.0).astype(np.float32)
    return {"grain": grain, "fat": fat}


def render_v2(anat: AnatomyV2, grid: Grid, rng: np.random.Generator):
    """Draw a v2 anatomy: (hu int16, labels uint8 with auxiliary labels, lesions uint8, truth per level)."""
    cv = _Canvas(grid)
    texture = textures(grid, rng, anat.marrow_fat_fraction)
    paint_trunk(cv, anat, rng)
    paint_chest_wall(cv, anat, texture)
    paint_ribs(cv, anat, texture)
    _pelvis(cv, anat, texture)
    for upper, lower in zip(anat.vertebrae[:-1], anat.vertebrae[1:]):
        _paint_disc(cv, upper, lower)
    cv.hu[(cv.hu == 80.0)] = anat.tissues.disc  # _paint_disc uses the v1 disc value
    truth = {}
    for vert in anat.vertebrae:
        label = label_of(vert.level)
        if anat.bones[vert.level].template is None:
            counts = _paint_vertebra(cv, vert, label)
        else:
            counts = paint_template_vertebra(cv, anat, vert.level, label, texture)
        if vert.level in LEVELS and counts["voxels"]:
            truth[vert.level] = {"lesion": vert.lesion_class, **counts,
                                 "lesion_max_diameter_mm": max((2 * max(x.radii) for x in vert.lesions), default=0.0)}
    del texture
    hu = scanner(cv.hu, grid, anat, rng)
    return hu, cv.labels, cv.lesions, truth


def field_of_view_v2(anat: AnatomyV2, kind: str, rng: np.random.Generator) -> tuple[float, float]:
    """z range (bottom, top) mm of a scan of ``kind``; 'short' and 'crop' cover 30-90 mm of T1-L5."""
    if kind in ("short", "crop"):
        vert = anat.vertebra(LEVELS[int(rng.integers(len(LEVELS)))])
        centre = vert.centre[2] + rng.uniform(-1, 1) * vert.body[2]
        half = rng.uniform(15, 45)
        return float(centre - half), float(centre + half)
    first, last = _FOV_RANGE[kind]
    i0 = max(SPINE_LEVELS_V2.index(first) + int(rng.integers(-1, 2)), 0)
    i1 = min(SPINE_LEVELS_V2.index(last) + int(rng.integers(-1, 2)), len(SPINE_LEVELS_V2) - 1)
    top, bottom = anat.vertebrae[i0], anat.vertebrae[i1]
    z_top = top.centre[2] + top.body[2] * rng.uniform(-0.5, 1.5)
    z_bottom = bottom.centre[2] - bottom.body[2] * rng.uniform(-0.5, 1.5)
    return float(z_bottom), float(z_top)


def make_grid_v2(anat: AnatomyV2, kind: str, z_range, spacing, matrix: int | None, rng) -> Grid:
    """The scan grid: the whole trunk in plane (or ``matrix`` pixels), or a spine-centred box for 'crop'."""
    sz, sy, sx = spacing
    nz = int(np.floor((z_range[1] - z_range[0]) / sz)) + 1
    if kind == "crop":
        mid = anat.vertebra("T8") if z_range[1] > anat.vertebra("T12").centre[2] else anat.vertebra("L3")
        near = min(anat.vertebrae, key=lambda v: abs(v.centre[2] - 0.5 * sum(z_range)))
        half_x, front, back = rng.uniform(45, 65), rng.uniform(15, 35), rng.uniform(40, 75)
        ny, nx = int((front + back + near.body[1]) / sy) + 1, int(2 * half_x / sx) + 1
        origin = (near.centre[0] - half_x, near.centre[1] - near.body[1] - front, z_range[0])
        del mid
        return Grid((nz, ny, nx), (sz, sy, sx), origin)
    base = anat.base
    if matrix is None:
        extra = anat.extras["table"]["gap"] + anat.extras["table"]["drop"] + 10.0 if anat.extras.get("table") else 0.0
        ny = int(np.ceil((2 * base.trunk[1] + 20 + extra) / sy))
        nx = int(np.ceil((2 * base.trunk[0] + 20) / sx))
    else:
        ny = nx = matrix
    cx = base.trunk_centre[0] + rng.uniform(-10, 10)
    cy = 0.5 * (base.trunk_centre[1] + 40) + rng.uniform(-10, 10)
    if matrix is None:
        cy = base.trunk_centre[1] - base.trunk[1] - 10 + 0.5 * (ny - 1) * sy
    origin = (cx - 0.5 * (nx - 1) * sx, cy - 0.5 * (ny - 1) * sy, z_range[0])
    return Grid((nz, ny, nx), (sz, sy, sx), origin)


def make_phantom_v2(seed: int, fov: str | None = None, spacing: tuple[float, float, float] | None = None,
                    matrix: int | None = 512, lesion_rate: float = 0.2,
                    templates: list[Template] | None = None) -> Phantom:
    """The v2 phantom of ``seed`` (labels with the auxiliary classes; see ``reported_labels``).

    ``spacing`` (sz, sy, sx) and ``matrix`` override the realistic grid (0.6-1.0 mm pixels,
    1-3 mm slices, 512 matrix), e.g. for training at a model's spacing with ``matrix=None``.
    """
    rng = np.random.default_rng([seed, 2])
    anat = sample_anatomy_v2(rng, templates or default_templates(), lesion_rate)
    kind = fov or str(rng.choice(FOV_KINDS_V2, p=FOV_WEIGHTS))
    if spacing is None:
        pixel = float(rng.uniform(0.6, 1.0))
        spacing = (float(rng.choice([1.0, 1.25, 1.5, 2.0, 2.5, 3.0])), pixel, pixel)
    grid = make_grid_v2(anat, kind, field_of_view_v2(anat, kind, rng), spacing, matrix, rng)
    hu, labels, lesions, truth = render_v2(anat, grid, rng)
    return Phantom(seed, kind, grid, hu, labels, lesions, truth, anat.tissues.phase != "none")
