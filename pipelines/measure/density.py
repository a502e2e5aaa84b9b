"""Trabecular bone attenuation of a vertebral body, and the series' bone-density flag.

The ROI is the body less a shell of ``CORTEX_MM`` (cortex, endplates and their blur),
less any focus: voxels whose locally averaged HU strays more than ``FOCUS_SPREAD``
robust standard deviations from the core's median (lesions, Schmorl nodes, vessels).
Its median is the vertebra's trabecular HU.

The flag uses L1, else L2 (opportunistic screening's site), against a threshold whose
value and source are settings (``DensityRule``). Contrast raises trabecular HU: where the
series names its phase (``ContrastBolusAgent`` + a phase word in the series description),
the threshold is raised by the phase's offset; where it shows contrast without a phase,
the flag says it is uncorrected.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from pipelines.lesions.zones import trabecular_core
from pipelines.options import DEFAULT_BONE_DENSITY_SOURCE, DEFAULT_BONE_DENSITY_THRESHOLD_HU

CORTEX_MM = 3.0
FOCUS_SPREAD = 2.5
SMOOTH_MM = 1.5
MIN_ROI_ML = 0.5
SITES = ("L1", "L2")


@dataclass(frozen=True)
class DensityRule:
    """The bone-density threshold (HU) and where it comes from, with offsets per contrast phase (HU)."""

    threshold_hu: float = DEFAULT_BONE_DENSITY_THRESHOLD_HU
    source: str = DEFAULT_BONE_DENSITY_SOURCE
    phase_offsets_hu: dict = field(default_factory=lambda: {"arterial": 20.0, "portal-venous": 14.75})


def trabecular_roi(body: np.ndarray, spacing) -> np.ndarray:
    """The body less its cortical shell of ``CORTEX_MM``."""
    return trabecular_core(body, spacing, CORTEX_MM, 0.0)


def trabecular_hu(hu: np.ndarray, core: np.ndarray, spacing) -> tuple[float | None, str]:
    """The median HU of the trabecular ROI ``core`` (on ``hu``'s grid) less its foci, or None with the reason."""
    voxel_ml = float(np.prod(spacing)) / 1000.0
    if core.sum() * voxel_ml < MIN_ROI_ML:
        return None, f"trabecular ROI under {MIN_ROI_ML} ml (body too small or cut)"
    smooth = ndimage.gaussian_filter(hu.astype(np.float32), [SMOOTH_MM / s for s in spacing])
    values = smooth[core]
    median = float(np.median(values))
    spread = 1.4826 * float(np.median(np.abs(values - median))) or 1.0
    kept = hu[core][np.abs(values - median) <= FOCUS_SPREAD * spread]
    if kept.size * voxel_ml < MIN_ROI_ML:
        return None, "too little bone left outside foci"
    return round(float(np.median(kept)), 1), ""


def contrast_phase(headers) -> str | None:
    """'none', 'arterial', 'portal-venous', 'contrast' (phase not said) from a series header, or None if unknown."""
    agent = str(getattr(headers, "ContrastBolusAgent", "") or "").strip()
    description = " ".join(str(getattr(headers, k, "") or "") for k in ("SeriesDescription", "ContrastBolusRoute"))
    words = description.lower()
    if not agent:
        return "none" if hasattr(headers, "ContrastBolusAgent") else None
    if "arter" in words:
        return "arterial"
    if "portal" in words or "venous" in words or " pv" in f" {words}":
        return "portal-venous"
    return "contrast"


def bone_density(trabecular: dict[str, float | None], phase: str | None, rule: DensityRule) -> dict:
    """The series' flag: the site used, its HU, the threshold in force, and whether it was corrected for contrast."""
    site = next((level for level in SITES if trabecular.get(level) is not None), None)
    if site is None:
        return {"flag": None, "reason": "neither L1 nor L2 measured", "threshold_hu": rule.threshold_hu,
                "source": rule.source}
    threshold, correction = rule.threshold_hu, "no contrast"
    if phase in rule.phase_offsets_hu:
        threshold += rule.phase_offsets_hu[phase]
        correction = f"corrected for the {phase} phase (+{rule.phase_offsets_hu[phase]:g} HU)"
    elif phase in ("contrast", None):
        correction = ("uncorrected: contrast given, phase not stated" if phase == "contrast"
                      else "uncorrected: the series does not say whether contrast was given")
    value = trabecular[site]
    return {"site": site, "trabecular_hu": value, "threshold_hu": threshold, "source": rule.source,
            "low": bool(value < threshold), "contrast": correction,
            "flag": "low bone density" if value < threshold else "normal"}
