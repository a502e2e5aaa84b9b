"""Random but plausible spine anatomy for the synthetic phantoms.

Everything here is geometry in millimetres in the patient's LPS frame (x towards the
patient's left, y towards the back, z towards the head). Sampling is separated from
rendering (``phantom.py``) so that one anatomy can be drawn on any voxel grid: fine for
DICOM output, coarse for training.

Bone density: cortex 650-1150 HU and trabecular bone 110-300 HU, both lower in
osteoporotic cases (the ``osteo`` draw). Sizes follow adult anatomy roughly (vertebral bodies grow caudally, lumbar discs are
thicker than thoracic ones, transverse processes are longest at L3, ribs 1 and 11-12 are
short); each case is scaled and jittered so that no two phantoms are alike.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipelines.levels import LEVELS

SPINE_LEVELS = ["C7"] + LEVELS + ["S1", "S2", "S3"]
"""Every vertebra drawn, cranial to caudal. C7 and the sacrum give context; only T1-L5 are labelled."""


@dataclass
class Lesion:
    """One focus inside a vertebral body (or, ``site`` "posterior", its posterior elements), in its local frame (mm)."""

    kind: str  # "lytic" or "blastic"
    centre: tuple[float, float, float]  # (u, v, w)
    radii: tuple[float, float, float]
    hu: float
    site: str = "body"  # "body": clipped to the vertebral body; "posterior": to the posterior elements (a pedicle)


FRACTURE_MORPHOLOGIES = ("wedge", "biconcave", "crush")
MID_DENT_RADIUS = 0.6
"""A biconcave dent spans this fraction of the body's half width and depth: the walls keep their heights."""
WALL_POSITION = 0.7
"""The anterior and posterior heights are taken at 15 % and 85 % of the depth: 0.7 of the half depth from the centre."""


@dataclass
class Fracture:
    """A compression fracture: the body's local height is scaled by ``scale(u/a, v/b)`` (1 = intact).

    * wedge: the height falls linearly from the posterior measuring point (intact) to the
      anterior one (``depth`` lost there), so 1 - anterior/posterior = ``depth``;
    * biconcave: a broad central dent, ``depth`` lost at the centre, nothing at the walls;
    * crush: the whole body loses ``depth``.

    Both endplates move towards the centre by the same amount. ``grade`` and ``loss`` are
    the Genant grade and height reduction the fracture was designed to give.
    """

    morphology: str
    grade: int
    loss: float
    depth: float

    def scale(self, ru, rv):
        """The height factor at relative left ``ru`` = u/a and posterior ``rv`` = v/b (arrays broadcast)."""
        if self.morphology == "crush":
            return np.full(np.broadcast(ru, rv).shape, 1.0 - self.depth)
        if self.morphology == "wedge":
            ramp = np.clip((WALL_POSITION - rv) / (2 * WALL_POSITION), 0.0, None)
            return np.broadcast_to(1.0 - self.depth * ramp, np.broadcast(ru, rv).shape)
        if self.morphology == "biconcave":
            r2 = (ru ** 2 + rv ** 2) / MID_DENT_RADIUS ** 2
            return 1.0 - self.depth * np.clip(1.0 - r2 ** 2, 0.0, 1.0)  # flat-bottomed, as an endplate sinks
        raise ValueError(f"fracture morphology must be one of {FRACTURE_MORPHOLOGIES}, not {self.morphology!r}")


@dataclass
class Vertebra:
    """One vertebra: its pose on the spine curve and the sizes of its parts (mm)."""

    level: str
    centre: np.ndarray  # body centre, world LPS
    axes: np.ndarray  # rows: u (left), v (posterior), w (superior) unit vectors
    body: tuple[float, float, float]  # half width, half depth, half height
    cortex: float
    canal: tuple[float, float]  # half width, half depth of the spinal canal
    arch: float  # thickness of pedicles and laminae
    transverse: float  # length of a transverse process
    spinous: float  # length of the spinous process
    spinous_slope: float  # caudal drop of the spinous process per mm
    disc_below: float
    trabecular_hu: float
    cortical_hu: float
    lesions: list[Lesion] = field(default_factory=list)
    fracture: Fracture | None = None

    @property
    def lesion_class(self) -> str:
        kinds = {lesion.kind for lesion in self.lesions}
        if not kinds:
            return "none"
        return "mixed" if len(kinds) == 2 else kinds.pop()


@dataclass
class Anatomy:
    """A whole synthetic trunk: spine, body outline and organ placement."""

    vertebrae: list[Vertebra]
    trunk: tuple[float, float]  # half width (x), half depth (y) of the body outline
    trunk_centre: tuple[float, float]
    fat: float  # subcutaneous fat thickness
    diaphragm_z: float
    contrast: bool
    hu_offset: float

    def vertebra(self, level: str) -> Vertebra:
        return next(v for v in self.vertebrae if v.level == level)


# Reference sizes at scale 1 (half width, half depth, half height, disc below), interpolated per level.
_SIZE_TOP = {"C7": (12.0, 8.0, 7.0, 5.0), "T1": (13.0, 9.0, 8.0, 4.0), "T12": (20.0, 15.0, 11.5, 6.5),
             "L1": (21.0, 16.0, 12.5, 9.0), "L5": (25.0, 18.0, 13.5, 11.0)}


def _sizes(level: str) -> tuple[float, float, float, float]:
    if level in _SIZE_TOP:
        return _SIZE_TOP[level]
    if level.startswith("T"):
        f = (int(level[1:]) - 1) / 11
        lo, hi = _SIZE_TOP["T1"], _SIZE_TOP["T12"]
    elif level.startswith("L"):
        f = (int(level[1:]) - 1) / 4
        lo, hi = _SIZE_TOP["L1"], _SIZE_TOP["L5"]
    else:  # sacral segments shrink quickly and are fused (no disc)
        k = int(level[1:])
        return (24.0 - 4 * k, 16.0 - 2 * k, 11.0, 0.0)
    return tuple(a + f * (b - a) for a, b in zip(lo, hi))  # type: ignore[return-value]


