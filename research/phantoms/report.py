"""Phantoms for the spine report: fractures of known Genant grade, known trabecular HU, pedicle lesions, follow-ups.

``make_phantom(seed, report=ReportDesign(...))`` draws the seed's anatomy as usual, then,
from a random stream of its own (so the anatomy of a seed does not change), designs:

* compression fractures (``anatomy.Fracture``) of a chosen Genant grade (1: 20-25 %,
  2: 25-40 %, 3: 40 % or more height loss, each drawn away from the limits) and morphology
  (wedge: anterior loss; biconcave: middle loss; crush: the whole body, against its
  neighbours), never on two neighbouring vertebrae, always with both neighbours in the scan;
* a trabecular HU per vertebra, drawn in ``trabecular_hu``;
* lesions: one focus per kind in ``lesions`` vertebrae (lytic, blastic or mixed), the
  first ``pedicle_lesions`` of them lytic with a second focus in one or both pedicles;
* a grid fitted to the spine (the trunk around it is still drawn), so a case renders fast.

``followup_pair(seed, design)`` returns the baseline and a follow-up of the same patient:
the same anatomy, every lesion grown by a known volume factor, one new lesion, one new
collapse, drawn on a grid moved as a new table position moves it.

The truth of every labelled vertebra (``Phantom.truth[level]``) gains ``heights_mm``
(anterior, middle, posterior at 85, 50 and 15 % of the body's depth, on its mid-sagittal
plane, along its own superior axis: the shape's formula, not a mask), ``height_loss_pct``,
``genant_grade``, ``genant_morphology``, ``trabecular_hu``, ``lesion_volume_ml`` (in the
body), ``posterior_lesion_volume_ml``, ``posterior_involvement`` (sides) and ``sins`` (the
CT components from the truth); a follow-up's ``extra_truth["change"]`` holds the change.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from pipelines.levels import LEVELS
from pipelines.measure.sins import QUALITY, collapse_score, location_score, posterolateral_score
from research.phantoms.anatomy import (FRACTURE_MORPHOLOGIES, WALL_POSITION, Anatomy, Fracture, Lesion,
                                       Vertebra)
from research.phantoms.generator import Grid, Phantom, draw_case, render

REPORT_STREAM = 16
"""The report's draws come from ``default_rng([seed, REPORT_STREAM])``: the seed's own stream is left as it was."""
GRADE_LOSSES = {1: (0.215, 0.235), 2: (0.28, 0.37), 3: (0.43, 0.48)}
"""Designed height reductions per Genant grade: inside the grade, away from its limits (and from SINS' 50 %)."""
GENANT_LIMITS = ((0.40, 3), (0.25, 2), (0.20, 1))
POSITIONS = {"anterior": 0.85, "middle": 0.50, "posterior": 0.15}
REPORT_SLICES_MM = (0.625, 1.0, 1.25)
PHANTOM_ISSUER = "SPINE-NODE-PHANTOMS"
LESION_BONE_HU = (170.0, 260.0)
"""Trabecular HU of a lesion vertebra: a soft-tissue focus in osteoporotic bone barely stands out (no call)."""


@dataclass(frozen=True)
class ReportDesign:
    """What a report phantom carries. ``fractures``: (grade, morphology) pairs, or None to draw ``fracture_count``."""

    fractures: tuple[tuple[int, str], ...] | None = None
    fracture_count: int = 2
    trabecular_hu: tuple[float, float] | None = (60.0, 260.0)
    lesions: int = 2
    pedicle_lesions: int = 1
    margin_mm: float = 15.0

    def __post_init__(self):
        for grade, morphology in self.fractures or ():
            if grade not in GRADE_LOSSES or morphology not in FRACTURE_MORPHOLOGIES:
                raise ValueError(f"a fracture is a Genant grade 1-3 and one of {FRACTURE_MORPHOLOGIES}, "
                                 f"not ({grade!r}, {morphology!r})")
        if self.pedicle_lesions > self.lesions:
            raise ValueError(f"{self.pedicle_lesions} pedicle lesions need as many lesion vertebrae "
                             f"(lesions={self.lesions})")


# ----------------------------------------------------------------------------- one phantom
def report_phantom(seed: int, design: ReportDesign, fov: str | None = None,
                   spacing: tuple[float, float, float] | None = None) -> Phantom:
    """The report phantom of ``seed`` (``make_phantom(seed, report=design)``): its lesions are the designed ones only."""
    rng, anat, kind, grid, extra = _designed(seed, design, fov, spacing)
    return _render(seed, anat, kind, grid, rng, extra)


def _designed(seed: int, design: ReportDesign, fov, spacing):
    own = np.random.default_rng([seed, REPORT_STREAM])
    if spacing is None:  # thin slices, as a spine report is read on
        pixel = float(own.uniform(0.6, 0.9))
        spacing = (float(own.choice(REPORT_SLICES_MM)), pixel, pixel)
    rng, anat, kind, grid = draw_case(seed, fov or "lumbar", spacing, None, 0.0)
    grid = spine_grid(anat, grid, design.margin_mm)
    measurable = [v.level for v in anat.vertebrae if _inside(v, grid)]
    if design.trabecular_hu is not None:
        for vert in anat.vertebrae:
            vert.trabecular_hu = float(own.uniform(*design.trabecular_hu))
    fractured = _place_fractures(anat, measurable, design, own)
    _place_lesions(anat, measurable, fractured, design, own)
    extra = {"report_design": {**asdict(design), "fractured": fractured}}
    return rng, anat, kind, grid, extra


def _render(seed: int, anat: Anatomy, kind: str, grid: Grid, rng: np.random.Generator, extra: dict,
            visit: int = 0, days: int = 0) -> Phantom:
    blur = float(rng.uniform(0.4, 1.0))
    noise = float(rng.uniform(8, 30))
    hu, labels, lesions, truth = render(anat, grid, rng, blur, noise)
    phantom = Phantom(seed, kind, grid, hu, labels, lesions, truth, anat.contrast, visit, days, extra)
    add_report_truth(phantom, anat)
    return phantom


def spine_grid(anat: Anatomy, grid: Grid, margin_mm: float) -> Grid:
    """``grid``'s slices, cropped in-plane to the labelled vertebrae within them and ``margin_mm`` around them."""
    z0, z1 = grid.origin[2], grid.origin[2] + (grid.shape[0] - 1) * grid.spacing[0]
    inside = [v for v in anat.vertebrae if v.level in LEVELS and z0 - 40 <= v.centre[2] <= z1 + 40]
    reach = [max(v.canal[0] + v.arch + v.transverse, v.body[0]) for v in inside]
    xs = [c for v, r in zip(inside, reach) for c in (v.centre[0] - r, v.centre[0] + r)]
    back = [v.centre[1] + v.body[1] + 2 * v.canal[1] + v.arch + v.spinous for v in inside]
    ys = [v.centre[1] - v.body[1] for v in inside] + back
    lo = np.array([min(xs), min(ys)]) - margin_mm
    hi = np.array([max(xs), max(ys)]) + margin_mm
    sy, sx = grid.spacing[1], grid.spacing[2]
    ny, nx = int(np.ceil((hi[1] - lo[1]) / sy)) + 1, int(np.ceil((hi[0] - lo[0]) / sx)) + 1
    return Grid((grid.shape[0], ny, nx), grid.spacing, (float(lo[0]), float(lo[1]), grid.origin[2]))


def _inside(vert: Vertebra, grid: Grid) -> bool:
    """True when a labelled vertebra lies in the grid's slices with a margin (its drooping spinous process too)."""
    if vert.level not in LEVELS:
        return False
    z0, z1 = grid.origin[2], grid.origin[2] + (grid.shape[0] - 1) * grid.spacing[0]
    h = vert.body[2]
    low = vert.centre[2] - h - vert.spinous * vert.spinous_slope - 0.5 * h - 8.0
    return bool(low > z0 and vert.centre[2] + h + 8.0 < z1)


def _candidates(anat: Anatomy, measurable: list[str], taken: list[str]) -> list[str]:
    """Levels that may fracture: both neighbours measurable, none of the three next to a fracture already placed."""
    order = [v.level for v in anat.vertebrae]
    out = []
    for level in measurable:
        i = order.index(level)
        if i == 0 or i + 1 >= len(order) or order[i - 1] not in measurable or order[i + 1] not in measurable:
            continue
        if any(abs(order.index(t) - i) < 2 for t in taken):
            continue
        out.append(level)
    return out


def _place_fractures(anat: Anatomy, measurable: list[str], design: ReportDesign,
                     rng: np.random.Generator) -> list[str]:
    wanted = list(design.fractures) if design.fractures is not None else [
        (int(rng.integers(1, 4)), str(rng.choice(FRACTURE_MORPHOLOGIES))) for _ in range(design.fracture_count)]
    placed: list[str] = []
    for grade, morphology in wanted:
        options = _candidates(anat, measurable, placed)
        if not options:
            break
        level = str(rng.choice(options))
        fracture_vertebra(anat, level, grade, morphology, rng)
        placed.append(level)
    return placed


def fracture_vertebra(anat: Anatomy, level: str, grade: int, morphology: str, rng: np.random.Generator) -> None:
    """Give ``level`` a fracture of ``grade`` and ``morphology``: a loss drawn in the grade, the shape solved for it."""
    loss = float(rng.uniform(*GRADE_LOSSES[grade]))
    vert = anat.vertebra(level)
    wall = _profile(WALL_POSITION)
    if morphology == "wedge":
        depth = loss
    elif morphology == "biconcave":
        depth = 1.0 - wall * (1.0 - loss)  # middle (1 - depth) against the intact walls
    else:  # crush: posterior against the neighbours' mean posterior height
        order = [v.level for v in anat.vertebrae]
        i = order.index(level)
        neighbours = np.mean([anat.vertebrae[i - 1].body[2], anat.vertebrae[i + 1].body[2]])
        depth = 1.0 - (1.0 - loss) * neighbours / vert.body[2]
    vert.fracture = Fracture(morphology, grade, round(loss, 4), float(depth))


def _place_lesions(anat: Anatomy, measurable: list[str], fractured: list[str], design: ReportDesign,
                   rng: np.random.Generator) -> None:
    """Designed lesions (one focus per kind) in measurable intact vertebrae, and no other."""
    for vert in anat.vertebrae:
        vert.lesions = []
    options = [lv for lv in measurable if lv not in fractured]
    chosen = list(rng.choice(options, size=min(design.lesions, len(options)), replace=False)) if options else []
    for n, level in enumerate(chosen):
        vert = anat.vertebra(str(level))
        vert.trabecular_hu = max(vert.trabecular_hu, float(rng.uniform(*LESION_BONE_HU)))  # a lytic focus must show
        if n < design.pedicle_lesions:
            sides = [["left"], ["right"], ["left", "right"]][int(rng.integers(3))]
            vert.lesions = [body_focus(vert, "lytic", rng, posterior_bias=True),
                            *(pedicle_focus(vert, side, rng) for side in sides)]
        else:
            kind = str(rng.choice(["lytic", "blastic", "mixed"]))
            kinds = ["lytic", "blastic"] if kind == "mixed" else [kind]
            vert.lesions = [body_focus(vert, k, rng) for k in kinds]


def body_focus(vert: Vertebra, kind: str, rng: np.random.Generator, posterior_bias: bool = False,
               room: float = 1.35) -> Lesion:
    """One focus inside the trabecular core, with ``room`` (a radius factor) to grow without leaving it."""
    a, b, h = (x - vert.cortex for x in vert.body)
    if vert.fracture is not None:
        h *= 1.0 - vert.fracture.depth
    r = float(rng.uniform(0.40, 0.55)) * min(a, b, h)
    radii = tuple(float(r * rng.uniform(0.85, 1.15)) for _ in range(3))
    free = [max(lim - room * rad, 0.0) for lim, rad in zip((a, b, h), radii)]
    centre = [float(rng.uniform(-0.5, 0.5) * f) for f in free]
    if posterior_bias:
        centre[1] = 0.5 * free[1]
    hu = rng.uniform(0, 80) if kind == "lytic" else rng.uniform(700, 1100)
    return Lesion(kind, tuple(centre), radii, float(hu))  # type: ignore[arg-type]


def pedicle_focus(vert: Vertebra, side: str, rng: np.random.Generator) -> Lesion:
    """A lytic focus filling a pedicle (left = +u), clipped to the posterior elements when painted."""
    cu, cv = vert.canal
    t, h = vert.arch, vert.body[2]
    sign = 1.0 if side == "left" else -1.0
    centre = (sign * (cu + 0.5 * t), vert.body[1] + cv - 3.0, -0.1 * h)
    radii = (0.9 * t, 7.0, 0.55 * h)
    return Lesion("lytic", centre, radii, float(rng.uniform(0, 60)), site="posterior")


# ----------------------------------------------------------------------------- truth
def _profile(rv: float) -> float:
    """The intact body's half height at relative depth ``rv`` on its mid-sagittal plane, per unit half height."""
    return float((1.0 - rv ** 2) ** 0.125)


def truth_heights(vert: Vertebra) -> dict[str, float]:
    """Anterior, middle and posterior heights (mm) of the drawn shape, at 85, 50, 15 % of its depth."""
    h = vert.body[2]
    out = {}
    for name, fraction in POSITIONS.items():
        rv = 1.0 - 2.0 * fraction  # +v is posterior: 15 % of the depth from the back is v = 0.7 b
        scale = 1.0 if vert.fracture is None else float(vert.fracture.scale(np.array(0.0), np.array(rv)))
        out[name] = 2.0 * h * scale * _profile(rv)
    return out


def genant_truth(heights: dict[str, float], neighbour_posteriors: list[float]) -> tuple[int, str | None, float]:
    """Grade, morphology and loss (%) of the truth heights, by the Genant limits (the report's definition)."""
    reductions = {"wedge": 1 - heights["anterior"] / heights["posterior"],
                  "biconcave": 1 - heights["middle"] / max(heights["posterior"], heights["anterior"])}
    if neighbour_posteriors:
        reductions["crush"] = 1 - heights["posterior"] / float(np.mean(neighbour_posteriors))
    morphology, loss = max(reductions.items(), key=lambda kv: kv[1])
    loss = max(loss, 0.0)
    grade = next((g for limit, g in GENANT_LIMITS if loss >= limit), 0)
    return grade, morphology if grade else None, round(100 * loss, 2)


def add_report_truth(phantom: Phantom, anat: Anatomy) -> None:
    """Add the report's truth to every labelled vertebra of ``phantom.truth`` (see the module's docstring)."""
    voxel_ml = float(np.prod(phantom.grid.spacing)) / 1000.0
    cut = _cut_levels(phantom.labels)
    present = [v for v in anat.vertebrae if v.level in phantom.truth]
    heights = {v.level: truth_heights(v) for v in present if v.level not in cut}
    for index, vert in enumerate(present):
        record = phantom.truth[vert.level]
        record["trabecular_hu"] = round(vert.trabecular_hu + anat.hu_offset, 1)
        record["cut"] = vert.level in cut
        record["lesion_volume_ml"] = round(record["body_lesion_voxels"] * voxel_ml, 3)
        record["posterior_lesion_volume_ml"] = round(record["posterior_lesion_voxels"] * voxel_ml, 3)
        record["posterior_involvement"] = sorted({"left" if les.centre[0] > 0 else "right"
                                                  for les in vert.lesions if les.site == "posterior"})
        record["fracture"] = None if vert.fracture is None else asdict(vert.fracture)
        if vert.level in cut:
            record.update(heights_mm=None, genant_grade=None, genant_morphology=None, height_loss_pct=None)
        else:
            neighbours = [heights[n.level]["posterior"] for n in present[max(index - 1, 0):index + 2]
                          if n is not vert and n.level in heights]
            grade, morphology, loss = genant_truth(heights[vert.level], neighbours)
            designed = vert.fracture.grade if vert.fracture else 0
            if grade != designed:
                raise AssertionError(f"phantom {phantom.seed} {vert.level}: the shape gives grade {grade}, "
                                     f"designed {designed} (a design error)")
            record.update(heights_mm={k: round(x, 3) for k, x in heights[vert.level].items()},
                          genant_grade=grade, genant_morphology=morphology, height_loss_pct=loss)
        record["sins"] = sins_truth(vert.level, record)


def _cut_levels(labels: np.ndarray) -> set[str]:
    boxes = ndimage.find_objects(labels)
    return {LEVELS[i] for i, box in enumerate(boxes) if box is not None
            and any(s.start == 0 or s.stop == n for s, n in zip(box, labels.shape))}


def sins_truth(level: str, record: dict) -> dict | None:
    """The SINS CT components' points from the truth: only for a vertebra with a lesion."""
    lesion = record["lesion"]
    if lesion not in QUALITY:
        return None
    share = record["body_lesion_voxels"] / max(record["body_voxels"], 1)
    return {"location": location_score(level)[0], "bone_lesion_quality": QUALITY[lesion],
            "vertebral_body_collapse": collapse_score(record["height_loss_pct"], record["genant_grade"], share)[0],
            "posterolateral_involvement": posterolateral_score(record["posterior_involvement"])[0]}


# ----------------------------------------------------------------------------- follow-up pairs
@dataclass(frozen=True)
class FollowUp:
    """How the follow-up differs: lesion volume growth factors, one new lesion, one new collapse, days later."""

    growth: tuple[float, float] = (1.3, 2.2)
    new_lesions: int = 1
    new_collapse: tuple[int, str] | None = None  # (grade, morphology); None: drawn (grade 2-3, wedge or crush)
    days: int = 120
    shift_mm: float = 5.0


PAIR_DESIGN = ReportDesign(fracture_count=1)
"""A baseline with one fracture, so that a level is left for the new collapse."""


def followup_pair(seed: int, design: ReportDesign = PAIR_DESIGN, followup: FollowUp = FollowUp(),
                  fov: str | None = None, spacing=None) -> tuple[Phantom, Phantom]:
    """A baseline and its follow-up: the same patient and anatomy, later, with the changes of ``followup``."""
    rng, anat, kind, grid, extra = _designed(seed, design, fov, spacing)
    later = copy.deepcopy(anat)
    own = np.random.default_rng([seed, REPORT_STREAM, 1])
    measurable = [v.level for v in anat.vertebrae if _inside(v, grid)]
    growth = _grow_lesions(later, own, followup.growth)
    fractured = list(extra["report_design"]["fractured"])
    grade, morphology = followup.new_collapse or (int(own.integers(2, 4)), str(own.choice(["wedge", "crush"])))
    options = _candidates(later, measurable, fractured)
    clean = [lv for lv in options if not later.vertebra(lv).lesions] or options  # else a pathologic collapse
    collapsed = str(own.choice(clean)) if clean else None
    if collapsed:
        fracture_vertebra(later, collapsed, grade, morphology, own)
    free = [lv for lv in measurable if not later.vertebra(lv).lesions and lv != collapsed]
    new = [str(lv) for lv in own.choice(free, size=min(followup.new_lesions, len(free)), replace=False)]
    for level in new:
        _lesion_bone(anat, later, level, own)
        later.vertebra(level).lesions = [body_focus(later.vertebra(level), "lytic", own)]
    shift = own.uniform(-followup.shift_mm, followup.shift_mm, 2)
    moved = Grid(grid.shape, grid.spacing, (grid.origin[0] + shift[0], grid.origin[1] + shift[1],
                                            grid.origin[2] + float(own.uniform(-0.5, 0.5)) * grid.spacing[0]))
    baseline = _render(seed, anat, kind, grid, rng, extra)
    design_later = {"report_design": {**extra["report_design"], "fractured": fractured + ([collapsed] if collapsed else [])}}
    follow = _render(seed, later, kind, moved, np.random.default_rng([seed, REPORT_STREAM, 2]), design_later,
                     visit=1, days=followup.days)
    follow.extra_truth["change"] = change_truth(baseline, follow, growth, new, collapsed)
    return baseline, follow


def _lesion_bone(anat: Anatomy, later: Anatomy, level: str, rng: np.random.Generator) -> None:
    """Bone a new lytic focus shows in (``LESION_BONE_HU``), at both visits: its HU does not change between them.

    The baseline's designed lesions get this bone already; without it a new focus of 0-80 HU
    could fall in bone of 60 HU, which no reader or classifier would call lytic.
    """
    hu = max(anat.vertebra(level).trabecular_hu, float(rng.uniform(*LESION_BONE_HU)))
    anat.vertebra(level).trabecular_hu = later.vertebra(level).trabecular_hu = hu


def _grow_lesions(anat: Anatomy, rng: np.random.Generator, growth: tuple[float, float]) -> dict[str, float]:
    """Scale every focus of each lesion vertebra by one drawn volume factor (radii by its cube root)."""
    factors = {}
    for vert in anat.vertebrae:
        if vert.lesions and vert.level in LEVELS:
            factor = float(rng.uniform(*growth))
            factors[vert.level] = round(factor, 3)
            vert.lesions = [Lesion(les.kind, les.centre, tuple(r * factor ** (1 / 3) for r in les.radii), les.hu,
                                   les.site) for les in vert.lesions]
    return factors


def change_truth(baseline: Phantom, follow: Phantom, growth: dict[str, float], new: list[str],
                 collapsed: str | None) -> dict:
    """The truth of the follow-up's change per level present in both: lesion volume (body), heights, collapse."""
    vertebrae = {}
    for level in [lv for lv in follow.truth if lv in baseline.truth]:
        before, now = baseline.truth[level], follow.truth[level]
        v0, v1 = before["lesion_volume_ml"], now["lesion_volume_ml"]
        record = {"lesion_volume_before_ml": v0, "lesion_volume_now_ml": v1,
                  "lesion_volume_change_ml": round(v1 - v0, 3),
                  "lesion_volume_change_pct": round(100.0 * (v1 - v0) / v0, 2) if v0 > 0 else None,
                  "designed_growth": growth.get(level),
                  "lesion_change": ("new" if v1 > 0 and v0 == 0 else "gone" if v0 > 0 and v1 == 0
                                    else "persisting" if v0 > 0 else "none"),
                  "new_collapse": level == collapsed}
        if before["heights_mm"] and now["heights_mm"]:
            record["height_change_mm"] = {k: round(now["heights_mm"][k] - before["heights_mm"][k], 3)
                                          for k in POSITIONS}
        vertebrae[level] = record
    return {"days": follow.days_after_baseline, "vertebrae": vertebrae, "new_lesions": sorted(new),
            "new_collapse": [collapsed] if collapsed else []}
