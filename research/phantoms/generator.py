"""Synthetic spine CT phantoms with metastatic lesions and their ground truth.

A phantom is drawn from a seed: ``make_phantom(seed)`` samples an anatomy
(``anatomy.py``), picks a field of view like a real scan (thoracic, lumbar or
thoraco-lumbar) and a voxel grid, and renders Hounsfield units, vertebra labels in the
paper's convention (T1..T12 = 1..12, L1..L5 = 13..17) and a lesion mask (1 lytic,
2 blastic). The same seed always gives the same case.

Arrays are indexed (z, y, x) on a grid aligned with the patient's LPS axes: index k
grows towards the head, j towards the back, i towards the patient's left. Writers in
``phantom_io.py`` (NIfTI, nnU-Net raw data) and ``phantom_dicom.py`` (a DICOM CT series)
turn that into files.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from research.phantoms.anatomy import SPINE_LEVELS, Anatomy, Vertebra, sample_anatomy
from pipelines.levels import LEVELS

FOV_KINDS = ("thoracic", "lumbar", "thoracolumbar")
_FOV_RANGE = {  # (first level, last level) with a level of jitter each side
    "thoracic": ("C7", "L1"),
    "lumbar": ("T11", "S2"),
    "thoracolumbar": ("T3", "S2"),
}

AIR, FAT, MUSCLE, CSF, DISC = -1000.0, -100.0, 50.0, 15.0, 80.0
LUNG, HEART, LIVER, KIDNEY = -850.0, 40.0, 60.0, 30.0


@dataclass
class Grid:
    """A voxel grid aligned with LPS: shape (nz, ny, nx), spacing (sz, sy, sx) mm, origin (x, y, z) mm."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    def axis(self, dim: int) -> np.ndarray:
        """World coordinates (mm) of the voxel centres along array axis ``dim`` (0=z, 1=y, 2=x)."""
        world = 2 - dim
        return self.origin[world] + self.spacing[dim] * np.arange(self.shape[dim])


@dataclass
class Phantom:
    """One synthetic case: image in HU, vertebra labels, lesion mask and the truth per vertebra."""

    seed: int
    fov: str
    grid: Grid
    image: np.ndarray  # int16 HU
    labels: np.ndarray  # uint8, paper convention
    lesions: np.ndarray  # uint8, 1 lytic, 2 blastic
    truth: dict[str, dict] = field(default_factory=dict)
    contrast: bool = False  # intravenous contrast (an enhanced aorta)
    visit: int = 0  # 0: a baseline study; 1: its follow-up (the same patient, a later study: ``report.followup_pair``)
    days_after_baseline: int = 0
    extra_truth: dict = field(default_factory=dict)  # series-level truth: the report's design, a follow-up's change

    def levels_present(self) -> list[str]:
        return [LEVELS[i - 1] for i in np.unique(self.labels) if i > 0]


class _Canvas:
    """The three arrays being painted, with box-limited coordinate look-ups."""

    def __init__(self, grid: Grid):
        self.grid = grid
        self.hu = np.full(grid.shape, AIR, np.float32)
        self.labels = np.zeros(grid.shape, np.uint8)
        self.lesions = np.zeros(grid.shape, np.uint8)
        self.axes = [grid.axis(d) for d in range(3)]

    def box(self, lo: np.ndarray, hi: np.ndarray):
        """Slices and broadcastable world coordinates (x, y, z) of the voxels in the box lo..hi (x, y, z)."""
        slices, coords = [], []
        for dim in range(3):
            world = 2 - dim
            ax = self.axes[dim]
            step = self.grid.spacing[dim]
            a = int(np.clip(np.floor((lo[world] - ax[0]) / step), 0, len(ax)))
            b = int(np.clip(np.ceil((hi[world] - ax[0]) / step) + 1, 0, len(ax)))
            slices.append(slice(a, b))
            shape = [1, 1, 1]
            shape[dim] = max(b - a, 0)
            coords.append(ax[a:b].reshape(shape))
        z, y, x = coords
        return tuple(slices), x, y, z


def _local(vert: Vertebra, x, y, z):
    """Coordinates (u, v, w) in a vertebra's frame of the broadcast world coordinates."""
    d = (x - vert.centre[0], y - vert.centre[1], z - vert.centre[2])
    return [sum(vert.axes[k][i] * d[i] for i in range(3)) for k in range(3)]


