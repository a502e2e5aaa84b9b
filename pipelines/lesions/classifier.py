"""The lesion rule: none, lytic, blastic, mixed or indeterminate, judged against the vertebra's own bone.

Real trabecular bone is not uniform: a normal adult vertebral body can read 60 HU at its
median with a twentieth of its voxels below -75 HU (fatty marrow) and an SD of 150-180 HU
between voxels (``docs/REAL_CT_NOTES.md``). A fixed HU band calls such bone lytic. So the
rule asks whether a *compact focus of several millimetres* stands out from *this
vertebra's own distribution*, at a smoothing scale tied to the scan's noise and slices:

1. **No call on a partial vertebra.** A mask that reaches the first or last slice of the
   CT it is given was cut by the scan (callers pass the vertebra's box grown by a margin
   and clipped to the scan): the rest of it, and maybe its lesion, is outside, and the cut
   face reads like a focus. Too small a body (``min_body_ml``) or too small a deep
   trabecular core (blastic zone under ``min_core_ml``: a mask on cortex or posterior
   elements, not on a body) is the same. All give ``indeterminate``; the measurements of
   what is there are still reported (``visible_part_class``).
2. **Zones** (``zones.py``): surface onto the cortex, body by an opening of
   ``body_opening_mm``, the lytic zone (less ``lytic_shell_mm``) and the blastic zone
   (less ``cortex_mm``, away from the posterior elements by ``elements_margin_mm``: the
   parts of the mask off the body that hold a ball of ``elements_min_mm``; 0, the default,
   counts every part, thin rims the opening leaves included), each less ``margin_voxels``
   voxels per axis.
3. **Scale.** A Gaussian of sigma ``s`` mm with ``s`` the smallest that brings white noise
   of the scan's SD (``noise_hu``, measured once per series on its flat soft tissue,
   ``noise.py``) down to ``smoothed_noise_hu``, within ``smooth_min_mm`` ..
   ``smooth_max_mm``. Along z a thick slice has already averaged over its thickness, so
   only what it lacks of ``s`` is added there.
4. **Reference.** The vertebra's own bone at that scale: the densest half of the
   smoothed lytic-zone values up to ``reference_max_hu`` (the shortest HU interval that
   holds half of them); its middle is the reference and its length / 1.349 the spread,
   kept within ``spread_floor_hu`` .. ``spread_cap_hu``. A lytic lesion fills one tail and
   a blastic one the other without moving it. A voxel's z-score is its distance from the
   reference in spreads.
5. **Foci.** Hypodense: lytic-zone voxels at least ``voxel_z`` spreads and
   ``lytic_delta`` below the reference (``lytic_delta_hu``; in light, osteoporotic bone,
   where no soft tissue lies that far below it, only below ``light_floor_hu`` and at
   least ``light_min_delta_hu`` under the bone); hyperdense: voxels of the body less its
   cortex shell at least ``voxel_z`` spreads and ``blastic_delta_hu`` above it and above
   ``blastic_min_hu``, in a focus centred in the blastic zone (not at the pedicle roots),
   or centred nearer the posterior elements when it is certain (``_certain``: evidence
   ``call_thickness_mm`` thick, its core ``near_elements_z`` spreads off; the pedicle
   roots' dense bone is thin).
   Each kind is measured three times: a seeding look, then twice with the reference
   measured without the focus found before (and without the other kind's focus: mixed
   lesions), so that a lesion filling a third of a small body does not widen the spread
   it is judged by; a "focus" that would leave less than half the zone (``_without``) is
   the bone itself, read against a reference a lesion has raised, and is not left out.
   A focus is measured: volume (mm3), thickness (the diameter of the largest ball inside
   it: a compact lesion is thick, a vessel, an endplate rim or noise speckle is not), compactness (thickness / equivalent diameter), and its *core* (voxels
   at least half its inscribed radius deep): mean z and unsmoothed mean HU.
6. **Decision per kind.** A focus is *evidence* when it has ``min_focus_mm3``,
   ``call_thickness_mm``, a core z of ``call_z`` and a core ``lytic_call_hu`` below the
   reference reading at most ``lytic_max_hu`` (soft tissue), or ``blastic_call_hu`` above
   it reading at least ``blastic_min_hu``; a core ``strong_z`` spreads off (quiet,
   uniform bone) needs only ``strong_thickness_mm`` and ``lytic_delta_hu`` /
   ``blastic_delta_hu`` (a hypodense one reading at most ``strong_lytic_max_hu``). A focus
   is *weak* when it reaches ``weak_focus_mm3``, ``weak_thickness_mm`` and ``weak_z``
   only. Evidence of both kinds is mixed, of one kind lytic or blastic; weak evidence alone
   is ``indeterminate``, never a lesion; nothing is ``none``.

   6b. **Evidence by shape** (hypodense only, ``_by_shape``): the deciding hypodense focus
   is outlined again where the smoothed bone lies ``outline_fraction`` of the way from the
   reference to its core (its own half-contrast edge, slices interpolated to
   ``outline_fine_mm``), on the whole body: the lytic zone's shell is one slice at 3 mm
   and the snapping peels the hypodense slice beyond it, which cut a lesion at the endplate
   to 3-5 mm. When that outline is ``compact_thickness_mm`` thick, of
   compactness ``compact_min`` and ``min_focus_mm3``, a core ``compact_z`` spreads and
   ``lytic_delta_hu`` below the reference reading soft tissue (``compact_min_hu`` ..
   ``lytic_max_hu``) is evidence too. Normal bone's deep hypodense regions are small, and
   at half their contrast they run out into the bone's irregular low tail; a lesion of
   10 mm or more stays a thick, compact ball (``benchmarks/lesion_real_bone.py``: every
   normal thoracic body's outline at most 5.3 mm thick, lesions 6-13 mm).

   6c. **Beside a certain blastic focus** (``_beside_blastic``): where the hyperdense focus
   is evidence ``mixed_blastic_z`` spreads off, a hypodense focus of ``min_focus_mm3``,
   ``mixed_thickness_mm`` and ``mixed_lytic_z`` spreads, ``lytic_delta_hu`` below the
   reference with a core of soft tissue (``compact_min_hu`` .. ``mixed_lytic_max_hu``) is
   evidence too: the lytic part of a mixed lesion, thin at 3 mm slices. It only tells mixed
   from blastic, so it cannot call a normal vertebra a lesion.

Measured on real bone with lesions inserted (``benchmarks/lesion_real_bone.py``): a
lytic lesion is told from normal bone by its HU below the bone and by its outline's
shape (step 6b) more than by its z-score (normal real bone has hypodense regions 2.5-2.8
spreads and up to ~106 HU below its reference, but thin: at most 4 mm at the voxel
threshold, 5 mm at half contrast). In osteoporotic bone (the TPTBox L3 reads ~55 HU) a
soft-tissue lesion has little contrast to give: the light-bone delta (``lytic_delta``)
lets a compact 13 mm ball of 10 HU there be called (at two of the three places
``tests/test_lesions_real_bone.py`` tries), while one of 20-50 HU, within a spread or two
of the bone, is not found; that is the limit of any rule on the CT alone.

Every deciding number is in ``LesionFinding.features`` with a one-line ``reason``; the
node configuration's dict goes through ``LesionThresholds.from_dict``. Defaults were set
on the phantom tests (seeds 3 and 10) and on the real scans with inserted lesions of
``benchmarks/lesion_real_bone.py --seed 0``; those of step 6b and ``elements_min_mm`` on
``--seed 2`` and ``--seed 3`` only (those of step 6c and the outline on the whole body on
``--seed 2``, ``3`` and ``4``; the light-bone delta, ``near_elements_z`` and ``_without``
on seeds 1-4), seeds 5 and 6 held out for the figures (the same real vertebrae are in
every seed: there is no real scan held out; a new seed draws new lesions only).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Protocol

import numpy as np
from scipy import ndimage

from pipelines.errors import LesionConfigError
from pipelines.lesions.noise import estimate_noise
from pipelines.lesions.zones import (bounding_box, farther_than, posterior_elements, snap_to_cortex, trabecular_core,
                                     vertebral_body)

LESION_CLASSES = ["none", "lytic", "blastic", "mixed", "indeterminate"]
"""The classes a vertebra can get, in the order reports list them. ``indeterminate`` is no lesion call."""

LESION_KINDS = ("lytic", "blastic", "mixed")
"""The classes that report a lesion."""

SEED_Z = 1.5
"""Voxel threshold (spreads) of the first, seeding look for a focus (``_judge``)."""


@dataclass(frozen=True)
class LesionThresholds:
    """The numbers of the rule (module docstring), in mm, mm3, ml, HU or robust z-scores."""

    # zones (zones.py)
    peel_below_hu: float = 150.0     # outermost mask voxels below this are not bone
    grow_above_hu: float = 350.0     # neighbours of the mask above this are cortex
    body_opening_mm: float = 5.0     # ball that fits the body, not the pedicles
    cortex_mm: float = 2.5           # blastic zone: shell left out, cortex (<= 2 mm) plus blur
    margin_voxels: float = 1.0       # both zones: one more voxel per axis, for boundaries one voxel off
    elements_margin_mm: float = 6.0  # blastic zone: distance kept from the posterior elements ...
    elements_min_mm: float = 0.0     # ... the parts of the mask off the body that hold a ball of this radius (0: all;
    # 1.5 gained one mixed lesion in 33 at 3 mm on real bone, but made the node's false T8 call on the real chest CT)
    near_elements_z: float = 5.0     # a hyperdense focus of evidence centred nearer them counts when its core is this
    # many spreads off and it is call_thickness_mm thick (``_certain``)
    lytic_shell_mm: float = 1.0      # lytic zone: shell left out
    min_body_ml: float = 3.0         # a smaller body is too little bone to judge
    min_core_ml: float = 0.5         # a smaller blastic zone (deep trabecular core) is too little bone to judge
    # scale and reference
    smooth_min_mm: float = 1.0       # Gaussian sigma: at least this ...
    smooth_max_mm: float = 3.0       # ... at most this ...
    smoothed_noise_hu: float = 5.0   # ... and enough to bring white noise of the scan's SD down to this
    reference_max_hu: float = 350.0  # the reference is measured on values up to this (denser is no trabecular bone)
    spread_floor_hu: float = 15.0    # the vertebra's spread is taken as at least this ...
    spread_cap_hu: float = 60.0      # ... and at most this (normal bone varies less at this scale)
    # focus voxels
    voxel_z: float = 1.5             # this many spreads from the reference ...
    lytic_delta_hu: float = 60.0     # ... and, hypodense, at least this far below it (less in light bone: the next two)
    light_floor_hu: float = 25.0     # light bone: a hypodense focus need only read below this (soft tissue) ...
    light_min_delta_hu: float = 25.0  # ... and at least this far below the reference (``lytic_delta``)
    blastic_delta_hu: float = 150.0  # ... or, hyperdense, at least this far above it
    blastic_min_hu: float = 300.0    # ... and above this
    # evidence: a lesion call
    min_focus_mm3: float = 50.0      # a focus this large ...
    call_thickness_mm: float = 4.0   # ... this thick ...
    call_z: float = 2.0              # ... its core this many spreads from the reference ...
    lytic_call_hu: float = 110.0     # ... and this many HU below it (hypodense) ...
    lytic_max_hu: float = 100.0      # ... reading at most this (soft tissue, not bone)
    blastic_call_hu: float = 200.0   # ... or this many HU above it (hyperdense, and above blastic_min_hu)
    strong_z: float = 4.0            # a core this many spreads off needs only the deltas above ...
    strong_thickness_mm: float = 2.5  # ... and this thickness, a hypodense core reading at most
    strong_lytic_max_hu: float = 150.0  # ... this
    # evidence by shape: a compact hypodense focus (its own outline, step 6b)
    outline_fraction: float = 0.5    # the focus outlined where the bone is this share of the way to its core
    compact_thickness_mm: float = 6.0  # that outline this thick ...
    compact_min: float = 0.55        # ... this compact (thickness / equivalent diameter) ...
    compact_z: float = 1.5           # ... the core this many spreads and lytic_delta_hu below the reference,
    compact_min_hu: float = 0.0      # ... reading soft tissue: at least this and at most lytic_max_hu
    outline_fine_mm: float = 1.0     # the outline is drawn on slices interpolated to at most this (thick slices)
    # evidence beside a certain blastic focus: the lytic part of a mixed lesion (step 6c)
    mixed_blastic_z: float = 6.0     # a hyperdense focus of evidence this many spreads off is certain ...
    mixed_lytic_z: float = 1.5       # ... then a hypodense focus this many spreads and lytic_delta_hu below ...
    mixed_thickness_mm: float = 2.5  # ... this thick, of min_focus_mm3 ...
    mixed_lytic_max_hu: float = 45.0  # ... its core reading soft tissue (compact_min_hu up to this) makes it mixed
    # weak evidence: indeterminate
    weak_focus_mm3: float = 20.0     # this large ...
    weak_thickness_mm: float = 2.5   # ... this thick ...
    weak_z: float = 2.5              # ... and this far (in spreads, HU not asked)

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise LesionConfigError(f"lesion threshold {f.name} must be a number, got {value!r}")
        for name in ("body_opening_mm", "min_focus_mm3", "weak_focus_mm3", "smooth_max_mm", "smoothed_noise_hu",
                     "spread_floor_hu", "call_z", "weak_z", "outline_fraction", "outline_fine_mm"):
            if getattr(self, name) <= 0:
                raise LesionConfigError(f"lesion threshold {name} must be positive, got {getattr(self, name)}")
        for name in ("cortex_mm", "margin_voxels", "elements_margin_mm", "elements_min_mm", "lytic_shell_mm", "smooth_min_mm",
                     "lytic_delta_hu", "light_min_delta_hu", "blastic_delta_hu", "min_body_ml", "voxel_z",
                     "call_thickness_mm",
                     "lytic_call_hu", "blastic_call_hu", "min_core_ml", "strong_z", "strong_thickness_mm",
                     "strong_lytic_max_hu", "compact_thickness_mm", "compact_min", "compact_z",
                     "weak_thickness_mm", "mixed_blastic_z", "mixed_lytic_z", "mixed_thickness_mm",
                     "near_elements_z"):
            if getattr(self, name) < 0:
                raise LesionConfigError(f"lesion threshold {name} must not be negative, got {getattr(self, name)}")
        for low, high in (("smooth_min_mm", "smooth_max_mm"), ("spread_floor_hu", "spread_cap_hu"),
                          ("weak_focus_mm3", "min_focus_mm3"), ("weak_thickness_mm", "call_thickness_mm")):
            if getattr(self, low) > getattr(self, high):
                raise LesionConfigError(f"lesion thresholds: {low} ({getattr(self, low)}) must not be above "
                                        f"{high} ({getattr(self, high)})")
        if self.outline_fraction >= 1:
            raise LesionConfigError(f"lesion threshold outline_fraction must be below 1, got {self.outline_fraction}")

    @classmethod
    def from_dict(cls, values: Mapping | None) -> "LesionThresholds":
        """Defaults overridden by ``values`` (the node configuration's dict); unknown keys are an error."""
        if values is not None and not isinstance(values, Mapping):
            raise LesionConfigError(f"lesion thresholds must map names to numbers, got {type(values).__name__}")
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise LesionConfigError(f"unknown lesion threshold(s) {', '.join(map(str, unknown))}; "
                                    f"known: {', '.join(sorted(known))}")
        return cls(**values)


@dataclass(frozen=True)
class LesionFinding:
    """The class of one vertebra (one of ``LESION_CLASSES``) and the measurements behind it."""

    kind: str
    features: dict


class LesionClassifier(Protocol):
    """What the pipeline needs from a lesion classifier: one vertebra in, one finding out."""

    def classify(self, hu: np.ndarray, mask: np.ndarray, spacing, noise_hu: float | None = None) -> LesionFinding:
        """Classify the vertebra ``mask`` (bool, same grid as ``hu``) of a CT with ``spacing`` (sz, sy, sx) mm.

        ``noise_hu``: the series' noise SD (``estimate_noise``), None when unknown.
        """
        ...


@dataclass(frozen=True)
class Outline:
    """A focus outlined at ``outline_fraction`` of its own contrast: the lesion's edge, not the voxel threshold's."""

    level_hu: float
    volume_mm3: float
    thickness_mm: float
    compactness: float

    def describe(self) -> dict:
        return {"level_hu": _r(self.level_hu, 1), "mm3": _r(self.volume_mm3, 1),
                "thickness_mm": _r(self.thickness_mm, 1), "compactness": _r(self.compactness, 2)}


@dataclass(frozen=True)
class Focus:
    """One connected focus of one kind, as the rule measures it."""

    voxels: np.ndarray  # bool mask on the box
    volume_mm3: float
    thickness_mm: float
    compactness: float
    core_z: float
    mean_hu: float
    core_hu: float
    core_texture_hu: float  # SD of the unsmoothed values in the core (texture and noise)
    reference_hu: float  # the vertebra's bone it was judged against (without the focus)
    spread_hu: float
    grade: str  # "evidence" | "weak" | "below"
    deepest: tuple[int, int, int]  # its deepest voxel (centre of the largest inscribed ball), box index
    outline: Outline | None = None  # its own outline (step 6b), measured for the deciding focus only
    by_shape: bool = False  # evidence from the outline's shape (step 6b), not from the contrast of step 6
    beside_blastic: bool = False  # evidence as the lytic part of a mixed lesion (step 6c)
    near_elements: bool = False  # hyperdense, centred off the blastic zone (nearer the posterior elements), and certain

    def describe(self) -> dict:
        return {"mm3": _r(self.volume_mm3, 1), "thickness_mm": _r(self.thickness_mm, 1),
                "compactness": _r(self.compactness, 2), "core_z": _r(self.core_z, 2),
                "mean_hu": _r(self.mean_hu, 1), "core_hu": _r(self.core_hu, 1),
                "core_texture_hu": _r(self.core_texture_hu, 1), "reference_hu": _r(self.reference_hu, 1),
                "spread_hu": _r(self.spread_hu, 1), "grade": self.grade,
                "outline": self.outline.describe() if self.outline else None, "evidence_by_shape": self.by_shape,
                "evidence_beside_blastic": self.beside_blastic, "near_elements": self.near_elements}


class ThresholdClassifier:
    """The rule of the module docstring; stateless apart from its thresholds."""

    def __init__(self, thresholds: LesionThresholds | Mapping | None = None):
        if thresholds is None or isinstance(thresholds, Mapping):
            thresholds = LesionThresholds.from_dict(thresholds)
        self.t = thresholds

    def classify(self, hu: np.ndarray, mask: np.ndarray, spacing, noise_hu: float | None = None) -> LesionFinding:
        """Classify the vertebra ``mask`` (bool, same grid as ``hu``) of a CT with ``spacing`` (sz, sy, sx) mm.

        ``noise_hu`` is the series' noise SD in HU (``estimate_noise``, once per series);
        without it the noise is measured on the flat tissue of ``hu`` itself, or taken from
        the vertebra's spread when there is none. ``features``: the zones (ml), ``partial``,
        the scale, the reference and spread, both thresholds (HU), the deciding hypodense
        and hyperdense focus (volume, thickness, compactness, mean z and HU, grade), the
        ``thresholds`` used and a one-line ``reason``.
        """
        spacing = _check(hu, mask, spacing)
        t = self.t
        mask = np.asarray(mask, bool)
        box = bounding_box(mask, margin=1)
        if box is None:
            return LesionFinding("none", {"reason": "empty mask", "partial": False, "body_ml": 0.0,
                                          "thresholds": asdict(t)})
        noise, noise_source = _noise(hu, spacing, noise_hu)
        partial = _cut_by_scan(mask)
        sigma_mm = smoothing_sigma_mm(noise, spacing, t)
        raw = hu[box].astype(np.float32)
        smooth = ndimage.gaussian_filter(raw, _sigma_voxels(sigma_mm, spacing), mode="nearest")
        zones, features = _zones(mask[box], smooth, spacing, t)
        features.update({"partial": partial, "noise_hu": noise, "noise_source": noise_source,
                         "smooth_sigma_mm": _r(sigma_mm, 2)})
        reference_zone = zones["lytic"]
        if not reference_zone.any():
            features.update(reason="no trabecular bone left to measure" + (" (partial vertebra)" if partial else ""),
                            thresholds=asdict(t))
            return LesionFinding("indeterminate", features)
        reference, spread = _reference(smooth[reference_zone], t)
        # A lesion of one kind is left out of the reference the other kind is judged by (mixed lesions).
        hyper, _ = _judge("hyperdense", zones, reference_zone, smooth, raw, spacing, sigma_mm, t)
        without_hyper = _without(reference_zone, _region(hyper, spacing, sigma_mm, t))
        hypo, lytic_below = _judge("hypodense", zones, without_hyper, smooth, raw, spacing, sigma_mm, t)
        without_hypo = _without(reference_zone, _region(hypo, spacing, sigma_mm, t))
        hyper, blastic_above = _judge("hyperdense", zones, without_hypo, smooth, raw, spacing, sigma_mm, t)
        hypo = _beside_blastic(hypo, hyper, t)
        features.update(_focus_features(reference, spread, lytic_below, blastic_above, hypo, hyper))
        kind = _decide(hypo, hyper)
        why = _no_call(partial, features, t)
        if why:
            features["visible_part_class"] = kind
            kind = "indeterminate"
            features["reason"] = f"{why}; no lesion call (the visible part reads {features['visible_part_class']})"
        else:
            features["reason"] = _reason(kind, hypo, hyper, features, t)
        features["thresholds"] = asdict(t)
        return LesionFinding(kind, features)


def _no_call(partial: bool, features: dict, t: LesionThresholds) -> str | None:
    """Why this vertebra gets no lesion call whatever it shows, or None.

    Cut by the scan; too small a body; or too small a deep trabecular core (blastic zone):
    a mask that is not on a vertebral body (cortex, posterior elements, a misplaced label)
    has no such core, and its dense bone would pass for sclerosis.
    """
    if partial:
        return "partial vertebra: cut by the first or last slice of the scan"
    if features["body_ml"] < t.min_body_ml:
        return f"too little bone: body {features['body_ml']:g} ml, below {t.min_body_ml:g} ml"
    if features["blastic_zone_ml"] < t.min_core_ml:
        return (f"too little trabecular bone to judge (core {features['blastic_zone_ml']:g} ml, below "
                f"{t.min_core_ml:g} ml): the mask may not lie on a vertebral body")
    return None


def smoothing_sigma_mm(noise_hu: float | None, spacing, t: LesionThresholds) -> float:
    """The Gaussian sigma (mm) that brings white noise of ``noise_hu`` down to ``smoothed_noise_hu``, clamped.

    White noise of SD n on voxels of volume v, smoothed by an isotropic Gaussian of sigma s,
    keeps an SD of n * sqrt(v / (2 sqrt(pi) s)^3); solved for s. Unknown noise takes the
    smallest sigma (the vertebra's own spread still sets the z-scores).
    """
    if noise_hu is None or noise_hu <= 0:
        return t.smooth_min_mm
    voxel_mm3 = float(np.prod(spacing))
    sigma = (voxel_mm3 * (noise_hu / t.smoothed_noise_hu) ** 2) ** (1 / 3) / (2 * math.sqrt(math.pi))
    return float(min(max(sigma, t.smooth_min_mm), t.smooth_max_mm))


def _sigma_voxels(sigma_mm: float, spacing) -> list[float]:
    """Per-axis sigma in voxels; along z a thick slice has already averaged over its thickness (variance sz^2 / 12)."""
    sz, sy, sx = spacing
    extra_z = math.sqrt(max(sigma_mm ** 2 - sz ** 2 / 12.0, 0.0))
    return [extra_z / sz, sigma_mm / sy, sigma_mm / sx]


def _noise(hu: np.ndarray, spacing, noise_hu: float | None) -> tuple[float | None, str]:
    """The noise SD to use and where it came from."""
    if noise_hu is not None:
        if not np.isfinite(noise_hu) or noise_hu <= 0:
            raise ValueError(f"the series noise must be a positive number of HU, got {noise_hu!r}")
        return float(noise_hu), "series"
    estimate = estimate_noise(hu, spacing, slice_step=1)
    return estimate.sd_hu, ("vertebra box" if estimate.sd_hu is not None else "unknown")


def _cut_by_scan(mask: np.ndarray) -> bool:
    """True when the mask reaches the first or last slice of its array: the scan cut the vertebra."""
    return bool(mask[0].any() or mask[-1].any())


def _zones(given: np.ndarray, smooth: np.ndarray, spacing, t: LesionThresholds) -> tuple[dict, dict]:
    """The lytic and blastic zones (``zones.py``), and the volumes that describe them."""
    mask = snap_to_cortex(given, smooth, t.grow_above_hu, t.peel_below_hu)
    body = vertebral_body(mask, spacing, t.body_opening_mm)
    lytic = trabecular_core(body, spacing, t.lytic_shell_mm, t.margin_voxels)
    core = trabecular_core(body, spacing, t.cortex_mm, t.margin_voxels)
    blastic = core & farther_than(posterior_elements(mask, body, spacing, t.elements_min_mm), spacing,
                                  t.elements_margin_mm)
    voxel_ml = float(np.prod(spacing)) / 1000
    features = {"surface_voxels_peeled": int((given & ~mask).sum()), "surface_voxels_grown": int((mask & ~given).sum()),
                "body_ml": _r(body.sum() * voxel_ml, 2), "lytic_zone_ml": _r(lytic.sum() * voxel_ml, 2),
                "blastic_zone_ml": _r(blastic.sum() * voxel_ml, 2)}
    features["reference_zone_ml"] = _r(core.sum() * voxel_ml, 2)
    return {"lytic": lytic, "blastic": blastic, "reference": core, "body": body}, features


def _reference(values: np.ndarray, t: LesionThresholds) -> tuple[float, float]:
    """Centre and robust spread (at least ``spread_floor_hu``) of the vertebra's normal bone: its densest half.

    The shortest HU interval that holds half of the values (the "shorth") lies in the bulk
    of the bone even when a lytic lesion fills one tail and a blastic one the other, each up
    to a third of the body: its middle value is the reference and its length / 1.349 the
    spread (the SD, were the bone's values normal). Values above ``reference_max_hu`` are
    no trabecular bone (a blastic lesion, cortex) and are left out first.
    """
    band = values[values <= t.reference_max_hu]
    ordered = np.sort((band if band.size >= 20 else values).astype(np.float64))
    half = max(ordered.size // 2, 1)
    if ordered.size < 2:
        return float(ordered[0]), t.spread_floor_hu
    lengths = ordered[half:] - ordered[:ordered.size - half]
    start = int(np.argmin(lengths))
    centre = float(np.median(ordered[start:start + half + 1]))
    return centre, min(max(float(lengths[start]) / 1.349, t.spread_floor_hu), t.spread_cap_hu)


MIN_KEPT = 0.5
"""The share of the reference zone a focus left out of it must leave (``_without``)."""


def _without(zone: np.ndarray, region: np.ndarray | bool) -> np.ndarray:
    """``zone`` less a focus's ``region``, unless that would leave less than ``MIN_KEPT`` of it: then ``zone`` whole.

    A lesion fills at most about a third of a body (``_reference``). A "focus" whose region
    takes more than half of the zone is the vertebra's own bone judged against a
    reference that a lesion of the other kind has raised (a blastic ball of 15 mm in a
    thoracic body of 10 ml lifts the densest half towards its halo, and the normal bone
    then reads hypodense); leaving it out would leave the reference nothing but that halo,
    or too little bone to measure, and lose the lesion.
    """
    kept = zone & ~region
    return kept if kept.sum() >= MIN_KEPT * zone.sum() else zone


def _judge(side: str, zones: dict, reference_zone: np.ndarray, smooth: np.ndarray, raw: np.ndarray, spacing,
           sigma_mm: float, t: LesionThresholds) -> tuple[Focus | None, float]:
    """The deciding focus of one side (hypodense or hyperdense) and its HU threshold.

    Hypodense foci are outlined in the lytic zone. Hyperdense ones are outlined in the body
    less its cortex shell and count only when their centre (deepest voxel) lies in the
    blastic zone: a focus centred at the pedicle roots is that dense
    bone, not a lesion, while a lesion near them is still measured whole.

    Measured three times. The first outlines a *seed* with a looser voxel threshold
    (``SEED_Z`` spreads); the next two measure the vertebra's reference without the focus
    found before (grown by its blurred rim, ``_region``), so that a lesion filling a third
    of a small body does not widen the spread it is judged by. The last measurement counts.
    """
    focus, threshold, excluded = None, 0.0, np.zeros_like(reference_zone)
    for seed in (True, False, False):
        kept = _without(reference_zone, excluded)
        if kept.sum() < 20:
            break
        reference, spread = _reference(smooth[kept], t)
        threshold = _threshold(side, reference, spread, t, SEED_Z if seed else t.voxel_z)
        if side == "hypodense":
            zone = centre_zone = zones["lytic"]
        else:
            zone, centre_zone = zones["reference"], zones["blastic"]
        candidates = zone & ((smooth < threshold) if side == "hypodense" else (smooth > threshold))
        focus = _best_focus(candidates, centre_zone, (smooth - reference) / spread, smooth, raw, spacing, reference,
                            spread, t)
        region = _region(focus, spacing, sigma_mm, t)
        if not region.any() and not seed:
            break
        excluded = region
    if side == "hypodense" and focus is not None:
        focus = _by_shape(focus, zones["body"], smooth, spacing, t)
    return focus, threshold


def _by_shape(focus: Focus, zone: np.ndarray, smooth: np.ndarray, spacing, t: LesionThresholds) -> Focus:
    """Step 6b: a hypodense focus outlined at its own half-contrast is evidence when that outline is a compact ball.

    Normal real bone has compact hypodense regions as deep as a lytic lesion's core (fatty
    marrow, the basivertebral vein: 80-106 HU below the bone and 2.5-2.8 spreads), but
    they are small, and outlined at half their own contrast they spread into the bone's
    irregular low tail (measured on the real chest CT: at most 5 mm thick, compactness at
    most 0.54). A lesion of 10 mm or more is a ball of soft tissue: its half-contrast
    outline is its own edge, thick and compact whatever its contrast, and a core of soft
    tissue (``compact_min_hu`` .. ``lytic_max_hu``: a fat-like core with so little
    contrast may be focal fat) ``lytic_delta_hu`` below the bone is then enough. The outline is drawn on the
    smoothed values, with thick slices interpolated to ``outline_fine_mm`` (partial volume
    at the poles gives the edge between two slices), so the thickness is not one of a few
    multiples of the slice.
    """
    outline = _outline(focus, zone, smooth, spacing, t)
    focus = replace(focus, outline=outline)
    if focus.grade == "evidence" or outline is None:
        return focus
    contrast = (focus.reference_hu - focus.core_hu >= lytic_delta(focus.reference_hu, t)
                and t.compact_min_hu <= focus.core_hu <= t.lytic_max_hu
                and -focus.core_z >= t.compact_z and focus.volume_mm3 >= t.weak_focus_mm3)
    compact = (outline.thickness_mm >= t.compact_thickness_mm and outline.compactness >= t.compact_min
               and outline.volume_mm3 >= t.min_focus_mm3)
    return replace(focus, grade="evidence", by_shape=True) if contrast and compact else focus


def _beside_blastic(hypo: Focus | None, hyper: Focus | None, t: LesionThresholds) -> Focus | None:
    """Step 6c: beside a certain blastic focus, a smaller soft-tissue hypodense focus is the lytic part of a mixed lesion.

    Where a hyperdense focus is evidence ``mixed_blastic_z`` spreads off, the vertebra gets
    a lesion call whatever the hypodense side shows: this only decides mixed or blastic, and
    never turns a normal vertebra into a lesion. The lytic part of a mixed lesion is often
    outlined thin (3-5 mm of a 10-13 mm ball at 3 mm slices: partial volume and the blastic
    ball's blur) and its core just short of ``lytic_call_hu``; so ``mixed_thickness_mm``,
    ``mixed_lytic_z`` and ``lytic_delta_hu`` are enough, when the core reads soft tissue
    (``compact_min_hu`` .. ``mixed_lytic_max_hu``: normal bone's hypodense regions beside a
    blastic lesion read 46-55 HU in the real thoracic bodies, the lytic parts 0-45 HU).
    """
    certain = hyper is not None and hyper.grade == "evidence" and hyper.core_z >= t.mixed_blastic_z
    if not certain or hypo is None or hypo.grade == "evidence":
        return hypo
    soft = (t.compact_min_hu <= hypo.core_hu <= t.mixed_lytic_max_hu
            and hypo.reference_hu - hypo.core_hu >= lytic_delta(hypo.reference_hu, t))
    sized = (hypo.volume_mm3 >= t.min_focus_mm3 and hypo.thickness_mm >= t.mixed_thickness_mm
             and -hypo.core_z >= t.mixed_lytic_z)
    return replace(hypo, grade="evidence", beside_blastic=True) if soft and sized else hypo


def _outline(focus: Focus, zone: np.ndarray, smooth: np.ndarray, spacing, t: LesionThresholds) -> Outline | None:
    """The connected region of ``zone`` around the focus's deepest voxel beyond ``outline_fraction`` of its contrast.

    Measured in a box of the focus grown by 10 mm, slices interpolated linearly to at most
    ``outline_fine_mm``; None when the deepest voxel does not lie beyond that level.
    """
    core_smooth = focus.reference_hu + focus.core_z * focus.spread_hu
    level = focus.reference_hu + t.outline_fraction * (core_smooth - focus.reference_hu)
    box = bounding_box(focus.voxels, margin=0)
    grow = [int(math.ceil(10.0 / s)) for s in spacing]
    box = tuple(slice(max(b.start - g, 0), min(b.stop + g, n)) for b, g, n in zip(box, grow, zone.shape))
    factor = max(int(math.ceil(spacing[0] / t.outline_fine_mm - 1e-6)), 1)
    values, inside = smooth[box], zone[box]
    if factor > 1:
        values = ndimage.zoom(values, (factor, 1, 1), order=1, mode="nearest", grid_mode=True)
        inside = ndimage.zoom(inside.astype(np.float32), (factor, 1, 1), order=1, mode="nearest", grid_mode=True) > 0.5
    fine = (spacing[0] / factor,) + tuple(spacing[1:])
    components, _ = ndimage.label(inside & ((values < level) if focus.core_z < 0 else (values > level)))
    seed = ((focus.deepest[0] - box[0].start) * factor + factor // 2, focus.deepest[1] - box[1].start,
            focus.deepest[2] - box[2].start)
    if components[seed] == 0:
        return None
    volume, thickness, compactness, _ = _shape(components == components[seed], fine)
    return Outline(level, volume, thickness, compactness)


def _depth(voxels: np.ndarray, spacing) -> tuple[tuple[slice, ...], np.ndarray]:
    """The region's box (one voxel of margin) and each voxel's distance (mm) from outside the region, on that box."""
    box = bounding_box(voxels, margin=1)
    depth = ndimage.distance_transform_edt(np.pad(voxels[box], 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    return box, depth


def _shape(voxels: np.ndarray, spacing, box=None, depth=None) -> tuple[float, float, float, tuple[int, int, int]]:
    """Volume (mm3), thickness (diameter of the largest inscribed ball), compactness and deepest voxel of a region.

    Thickness from voxel centres, half a voxel less; compactness is thickness over the
    diameter of the ball of the same volume (1 for a ball, small for a plate or a network).
    ``box`` and ``depth`` are ``_depth``'s, when already measured.
    """
    if box is None or depth is None:
        box, depth = _depth(voxels, spacing)
    thickness = max(2.0 * float(depth.max()) - min(spacing), 0.0)
    deepest = tuple(int(i) + b.start for i, b in zip(np.unravel_index(int(np.argmax(depth)), depth.shape), box))
    volume = float(voxels.sum()) * float(np.prod(spacing))
    equivalent = (6.0 * volume / math.pi) ** (1 / 3)
    return volume, thickness, (min(thickness / equivalent, 1.0) if equivalent else 0.0), deepest


def _region(focus: Focus | None, spacing, sigma_mm: float, t: LesionThresholds) -> np.ndarray | bool:
    """The focus grown by its blurred rim (twice the smoothing sigma plus 2 mm), when it is large enough to matter.

    False (nothing) for no focus or one below weak evidence in size: such specks do not move the reference.
    """
    if focus is None or focus.volume_mm3 < t.weak_focus_mm3 or focus.thickness_mm < t.weak_thickness_mm:
        return np.zeros((1, 1, 1), bool) if focus is None else np.zeros_like(focus.voxels)
    return ndimage.distance_transform_edt(~focus.voxels, sampling=spacing) <= 2 * sigma_mm + 2.0


def lytic_delta(reference_hu: float, t: LesionThresholds) -> float:
    """How far (HU) below the vertebra's reference a hypodense focus must lie: ``lytic_delta_hu``, less in light bone.

    A lytic lesion is soft tissue, so in bone lighter than soft tissue plus
    ``lytic_delta_hu`` (osteoporotic bone of 50-80 HU: the TPTBox L3 reads 55 HU) no
    tumour can lie that far below it, and the rule would be blind there by construction.
    There the focus need only read below ``light_floor_hu``, and at least
    ``light_min_delta_hu`` below the bone. This lowers only the HU asked; the spreads
    (``voxel_z``, ``compact_z``, ``strong_z``) and, short of ``strong_z``, the compact
    ball of step 6b are still needed, so a light vertebra's irregular low tail is not a
    lesion. Bone of ``light_floor_hu + lytic_delta_hu`` HU or more is judged as before.
    """
    return float(min(t.lytic_delta_hu, max(t.light_min_delta_hu, reference_hu - t.light_floor_hu)))


def _threshold(side: str, reference: float, spread: float, t: LesionThresholds, voxel_z: float) -> float:
    """The HU a focus voxel must be below (hypodense) or above (hyperdense)."""
    if side == "hypodense":
        return reference - max(voxel_z * spread, lytic_delta(reference, t))
    return max(reference + max(voxel_z * spread, t.blastic_delta_hu), t.blastic_min_hu)


def _best_focus(candidates: np.ndarray, centre_zone: np.ndarray, z: np.ndarray, smooth: np.ndarray,
                raw: np.ndarray, spacing, reference: float, spread: float, t: LesionThresholds) -> Focus | None:
    """The most telling of the eight largest foci centred in ``centre_zone``: evidence, weak, below; then size."""
    components, count = ndimage.label(candidates)
    if count == 0:
        return None
    sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
    best, rank = None, (-1, -1.0)
    for index in np.argsort(sizes)[::-1][:8]:
        voxels = components == index + 1
        focus = _measure(voxels, z, smooth, raw, spacing, reference, spread, t)
        if not centre_zone[focus.deepest]:
            if not _certain(focus, t):
                continue
            focus = replace(focus, near_elements=True)
        key = ({"evidence": 2, "weak": 1, "below": 0}[focus.grade], focus.volume_mm3)
        if key > rank:
            best, rank = focus, key
    return best


def _certain(focus: Focus, t: LesionThresholds) -> bool:
    """Whether a hyperdense focus centred off the blastic zone (nearer the posterior elements) still counts.

    The blastic zone keeps ``elements_margin_mm`` from the posterior elements because the
    bone at the pedicle roots is dense. That bone is thin, though: a focus of evidence
    ``call_thickness_mm`` thick (the strong-z shortcut to ``strong_thickness_mm`` is not
    enough here) whose core stands ``near_elements_z`` spreads off is a lesion. Measured
    on real bone (``benchmarks/lesion_real_bone.py``, seeds 1-4): inserted blastic balls
    of 10-15 mm near the pedicles give such foci 4.0-5.0 mm thick, 8-16 spreads off; the
    dense foci there of the vertebrae without a lesion are at most 3.2 mm thick (cut
    vertebrae, 7.5-12 spreads) and, in the whole thoracic bodies, 1.8 mm (at most 5.6
    spreads).
    """
    return (focus.grade == "evidence" and focus.core_hu > focus.reference_hu
            and focus.core_z >= t.near_elements_z and focus.thickness_mm >= t.call_thickness_mm)


def _measure(voxels: np.ndarray, z: np.ndarray, smooth: np.ndarray, raw: np.ndarray, spacing, reference: float,
             spread: float,
             t: LesionThresholds) -> Focus:
    """Volume, thickness (diameter of the largest inscribed ball), compactness, core z and HU, and the grade.

    The z-score of a focus is the mean over its *core*, the voxels at least half its
    inscribed radius deep: the rim of any focus sits at the voxel threshold, only the core
    of a real lesion lies well beyond it. The core's HU is the mean of its unsmoothed values
    (many voxels: the noise averages out, and the smoothing's blur of the rim stays out).
    """
    box, depth = _depth(voxels, spacing)
    volume, thickness, compactness, deepest = _shape(voxels, spacing, box, depth)
    in_core = voxels[box] & (depth >= 0.5 * float(depth.max()))
    core_z = float(z[box][in_core].mean())
    core_hu = float(raw[box][in_core].mean())  # unsmoothed: the blur of the rim does not reach in
    core_texture = float(raw[box][in_core].std())
    size = (volume, thickness, abs(core_z))
    dense_enough = _contrast_enough(core_hu, reference, abs(core_z), t)
    thick_enough = t.strong_thickness_mm if abs(core_z) >= t.strong_z else t.call_thickness_mm
    if _passes(size, t.min_focus_mm3, thick_enough, t.call_z) and dense_enough:
        grade = "evidence"
    elif _passes(size, t.weak_focus_mm3, t.weak_thickness_mm, t.weak_z):
        grade = "weak"
    else:
        grade = "below"
    return Focus(voxels, volume, thickness, compactness,
                 core_z, float(smooth[voxels].mean()), core_hu, core_texture, reference, spread, grade, deepest)


def _contrast_enough(core_hu: float, reference: float, core_z: float, t: LesionThresholds) -> bool:
    """Whether a focus's core differs enough in HU from the reference to be a lesion.

    ``lytic_call_hu`` / ``blastic_call_hu`` below / above it; or, where the core stands
    ``strong_z`` spreads off (quiet, uniform bone), the smaller ``lytic_delta_hu`` /
    ``blastic_delta_hu``. A hypodense core must also read ``lytic_max_hu`` or less
    (``strong_lytic_max_hu`` in quiet bone): a tumour is soft tissue, and normal bone only
    *looks* hypodense where a blastic lesion has raised the reference. A hyperdense core
    must read ``blastic_min_hu`` or more.
    """
    if core_hu < reference:
        if core_z >= t.strong_z:
            return reference - core_hu >= lytic_delta(reference, t) and core_hu <= t.strong_lytic_max_hu
        return reference - core_hu >= t.lytic_call_hu and core_hu <= t.lytic_max_hu
    needed = t.blastic_delta_hu if core_z >= t.strong_z else t.blastic_call_hu
    return core_hu - reference >= needed and core_hu >= t.blastic_min_hu


def _passes(size: tuple[float, float, float], mm3: float, thickness_mm: float, z: float) -> bool:
    volume, thickness, mean_abs_z = size
    return volume >= mm3 and thickness >= thickness_mm and mean_abs_z >= z


def _decide(hypo: Focus | None, hyper: Focus | None) -> str:
    """The class from the grades of the two foci (module docstring, step 6)."""
    lytic = hypo is not None and hypo.grade == "evidence"
    blastic = hyper is not None and hyper.grade == "evidence"
    if lytic and blastic:
        return "mixed"
    if lytic or blastic:
        return "lytic" if lytic else "blastic"
    weak = any(f is not None and f.grade == "weak" for f in (hypo, hyper))
    return "indeterminate" if weak else "none"


def _focus_features(reference: float, spread: float, lytic_below: float, blastic_above: float,
                    hypo: Focus | None, hyper: Focus | None) -> dict:
    """The numbers of steps 4-6, flat (for tables) and per focus."""
    out = {"reference_hu": _r(reference, 1), "spread_hu": _r(spread, 1),
           "lytic_below_hu": _r(lytic_below, 1), "blastic_above_hu": _r(blastic_above, 1)}
    for name, focus in (("hypodense", hypo), ("hyperdense", hyper)):
        out[f"{name}_focus_mm3"] = _r(focus.volume_mm3, 1) if focus else 0.0
        out[f"{name}_focus_mean_hu"] = _r(focus.mean_hu, 1) if focus else None
        out[f"{name}_focus"] = focus.describe() if focus else None
    return out


def _reason(kind: str, hypo: Focus | None, hyper: Focus | None, f: dict, t: LesionThresholds) -> str:
    """One line a reader understands: what was found, against which reference, and why that class."""
    ref = f"reference {f['reference_hu']:g} HU, spread {f['spread_hu']:g} HU"
    if kind in LESION_KINDS:
        found = [_say(name, focus) for name, focus in (("hypodense", hypo), ("hyperdense", hyper))
                 if focus is not None and focus.grade == "evidence"]
        return f"{' and '.join(found)} ({ref})"
    need = (f"a lesion needs {t.min_focus_mm3:g} mm3, {t.call_thickness_mm:g} mm thick, "
            f"mean |z| {t.call_z:g}")
    if kind == "indeterminate":
        weak = [_say(name, focus) for name, focus in (("hypodense", hypo), ("hyperdense", hyper))
                if focus is not None and focus.grade == "weak"]
        return f"weak evidence, no lesion call: {' and '.join(weak)} ({need}; {ref})"
    largest = ", ".join(f"{name} {focus.volume_mm3:.0f} mm3" for name, focus in (("hypodense", hypo),
                                                                                ("hyperdense", hyper)) if focus)
    return f"no focus stands out from this vertebra's bone ({ref}" + (f"; largest {largest}" if largest else "") + ")"


def _say(name: str, focus: Focus) -> str:
    """One focus in words; evidence by shape (step 6b) says its outline."""
    said = (f"{name} focus {focus.volume_mm3:.0f} mm3, {focus.thickness_mm:.1f} mm thick, "
            f"core z {focus.core_z:+.1f} ({focus.mean_hu:.0f} HU)")
    if focus.by_shape and focus.outline is not None:
        said += (f", a compact ball at half its contrast ({focus.outline.thickness_mm:.1f} mm thick, "
                 f"compactness {focus.outline.compactness:.2f})")
    if focus.beside_blastic:
        said += ", soft tissue beside a certain blastic focus (the lytic part of a mixed lesion)"
    if focus.near_elements:
        said += ", centred near the posterior elements but far denser than their bone"
    return said


def _check(hu: np.ndarray, mask: np.ndarray, spacing) -> tuple[float, float, float]:
    """The spacing as three positive floats; a mask on another grid than the CT is refused."""
    if np.shape(hu) != np.shape(mask) or np.ndim(hu) != 3:
        raise ValueError(f"lesion classification needs a 3-D CT and a mask on the same grid, "
                         f"got {np.shape(hu)} and {np.shape(mask)}")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"lesion classification needs three positive voxel sizes (sz, sy, sx) in mm, got {spacing}")
    return spacing  # type: ignore[return-value]


def _r(value: float, digits: int) -> float:
    return round(float(value), digits)