def _processes(level: str) -> tuple[float, float, float]:
    """Transverse length, spinous length and spinous slope of a level."""
    if level == "C7":
        return 14.0, 32.0, 0.25
    if level.startswith("T"):
        i = int(level[1:])
        return 20.0 - 0.4 * i, 30.0, 0.7 if 4 <= i <= 9 else 0.45
    if level.startswith("L"):
        i = int(level[1:])
        return {1: 18.0, 2: 22.0, 3: 27.0, 4: 23.0, 5: 20.0}[i], 28.0, 0.1
    return 0.0, 12.0, 0.2


def _spine_curve(rng: np.random.Generator, length: float):
    """Return p(s) -> (x, y, z) and its tangent, s = arc position from the top of C7 (mm)."""
    kyphosis = rng.uniform(8, 30)
    lordosis = rng.uniform(6, 25)
    scoliosis = rng.uniform(0, 10)
    phase = rng.uniform(0, 2 * np.pi)
    split = 0.63 * length  # thoracolumbar junction, roughly

    def point(s: float) -> np.ndarray:
        if s < split:
            y = kyphosis * np.sin(np.pi * s / split)
        else:
            y = -lordosis * np.sin(np.pi * (s - split) / (length - split))
        x = scoliosis * np.sin(2 * np.pi * s / length + phase)
        return np.array([x, y, -s])

    return point


def _frame(point, s: float) -> np.ndarray:
    """Local axes (u, v, w) at arc position s: w along the spine towards the head."""
    d = point(s - 1.0) - point(s + 1.0)
    w = d / np.linalg.norm(d)
    u = np.cross([0.0, 1.0, 0.0], w)
    u /= np.linalg.norm(u)
    v = np.cross(w, u)
    return np.stack([u, v, w])


def _lesions(rng: np.random.Generator, body: tuple[float, float, float], cortex: float,
             lesion_rate: float) -> list[Lesion]:
    if rng.random() >= lesion_rate:
        return []
    kind = str(rng.choice(["lytic", "blastic", "mixed"], p=[0.45, 0.3, 0.25]))
    kinds = ["lytic", "blastic"] if kind == "mixed" else [kind] * int(rng.integers(1, 3))
    a, b, h = (x - cortex for x in body)
    out = []
    for k in kinds:
        rmax = 0.85 * min(a, b, h * 1.4)
        r = float(np.exp(rng.uniform(np.log(2.5), np.log(max(rmax, 3.0)))))
        radii = tuple(float(r * rng.uniform(0.75, 1.25)) for _ in range(3))
        centre = tuple(float(rng.uniform(-0.55, 0.55) * lim) for lim in (a, b, h))
        hu = rng.uniform(0, 100) if k == "lytic" else rng.uniform(600, 1200)
        out.append(Lesion(k, centre, radii, float(hu)))  # type: ignore[arg-type]
    return out


def sample_anatomy(rng: np.random.Generator, lesion_rate: float = 0.27) -> Anatomy:
    """Draw one random trunk. ``lesion_rate`` is the chance that a T1-L5 vertebra carries lesions."""
    scale = rng.uniform(0.88, 1.12)
    osteo = rng.uniform(0.0, 1.0)  # 0 = dense young bone, 1 = osteoporotic
    sizes = {lv: tuple(scale * x * rng.uniform(0.96, 1.04) for x in _sizes(lv)) for lv in SPINE_LEVELS}
    length = sum(2 * s[2] + s[3] for s in sizes.values())
    point = _spine_curve(rng, length)
    vertebrae, s = [], 0.0
    for lv in SPINE_LEVELS:
        a, b, h, disc = sizes[lv]
        s_mid = s + h
        transverse, spinous, slope = _processes(lv)
        lumbar = lv.startswith("L")
        cortex = scale * rng.uniform(1.0, 1.6)
        body = (a, b, h)
        vertebrae.append(Vertebra(
            level=lv, centre=point(s_mid), axes=_frame(point, s_mid), body=body, cortex=cortex,
            canal=(scale * (11.0 if lumbar else 8.5), scale * (8.0 if lumbar else 7.0)),
            arch=scale * (6.5 if lumbar else 5.0),
            transverse=scale * transverse * rng.uniform(0.9, 1.1),
            spinous=scale * spinous * rng.uniform(0.85, 1.1), spinous_slope=slope,
            disc_below=disc,
            trabecular_hu=float(rng.uniform(230, 300) - osteo * rng.uniform(60, 120)),
            cortical_hu=float(rng.uniform(750, 1150) - osteo * 100),
            lesions=_lesions(rng, body, cortex, lesion_rate) if lv in LEVELS else [],
        ))
        s += 2 * h + disc
    t12 = next(v for v in vertebrae if v.level == "T11")
    half_width, half_depth = scale * rng.uniform(140, 185), scale * rng.uniform(100, 140)
    return Anatomy(
        vertebrae=vertebrae,
        trunk=(half_width, half_depth),
        trunk_centre=(float(rng.uniform(-8, 8)), float(scale * rng.uniform(80, 105) - half_depth)),
        fat=float(rng.uniform(6, 35)),
        diaphragm_z=float(t12.centre[2] + rng.uniform(-10, 30)),
        contrast=bool(rng.random() < 0.5),
        hu_offset=float(rng.normal(0, 8)),
    )
