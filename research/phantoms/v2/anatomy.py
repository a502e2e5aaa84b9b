"""Anatomy of the v2 phantoms: real vertebra shapes on a random spine, bone and tissue values.

The spine (C5 to S3) is laid out like the v1 phantom's (``research/phantoms/anatomy.py``:
kyphosis, lordosis, mild scoliosis, bodies growing caudally), but each vertebra C5-L5 is a
real VerSe shape (``templates.py``): the template of its own level when one exists, else a
neighbour's (at most two levels away), rescaled by the ratio of the two levels' reference
sizes, then by the case's size and a per-axis jitter, and bent by a smooth random warp.
The sacrum (S1-S3) stays the v1 geometric one.

Intensities are drawn per case and per tissue, wide on purpose, so that the network has to
learn shape rather than grey values: trabecular bone with a median of 50-250 HU and a
voxel-to-voxel SD of 50-170 HU (with fatty-marrow islands), cortex 500-1200 HU, and soft
tissues in a contrast phase (none, arterial, portal).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipelines.levels import LEVELS
from research.phantoms.anatomy import Anatomy, Vertebra, _frame, _lesions, _processes, _sizes, _spine_curve
from research.phantoms.v2.templates import TEMPLATE_LEVELS, Template

SPINE_LEVELS_V2 = ["C5", "C6", "C7"] + LEVELS + ["S1", "S2", "S3"]
"""Every vertebra drawn, cranial to caudal."""

LABEL_C7, LABEL_SACRUM, LABEL_RIB = 18, 19, 20
AUXILIARY_LABELS = {LABEL_C7: "C7", LABEL_SACRUM: "sacrum", LABEL_RIB: "rib"}
"""Training labels beyond T1-L5 (1-17) that anchor the naming; never reported as vertebrae."""

MAX_TEMPLATE_DISTANCE = 2  # levels: T6-T8 have no mask of their own and borrow T5's or T9's


@dataclass
class Bone:
    """How one vertebra (or rib set) is drawn: its template, scale, warp and bone values."""

    template: Template | None
    scale: tuple[float, float, float]  # (u, v, w)
    warp: list[tuple[np.ndarray, float, float, int]]  # (wave vector 1/mm, phase, amplitude mm, component)
    trabecular_median: float
    trabecular_sd: float
    cortex_mm: float
    cortical_hu: float
    fat_drop: float  # HU by which fatty-marrow islands lie below the trabecular median


@dataclass
class Tissues:
    """Soft-tissue values (HU) of one case, contrast phase included."""

    phase: str
    fat: float
    muscle: float
    lung: float
    heart: float
    blood: float
    liver: float
    kidney: float
    disc: float
    bowel: float
    gas: float
    csf: float


@dataclass
class AnatomyV2:
    """A v2 trunk: the v1 ``Anatomy`` (poses, trunk outline, organs) plus how each bone is drawn."""

    base: Anatomy
    bones: dict[str, Bone]
    tissues: Tissues
    marrow_fat_fraction: float
    rib_radius: float
    rib_length_scale: float
    neck: tuple[float, float]  # half width and depth of the neck outline above C7
    extras: dict = field(default_factory=dict)

    @property
    def vertebrae(self) -> list[Vertebra]:
        return self.base.vertebrae

    def vertebra(self, level: str) -> Vertebra:
        return self.base.vertebra(level)


def _reference_size(level: str) -> tuple[float, float, float, float]:
    """v1 reference sizes (half width, half depth, half height, disc below), C5 and C6 included."""
    if level in ("C5", "C6"):
        return (11.5, 8.0, 6.5, 5.0)
    return _sizes(level)


def pick_template(rng: np.random.Generator, level: str, templates: list[Template]) -> Template:
    """A template of ``level`` or of its nearest levels (never further than MAX_TEMPLATE_DISTANCE)."""
    target = TEMPLATE_LEVELS.index(level)
    distance = np.array([abs(t.index() - target) for t in templates])
    best = int(distance.min())
    allowed = max(best, 1) if best <= MAX_TEMPLATE_DISTANCE else best
    pool = [t for t, d in zip(templates, distance) if d <= allowed]
    weights = np.array([3.0 if t.level == level else 1.0 for t in pool])
    return pool[int(rng.choice(len(pool), p=weights / weights.sum()))]


def sample_tissues(rng: np.random.Generator) -> Tissues:
    """Per-case soft-tissue HU in one of three contrast phases."""
    phase = str(rng.choice(["none", "arterial", "portal"], p=[0.4, 0.3, 0.3]))
    blood = {"none": rng.uniform(30, 50), "arterial": rng.uniform(220, 420), "portal": rng.uniform(130, 200)}[phase]
    liver = {"none": rng.uniform(45, 70), "arterial": rng.uniform(60, 85), "portal": rng.uniform(95, 130)}[phase]
    kidney = {"none": rng.uniform(25, 40), "arterial": rng.uniform(120, 220), "portal": rng.uniform(130, 200)}[phase]
    return Tissues(phase=phase, fat=rng.uniform(-125, -70), muscle=rng.uniform(30, 65), lung=rng.uniform(-900, -760),
                   heart=0.5 * (blood + rng.uniform(30, 50)), blood=blood, liver=liver, kidney=kidney,
                   disc=rng.uniform(60, 115), bowel=rng.uniform(10, 45), gas=rng.uniform(-1000, -650),
                   csf=rng.uniform(0, 20))


def _warp(rng: np.random.Generator) -> list[tuple[np.ndarray, float, float, int]]:
    """A smooth displacement: one low-frequency wave per local axis, 0.5-2 mm."""
    out = []
    for component in range(3):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        wavelength = rng.uniform(35, 80)
        out.append((direction / wavelength, float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(0.5, 2.0)), component))
    return out


def _bone(rng: np.random.Generator, template: Template | None, scale, median: float, sd: float,
          cortical: float) -> Bone:
    return Bone(template=template, scale=scale, warp=_warp(rng),
                trabecular_median=float(median + rng.normal(0, 15)), trabecular_sd=float(sd * rng.uniform(0.85, 1.15)),
                cortex_mm=float(rng.uniform(0.8, 2.0)), cortical_hu=float(cortical + rng.normal(0, 60)),
                fat_drop=float(rng.uniform(100, 250)))


def sample_anatomy_v2(rng: np.random.Generator, templates: list[Template], lesion_rate: float = 0.2) -> AnatomyV2:
    """Draw one v2 trunk from ``rng`` with shapes from ``templates``."""
    scale = rng.uniform(0.88, 1.12)
    median = rng.uniform(50, 250)
    sd = rng.uniform(50, 170)
    cortical = rng.uniform(500, 1200)
    bones: dict[str, Bone] = {}
    sizes: dict[str, tuple[float, float, float, float]] = {}
    for lv in SPINE_LEVELS_V2:
        ref = _reference_size(lv)
        if lv.startswith("S"):
            sizes[lv] = tuple(scale * x * rng.uniform(0.96, 1.04) for x in ref)  # type: ignore[assignment]
            bones[lv] = _bone(rng, None, (1.0, 1.0, 1.0), median, sd, cortical)
            continue
        t = pick_template(rng, lv, templates)
        tref = _reference_size(t.level)
        s = tuple(float(ref[k] / tref[k] * scale * rng.uniform(0.94, 1.06)) for k in range(3))
        a, b, h = (t.body[k] * s[k] for k in range(3))
        sizes[lv] = (a, b, h, ref[3] * scale * rng.uniform(0.85, 1.15))
        bones[lv] = _bone(rng, t, s, median, sd, cortical)
    vertebrae = _place(rng, sizes, scale, lesion_rate, bones)
    base = _trunk(rng, vertebrae, scale)
    extras = {"trachea_radius": float(scale * rng.uniform(7, 11))}
    if rng.random() < 0.6:
        extras["table"] = {"gap": float(rng.uniform(3, 25)), "curve": float(rng.uniform(0.0005, 0.002)),
                           "thickness": float(rng.uniform(2, 6)), "drop": float(rng.uniform(20, 50)),
                           "hu": float(rng.uniform(150, 700))}
    return AnatomyV2(extras=extras, base=base, bones=bones, tissues=sample_tissues(rng),
                     marrow_fat_fraction=float(rng.uniform(0.0, 0.12)), rib_radius=float(rng.uniform(3.8, 5.2)),
                     rib_length_scale=float(rng.uniform(0.9, 1.1)),
                     neck=(float(scale * rng.uniform(55, 75)), float(scale * rng.uniform(50, 65))))


def _place(rng, sizes, scale, lesion_rate, bones) -> list[Vertebra]:
    """Stack the vertebrae along a random spine curve (v1 ``Vertebra`` records, v1 geometry for the sacrum)."""
    length = sum(2 * s[2] + s[3] for s in sizes.values())
    point = _spine_curve(rng, length)
    vertebrae, s = [], 0.0
    for lv in SPINE_LEVELS_V2:
        a, b, h, disc = sizes[lv]
        s_mid = s + h
        transverse, spinous, slope = _processes(lv if not lv.startswith("C") or lv == "C7" else "C7")
        lumbar = lv.startswith("L")
        cortex = bones[lv].cortex_mm
        vertebrae.append(Vertebra(
            level=lv, centre=point(s_mid), axes=_frame(point, s_mid), body=(a, b, h), cortex=cortex,
            canal=(scale * (11.0 if lumbar else 8.5), scale * (8.0 if lumbar else 7.0)),
            arch=scale * (6.5 if lumbar else 5.0), transverse=scale * transverse, spinous=scale * spinous,
            spinous_slope=slope, disc_below=0.0 if lv.startswith("S") else disc,
            trabecular_hu=bones[lv].trabecular_median, cortical_hu=bones[lv].cortical_hu,
            lesions=_lesions(rng, (a, b, h), cortex, lesion_rate) if lv in LEVELS else [],
        ))
        s += 2 * h + disc
    return vertebrae


def _trunk(rng, vertebrae: list[Vertebra], scale: float) -> Anatomy:
    """The v1 body outline and organ placement around the spine."""
    t11 = next(v for v in vertebrae if v.level == "T11")
    half_width, half_depth = scale * rng.uniform(140, 185), scale * rng.uniform(100, 140)
    return Anatomy(
        vertebrae=vertebrae, trunk=(half_width, half_depth),
        trunk_centre=(float(rng.uniform(-8, 8)), float(scale * rng.uniform(80, 105) - half_depth)),
        fat=float(rng.uniform(6, 35)), diaphragm_z=float(t11.centre[2] + rng.uniform(-10, 30)),
        contrast=False, hu_offset=float(rng.normal(0, 8)))