def _ellipsoid(u, v, w, centre, radii, power: float = 2.0):
    return (((u - centre[0]) / radii[0]) ** 2 + ((v - centre[1]) / radii[1]) ** 2
            + np.abs((w - centre[2]) / radii[2]) ** power) <= 1.0


def _vertebra_parts(vert: Vertebra, u, v, w):
    """Masks of body, trabecular core and posterior elements in local coordinates."""
    a, b, h = vert.body
    c = vert.cortex
    if vert.fracture is None:
        body = _ellipsoid(u, v, w, (0, 0, 0), (a, b, h), power=8)
        core = _ellipsoid(u, v, w, (0, 0, 0), (a - c, b - c, h - c), power=8)
    else:
        body, core = _fractured_body(vert, u, v, w)
    cu, cv = vert.canal
    t = vert.arch
    vc = b + cv - 1.0
    ring_zone = np.abs(w + 0.1 * h) <= 0.6 * h
    outer = ((u / (cu + t)) ** 2 + ((v - vc) / (cv + t)) ** 2) <= 1.0
    canal = ((u / cu) ** 2 + ((v - vc) / cv) ** 2) <= 1.0
    arch = outer & ~canal & ring_zone & (v > 0.3 * b)
    s_len = vert.spinous
    v0 = vc + cv + 0.5 * t
    sheared_w = w + vert.spinous_slope * np.clip(v - v0, 0, None)
    spinous = _ellipsoid(u, v, sheared_w, (0, v0 + s_len / 2, -0.1 * h), (3.5, s_len / 2, 0.45 * h))
    tl = vert.transverse
    tu = cu + t + tl / 2 - 2.0
    transverse = (_ellipsoid(u, v, w, (tu, vc, 0), (tl / 2 + 2, 5.0, 0.35 * h + 1))
                  | _ellipsoid(u, v, w, (-tu, vc, 0), (tl / 2 + 2, 5.0, 0.35 * h + 1)))
    posterior = (arch | spinous | transverse) & ~canal
    if vert.fracture is not None:  # above a collapsed endplate, inside the body's outline, is disc, not pedicle
        posterior &= body | (((u / a) ** 2 + (v / b) ** 2) > 1.0)
    return body, core, posterior, canal & ring_zone


def _fractured_body(vert: Vertebra, u, v, w):
    """Body and trabecular core of a fractured vertebra: the local half height scaled by its ``Fracture``."""
    a, b, h = vert.body
    c = vert.cortex
    half = h * vert.fracture.scale(u / a, v / b)
    radial = (u / a) ** 2 + (v / b) ** 2
    body = radial + np.abs(w / half) ** 8 <= 1.0
    core = ((u / (a - c)) ** 2 + (v / (b - c)) ** 2 + np.abs(w / np.maximum(half - c, 0.5)) ** 8) <= 1.0
    return body, core


def _paint_vertebra(cv: _Canvas, vert: Vertebra, label: int) -> dict:
    a, b, h = vert.body
    reach = max(vert.canal[0] + vert.arch + vert.transverse, b + 2 * vert.canal[1] + vert.arch + vert.spinous) + 6
    zreach = h + vert.spinous * vert.spinous_slope + 8
    lo = vert.centre - np.array([reach, reach, zreach])
    hi = vert.centre + np.array([reach, reach, zreach])
    sl, x, y, z = cv.box(lo, hi)
    if any(s.stop <= s.start for s in sl):
        return {"voxels": 0, "lesion_voxels": 0}
    u, v, w = _local(vert, x, y, z)
    body, core, posterior, canal = _vertebra_parts(vert, u, v, w)
    hu = cv.hu[sl]
    hu[posterior] = 0.5 * (vert.cortical_hu + vert.trabecular_hu)
    hu[body] = vert.cortical_hu
    hu[core] = vert.trabecular_hu
    hu[canal] = CSF
    lesion_voxels = 0
    painted = np.zeros(body.shape, bool)
    for lesion in vert.lesions:
        focus = _ellipsoid(u, v, w, lesion.centre, lesion.radii) & (posterior if lesion.site == "posterior" else body)
        hu[focus] = lesion.hu
        cv.lesions[sl][focus] = 1 if lesion.kind == "lytic" else 2
        lesion_voxels += int(focus.sum())
        painted |= focus
    mask = body | posterior
    if label:
        cv.labels[sl][mask] = label
    return {"voxels": int(mask.sum()), "lesion_voxels": lesion_voxels, "body_voxels": int(body.sum()),
            "body_lesion_voxels": int((painted & body).sum()), "posterior_lesion_voxels": int((painted & ~body).sum())}


