"""Metastatic involvement of one vertebra: none, lytic, blastic or mixed, with the reasons.

An explainable rule on the CT values inside the vertebral body, not a black box. Every
length is in millimetres and honours anisotropic voxels; only the vertebra's bounding
box is looked at. The numbers named below are the fields of ``LesionThresholds``.

1. **Surface.** The mask's surface is moved onto the cortex by at most one voxel: its
   outermost voxels reading below ``peel_below_hu`` (disc, canal, soft tissue: a label
   one voxel too wide) are taken off, then neighbours reading ``grow_above_hu`` or more
   (cortex: a label one voxel too narrow) are added.
2. **Body.** A ball of ``body_opening_mm`` rolls inside the mask (a morphological opening,
   by distance transforms): the posterior elements (pedicles, laminae, processes: thin
   bone of 400-750 HU that would pass for "dense") are thinner and fall away; the largest
   piece left is the vertebral body.
3. **Zones.** A shell of ``cortex_mm`` plus ``margin_voxels`` voxels along each axis comes
   off the body for the *blastic zone*, which also keeps ``elements_margin_mm`` away from
   the posterior elements (the dense pedicle roots); the cortex and endplates (650-1150
   HU) and their blurred edge stay out. Hypodense foci have no dense bone to be confused
   with, so the *lytic zone* loses only ``lytic_shell_mm`` plus ``margin_voxels`` voxels
   and sees foci that reach the cortex.
4. **Reference.** This vertebra's own normal bone: the median HU (after a Gaussian of
   ``smooth_mm``) of the blastic zone's voxels within ``reference_min_hu`` ..
   ``reference_max_hu``; lesion voxels fall outside that band, so a large focus does not
   drag the reference along.
5. **Foci.** Hypodense: lytic-zone voxels below ``min(reference - lytic_delta_hu,
   lytic_max_hu)``; hyperdense: blastic-zone voxels above ``max(reference +
   blastic_delta_hu, blastic_min_hu)``. The largest connected focus of each kind counts
   when it has ``min_focus_mm3`` or more (a 5 mm sphere is 65 mm3); both kinds make
   "mixed".

Every number that decided the class is in ``LesionFinding.features`` (with a one-line
``reason``); the node configuration passes its dict through ``LesionThresholds.from_dict``.
Any object with the same ``classify`` signature (``LesionClassifier``: a learned model,
say) can replace ``ThresholdClassifier``.

Defaults were chosen on phantoms of seeds 0..79 (``benchmarks/lesion_accuracy.py``
measures seeds 100000-100019, never used for tuning). Real CT has inhomogeneous bone
(vessels, Schmorl nodes, haemangiomas, degenerative sclerosis) that the phantoms lack:
expect to raise ``min_focus_mm3`` and the deltas there.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Protocol

import numpy as np
from scipy import ndimage

from pipelines.errors import LesionConfigError

LESION_CLASSES = ["none", "lytic", "blastic", "mixed"]
"""The classes a vertebra can get, in the order reports list them."""


@dataclass(frozen=True)
class LesionThresholds:
    """The numbers of the rule (module docstring), all in mm, mm3 or HU.

    Phantom values behind the defaults (``pipelines/anatomy.py``), close to adult CT:
    trabecular bone 110-300 HU (the lower end osteoporotic), cortex 650-1150 HU and
    1-2 mm thick, posterior elements 400-750 HU after blur, pedicles 5-7 mm thick,
    lytic foci 0-100 HU, blastic foci 600-1200 HU, lesions 5-30 mm across.
    """

    peel_below_hu: float = 150.0     # outermost mask voxels below this are not bone
    grow_above_hu: float = 350.0     # neighbours of the mask above this are cortex
    body_opening_mm: float = 5.0     # ball that fits the body, not the pedicles (thinner than 10 mm)
    cortex_mm: float = 2.5           # blastic zone: shell left out, cortex (<= 2 mm) plus blur
    margin_voxels: float = 1.0       # both zones: one more voxel per axis, for boundaries one voxel off
    elements_margin_mm: float = 6.0  # blastic zone: distance kept from the posterior elements
    lytic_shell_mm: float = 1.0      # lytic zone: shell left out
    smooth_mm: float = 0.5           # Gaussian sigma against single-voxel noise
    reference_min_hu: float = 90.0   # band of plausible trabecular bone for the reference median
    reference_max_hu: float = 450.0
    lytic_delta_hu: float = 60.0     # hypodense: this far below the reference ...
    lytic_max_hu: float = 150.0      # ... and below this
    blastic_delta_hu: float = 200.0  # hyperdense: this far above the reference ...
    blastic_min_hu: float = 450.0    # ... and above this
    min_focus_mm3: float = 15.0      # smallest focus that counts

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise LesionConfigError(f"lesion threshold {f.name} must be a number, got {value!r}")
        for name in ("body_opening_mm", "min_focus_mm3"):
            if getattr(self, name) <= 0:
                raise LesionConfigError(f"lesion threshold {name} must be positive, got {getattr(self, name)}")
        for name in ("cortex_mm", "margin_voxels", "elements_margin_mm", "lytic_shell_mm", "smooth_mm",
                     "lytic_delta_hu", "blastic_delta_hu"):
            if getattr(self, name) < 0:
                raise LesionConfigError(f"lesion threshold {name} must not be negative, got {getattr(self, name)}")
        if self.reference_min_hu >= self.reference_max_hu:
            raise LesionConfigError(f"lesion thresholds: reference_min_hu ({self.reference_min_hu}) must be "
                                    f"below reference_max_hu ({self.reference_max_hu})")

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
    """The class of one vertebra and the measurements behind it."""

    kind: str  # none | lytic | blastic | mixed
    features: dict


class LesionClassifier(Protocol):
    """What the pipeline needs from a lesion classifier: one vertebra in, one finding out."""

    def classify(self, hu: np.ndarray, mask: np.ndarray, spacing) -> LesionFinding:
        """Classify the vertebra ``mask`` (bool, same grid as ``hu``) of a CT with ``spacing`` (sz, sy, sx) mm."""
        ...


class ThresholdClassifier:
    """The rule of the module docstring; stateless apart from its thresholds."""

    def __init__(self, thresholds: LesionThresholds | Mapping | None = None):
        if thresholds is None or isinstance(thresholds, Mapping):
            thresholds = LesionThresholds.from_dict(thresholds)
        self.t = thresholds

    def classify(self, hu: np.ndarray, mask: np.ndarray, spacing) -> LesionFinding:
        """Classify the vertebra ``mask`` (bool, same grid as ``hu``) of a CT with ``spacing`` (sz, sy, sx) mm.

        ``features``: voxels peeled and grown at the surface, body and zone volumes (ml), the
        reference and both thresholds (HU), the largest hypodense and hyperdense focus (mm3,
        mean HU), a one-line ``reason`` and the ``thresholds`` used.
        """
        spacing = _check(hu, mask, spacing)
        t = self.t
        box = _bbox(mask, margin=1)
        if box is None:
            return LesionFinding("none", {"reason": "empty mask", "body_ml": 0.0, "thresholds": asdict(t)})
        smooth = hu[box].astype(np.float32)
        if t.smooth_mm > 0:
            smooth = ndimage.gaussian_filter(smooth, [t.smooth_mm / s for s in spacing], mode="nearest")
        zones, features = _zones(np.asarray(mask[box], bool), smooth, spacing, t)
        reference = _reference(smooth, zones["blastic"] if zones["blastic"].any() else zones["lytic"], t)
        if reference is None:
            features.update(reason="no trabecular bone left to measure", thresholds=asdict(t))
            return LesionFinding("none", features)
        lytic_below = min(reference - t.lytic_delta_hu, t.lytic_max_hu)
        blastic_above = max(reference + t.blastic_delta_hu, t.blastic_min_hu)
        voxel_mm3 = float(np.prod(spacing))
        hypo = _largest_focus(zones["lytic"] & (smooth < lytic_below))
        hyper = _largest_focus(zones["blastic"] & (smooth > blastic_above))
        features.update({
            "reference_hu": _r(reference, 1),
            "lytic_below_hu": _r(lytic_below, 1),
            "blastic_above_hu": _r(blastic_above, 1),
            "hypodense_focus_mm3": _r(hypo.sum() * voxel_mm3, 1),
            "hypodense_focus_mean_hu": _r(smooth[hypo].mean(), 1) if hypo.any() else None,
            "hyperdense_focus_mm3": _r(hyper.sum() * voxel_mm3, 1),
            "hyperdense_focus_mean_hu": _r(smooth[hyper].mean(), 1) if hyper.any() else None,
        })
        has_lytic = features["hypodense_focus_mm3"] >= t.min_focus_mm3
        has_blastic = features["hyperdense_focus_mm3"] >= t.min_focus_mm3
        kind = {(False, False): "none", (True, False): "lytic",
                (False, True): "blastic", (True, True): "mixed"}[(has_lytic, has_blastic)]
        features["reason"] = _reason(kind, features, t.min_focus_mm3)
        features["thresholds"] = asdict(t)
        return LesionFinding(kind, features)


def _zones(given: np.ndarray, smooth: np.ndarray, spacing, t: LesionThresholds) -> tuple[dict, dict]:
    """Steps 1-3 of the rule: the lytic and blastic zones, and the volumes that describe them."""
    mask = snap_to_cortex(given, smooth, t.grow_above_hu, t.peel_below_hu)
    body = vertebral_body(mask, spacing, t.body_opening_mm)
    lytic = trabecular_core(body, spacing, t.lytic_shell_mm, t.margin_voxels)
    blastic = trabecular_core(body, spacing, t.cortex_mm, t.margin_voxels)
    blastic &= _farther_than(mask & ~body, spacing, t.elements_margin_mm)
    voxel_ml = float(np.prod(spacing)) / 1000
    features = {"surface_voxels_peeled": int((given & ~mask).sum()), "surface_voxels_grown": int((mask & ~given).sum()),
                "body_ml": _r(body.sum() * voxel_ml, 2), "lytic_zone_ml": _r(lytic.sum() * voxel_ml, 2),
                "blastic_zone_ml": _r(blastic.sum() * voxel_ml, 2)}
    return {"lytic": lytic, "blastic": blastic}, features


def _check(hu: np.ndarray, mask: np.ndarray, spacing) -> tuple[float, float, float]:
    """The spacing as three positive floats; a mask on another grid than the CT is refused."""
    if np.shape(hu) != np.shape(mask) or np.ndim(hu) != 3:
        raise ValueError(f"lesion classification needs a 3-D CT and a mask on the same grid, "
                         f"got {np.shape(hu)} and {np.shape(mask)}")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"lesion classification needs three positive voxel sizes (sz, sy, sx) in mm, got {spacing}")
    return spacing  # type: ignore[return-value]


def _reference(smooth: np.ndarray, zone: np.ndarray, t: LesionThresholds) -> float | None:
    """Median HU of the ``zone`` voxels inside the trabecular band, or None when there is none."""
    values = smooth[zone]
    band = values[(values >= t.reference_min_hu) & (values <= t.reference_max_hu)]
    return float(np.median(band)) if band.size else None


def snap_to_cortex(mask: np.ndarray, hu: np.ndarray, grow_above_hu: float, peel_below_hu: float) -> np.ndarray:
    """``mask`` with its surface moved by at most one voxel onto the cortex.

    The true surface of a vertebra is cortex. A label one voxel too narrow leaves the cortex
    just outside: neighbours reading ``grow_above_hu`` or more are added. A label one voxel
    too wide carries a layer of disc, canal or soft tissue: outermost voxels reading below
    ``peel_below_hu`` are taken off. Distances are then measured from a surface that does
    not depend on which way the segmentation erred.
    """
    outer = mask & ~ndimage.binary_erosion(mask, border_value=1)
    peeled = mask & ~(outer & (hu < peel_below_hu))
    return peeled | (ndimage.binary_dilation(peeled) & ~mask & (hu >= grow_above_hu))


def vertebral_body(mask: np.ndarray, spacing, radius_mm: float) -> np.ndarray:
    """The largest part of ``mask`` a ball of ``radius_mm`` can roll in: the body without its thin processes.

    A smaller ball is used when the mask is too thin for the configured one (a small or
    eroded vertebra), so that a body is always found when there is a mask.
    """
    depth = ndimage.distance_transform_edt(mask, sampling=spacing)
    radius = min(radius_mm, 0.7 * float(depth.max()))
    if radius <= 0:
        return np.zeros_like(mask)
    components, count = ndimage.label(depth >= radius)
    if count == 0:
        return np.zeros_like(mask)
    seed = components == (np.argmax(np.bincount(components.ravel())[1:]) + 1)
    return mask & (ndimage.distance_transform_edt(~seed, sampling=spacing) <= radius)


def trabecular_core(body: np.ndarray, spacing, cortex_mm: float, margin_voxels: float) -> np.ndarray:
    """``body`` less a shell of ``cortex_mm`` plus ``margin_voxels`` voxels along each axis (an ellipsoidal erosion)."""
    semi_axes = [cortex_mm + margin_voxels * s for s in spacing]
    if min(semi_axes) <= 0:
        return body.copy()
    padded = np.pad(body, 1)  # the box edge is outside the body, even where the mask touches it
    depth = ndimage.distance_transform_edt(padded, sampling=[s / a for s, a in zip(spacing, semi_axes)])
    return depth[1:-1, 1:-1, 1:-1] > 1.0


def _farther_than(region: np.ndarray, spacing, distance_mm: float) -> np.ndarray:
    """Voxels more than ``distance_mm`` from every voxel of ``region`` (all of them when it is empty)."""
    if not region.any() or distance_mm <= 0:
        return np.ones_like(region)
    return ndimage.distance_transform_edt(~region, sampling=spacing) > distance_mm


def _largest_focus(mask: np.ndarray) -> np.ndarray:
    components, count = ndimage.label(mask)
    if count == 0:
        return np.zeros_like(mask)
    return components == (np.argmax(np.bincount(components.ravel())[1:]) + 1)


def _reason(kind: str, f: dict, min_mm3: float) -> str:
    hypo = f"hypodense focus {f['hypodense_focus_mm3']:g} mm3 below {f['lytic_below_hu']:g} HU"
    hyper = f"hyperdense focus {f['hyperdense_focus_mm3']:g} mm3 above {f['blastic_above_hu']:g} HU"
    found = {"none": [], "lytic": [hypo], "blastic": [hyper], "mixed": [hypo, hyper]}[kind]
    ref = f"reference {f['reference_hu']:g} HU"
    if not found:
        return (f"no focus of {min_mm3:g} mm3 or more: largest hypodense {f['hypodense_focus_mm3']:g} mm3, "
                f"hyperdense {f['hyperdense_focus_mm3']:g} mm3 ({ref})")
    return f"{' and '.join(found)} ({ref}, minimum {min_mm3:g} mm3)"


def _r(value: float, digits: int) -> float:
    return round(float(value), digits)


def _bbox(mask: np.ndarray, margin: int):
    objects = ndimage.find_objects(np.asarray(mask, np.uint8))
    if not objects or objects[0] is None:
        return None
    return tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(objects[0], mask.shape))