def _paint_disc(cv: _Canvas, upper: Vertebra, lower: Vertebra) -> None:
    if upper.disc_below <= 0:
        return
    a = 0.5 * (upper.body[0] + lower.body[0]) - 0.5
    b = 0.5 * (upper.body[1] + lower.body[1]) - 0.5
    centre = 0.5 * (upper.centre + lower.centre)
    half = 0.5 * np.linalg.norm(upper.centre - lower.centre)
    sl, x, y, z = cv.box(centre - [a + 2, b + 2, half], centre + [a + 2, b + 2, half])
    if any(s.stop <= s.start for s in sl):
        return
    mid = Vertebra(**{**upper.__dict__, "centre": centre})
    u, v, w = _local(mid, x, y, z)
    disc = _ellipsoid(u, v, w, (0, 0, 0), (a, b, half), power=8)
    hu = cv.hu[sl]
    hu[disc & (hu < 200)] = DISC


def _paint_trunk(cv: _Canvas, anat: Anatomy) -> None:
    """Body outline (fat), muscle wall, paraspinal muscles, organs and the aorta."""
    g = cv.grid
    x = cv.axes[2].reshape(1, 1, -1)
    y = cv.axes[1].reshape(1, -1, 1)
    z = cv.axes[0].reshape(-1, 1, 1)
    (cx, cy), (rx, ry) = anat.trunk_centre, anat.trunk
    r_body = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
    r_inner = ((x - cx) / (rx - anat.fat)) ** 2 + ((y - cy) / (ry - anat.fat)) ** 2
    cv.hu[np.broadcast_to(r_body <= 1.0, g.shape)] = FAT
    cv.hu[np.broadcast_to(r_inner <= 1.0, g.shape)] = MUSCLE
    # Thoracic cavity: lungs above the diaphragm, lateral to the mediastinum.
    t1 = anat.vertebra("T1")
    apex = t1.centre[2] + 25.0
    cav_rx, cav_ry = rx - anat.fat - 25.0, ry - anat.fat - 20.0
    r_cav = ((x - cx) / cav_rx) ** 2 + ((y - cy + 10) / cav_ry) ** 2
    spine_y = anat.vertebra("T8").centre[1]
    mediastinum = (np.abs(x - cx - 10) < 35 + 0.25 * np.clip(spine_y - y, 0, None)) & (y < spine_y - 10)
    spine_zone = (np.abs(x) < 45) & (y > spine_y - 25)
    dome = anat.diaphragm_z + 25.0 * np.clip(1 - ((x - cx) / cav_rx) ** 2 - ((y - cy) / cav_ry) ** 2, 0, 1)
    dome = dome + np.where(x < cx, 12.0, 0.0)  # the right dome sits higher (liver)
    apex_cap = apex - 0.004 * ((np.abs(x - cx) - 0.5 * cav_rx) ** 2)
    lungs = (r_cav <= 1.0) & ~mediastinum & ~spine_zone & (z > dome) & (z < apex_cap)
    cv.hu[lungs] = LUNG
    heart_z = anat.vertebra("T8").centre[2]
    heart = (((x - cx - 25) / 60) ** 2 + ((y - (cy - 20)) / 45) ** 2 + ((z - heart_z) / 55) ** 2) <= 1
    cv.hu[np.broadcast_to(heart, g.shape)] = HEART
    liver = (((x - cx + 55) / 85) ** 2 + ((y - cy + 5) / 75) ** 2 + ((z - anat.diaphragm_z + 60) / 80) ** 2) <= 1
    liver = liver & (z < dome)
    cv.hu[np.broadcast_to(liver, g.shape)] = LIVER
    l1 = anat.vertebra("L1")
    for side in (-1, 1):
        kidney = (((x - l1.centre[0] - side * 65) / 30) ** 2 + ((y - l1.centre[1] - 15) / 25) ** 2
                  + ((z - l1.centre[2] + 10) / 55) ** 2) <= 1
        cv.hu[np.broadcast_to(kidney, g.shape)] = KIDNEY
    _paint_aorta(cv, anat, x, y, z)


def _paint_aorta(cv: _Canvas, anat: Anatomy, x, y, z) -> None:
    hu = 250.0 if anat.contrast else 40.0
    for vert in anat.vertebrae[1:-3]:
        half = vert.body[2] + vert.disc_below
        sl, xb, yb, zb = cv.box(vert.centre - [60, 60, half], vert.centre + [60, 60, half])
        if any(s.stop <= s.start for s in sl):
            continue
        ax = vert.centre[0] + vert.body[0] * 0.6
        ay = vert.centre[1] - vert.body[1] - 14.0
        tube = ((xb - ax) ** 2 + (yb - ay) ** 2) <= 12.0 ** 2
        cv.hu[sl][np.broadcast_to(tube, cv.hu[sl].shape)] = hu


def _paint_ribs(cv: _Canvas, anat: Anatomy) -> None:
    """Ribs of T1-T12: flattened tubes along an ellipse around the thorax, falling anteriorly."""
    cx, cy = anat.trunk_centre
    rx, ry = anat.trunk
    lengths = {1: 100, 2: 130, 3: 150, 4: 160, 5: 165, 6: 165, 7: 165, 8: 155, 9: 145, 10: 135, 11: 105, 12: 75}
    for i in range(1, 13):
        vert = anat.vertebra(f"T{i}")
        tip = vert.canal[0] + vert.arch + vert.transverse
        ex, ey = rx - anat.fat - 18.0, ry - anat.fat - 14.0
        ry_c = vert.centre[1] + vert.body[1] + vert.canal[1] - ey  # ellipse centre: posterior point at the process
        drop = 0.9 * (2 * vert.body[2] + vert.disc_below) * (1.3 if i > 6 else 1.0)
        z0 = vert.centre[2]
        sl, x, y, z = cv.box(np.array([cx - ex - 8, ry_c - ey - 8, z0 - drop - 10]),
                             np.array([cx + ex + 8, ry_c + ey + 8, z0 + 10]))
        if any(s.stop <= s.start for s in sl):
            continue
        dx, dy = x - vert.centre[0], y - ry_c
        theta = np.degrees(np.arctan2(np.abs(dx), dy))  # 0 at the back, 90 lateral, 180 front
        radius = np.sqrt((dx / ex) ** 2 + (dy / ey) ** 2)
        start = np.degrees(np.arctan2(tip, ey))
        along = np.clip((theta - start) / lengths[i], 0, 1)
        z_rib = z0 - drop * along
        rib = ((np.abs(radius - 1.0) * min(ex, ey) <= 3.2) & (np.abs(z - z_rib) <= 5.0)
               & (theta >= start - 2) & (theta <= start + lengths[i]))
        hu = cv.hu[sl]
        hu[rib & (hu < 300)] = 0.5 * (vert.cortical_hu + vert.trabecular_hu)


def _paint_pelvis(cv: _Canvas, anat: Anatomy) -> None:
    """Iliac wings beside the sacrum: curved bony plates with a cortical rim."""
    s1, l5 = anat.vertebra("S1"), anat.vertebra("L5")
    for side in (-1, 1):
        centre = s1.centre + np.array([side * 70.0, 10.0, 15.0])
        radii = np.array([22.0, 60.0, 55.0])
        sl, x, y, z = cv.box(centre - radii - 4, centre + radii + 4)
        if any(s.stop <= s.start for s in sl):
            continue
        u, v, w = x - centre[0], y - centre[1], z - centre[2]
        outer = _ellipsoid(u, v, w, (0, 0, 0), radii)
        inner = _ellipsoid(u, v, w, (0, 0, 0), radii - 2.0)
        wing = outer & (np.abs(u - side * 0.004 * v ** 2) < 6.0)
        hu = cv.hu[sl]
        hu[wing] = l5.cortical_hu
        hu[wing & inner] = l5.trabecular_hu


def render(anat: Anatomy, grid: Grid, rng: np.random.Generator, blur_mm: float, noise_hu: float):
    """Draw an anatomy on a grid: returns (hu int16, labels uint8, lesions uint8, truth per level)."""
    cv = _Canvas(grid)
    _paint_trunk(cv, anat)
    _paint_ribs(cv, anat)
    _paint_pelvis(cv, anat)
    for upper, lower in zip(anat.vertebrae[:-1], anat.vertebrae[1:]):
        _paint_disc(cv, upper, lower)
    truth = {}
    for vert in anat.vertebrae:
        label = LEVELS.index(vert.level) + 1 if vert.level in LEVELS else 0
        counts = _paint_vertebra(cv, vert, label)
        if label and counts["voxels"]:
            truth[vert.level] = {"lesion": vert.lesion_class, **counts,
                                 "lesion_max_diameter_mm": _max_diameter(vert)}
    hu = cv.hu + anat.hu_offset * (cv.hu > -900)
    sigma = [blur_mm / s for s in grid.spacing]
    hu = ndimage.gaussian_filter(hu, sigma, mode="nearest")
    noise = rng.normal(0.0, noise_hu, grid.shape).astype(np.float32)
    hu += ndimage.gaussian_filter(noise, 0.6) * 1.8
    hu = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return hu, cv.labels, cv.lesions, truth


def _max_diameter(vert: Vertebra) -> float:
    return max((2 * max(lesion.radii) for lesion in vert.lesions), default=0.0)


def field_of_view(anat: Anatomy, kind: str, rng: np.random.Generator) -> tuple[float, float]:
    """z range (bottom, top) in mm of a scan of the given kind, a level of jitter at each end."""
    first, last = _FOV_RANGE[kind]
    i0 = max(SPINE_LEVELS.index(first) + int(rng.integers(-1, 2)), 0)
    i1 = min(SPINE_LEVELS.index(last) + int(rng.integers(-1, 2)), len(SPINE_LEVELS) - 1)
    top = anat.vertebrae[i0]
    bottom = anat.vertebrae[i1]
    z_top = top.centre[2] + top.body[2] * rng.uniform(-0.5, 1.5)
    z_bottom = bottom.centre[2] - bottom.body[2] * rng.uniform(-0.5, 1.5)
    return float(z_bottom), float(z_top)


def make_grid(anat: Anatomy, z_range: tuple[float, float], spacing: tuple[float, float, float],
              matrix: int | None, rng: np.random.Generator) -> Grid:
    """A grid covering z_range, centred in-plane on the trunk; ``matrix`` fixes the in-plane size."""
    sz, sy, sx = spacing
    nz = int(np.floor((z_range[1] - z_range[0]) / sz)) + 1
    if matrix is None:
        ny = int(np.ceil((2 * anat.trunk[1] + 20) / sy))
        nx = int(np.ceil((2 * anat.trunk[0] + 20) / sx))
    else:
        ny = nx = matrix
    cx = anat.trunk_centre[0] + rng.uniform(-10, 10)
    cy = 0.5 * (anat.trunk_centre[1] + 40) + rng.uniform(-10, 10)
    origin = (cx - 0.5 * (nx - 1) * sx, cy - 0.5 * (ny - 1) * sy, z_range[0])
    return Grid((nz, ny, nx), (sz, sy, sx), origin)


def make_phantom(seed: int, fov: str | None = None, spacing: tuple[float, float, float] | None = None,
                 matrix: int | None = 512, lesion_rate: float = 0.27, report=None) -> Phantom:
    """The phantom of ``seed``: a realistic scan (random FOV kind, 0.6-1.0 mm pixels, 1-3 mm slices).

    ``spacing`` (sz, sy, sx) and ``matrix`` override the grid, e.g. for training at a model's
    spacing; ``matrix=None`` fits the grid to the trunk. ``report`` (a
    ``research.phantoms.report.ReportDesign``) adds what the spine report measures:
    compression fractures of known Genant grade and morphology, known trabecular HU, designed
    lesions (some reaching the pedicles; ``lesion_rate`` is then unused), with their truth;
    without it a seed gives the same phantom as before the option existed.
    """
    if report is not None:
        from research.phantoms.report import report_phantom

        return report_phantom(seed, report, fov=fov, spacing=spacing)
    rng, anat, kind, grid = draw_case(seed, fov, spacing, matrix, lesion_rate)
    blur = float(rng.uniform(0.4, 1.0))
    noise = float(rng.uniform(8, 40))
    hu, labels, lesions, truth = render(anat, grid, rng, blur, noise)
    return Phantom(seed, kind, grid, hu, labels, lesions, truth, anat.contrast)


def draw_case(seed: int, fov: str | None, spacing: tuple[float, float, float] | None, matrix: int | None,
              lesion_rate: float) -> tuple[np.random.Generator, Anatomy, str, Grid]:
    """The draws of a seed before rendering: (the generator, at the point rendering starts), anatomy, FOV kind, grid."""
    rng = np.random.default_rng(seed)
    anat = sample_anatomy(rng, lesion_rate)
    kind = fov or FOV_KINDS[int(rng.integers(len(FOV_KINDS)))]
    if spacing is None:
        pixel = float(rng.uniform(0.6, 1.0))
        spacing = (float(rng.choice([1.0, 1.25, 1.5, 2.0, 2.5, 3.0])), pixel, pixel)
    grid = make_grid(anat, field_of_view(anat, kind, rng), spacing, matrix, rng)
    return rng, anat, kind, grid
