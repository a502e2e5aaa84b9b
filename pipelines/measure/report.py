"""The spine report of one series: every measurement of ``pipelines.measure`` per vertebra, and the series' flags.

``measure_spine`` runs after the lesion classes are known (``pipelines.process.analyse``)
and sets ``VertebraFinding.measurements`` to the fields ``summary.json`` and the SR carry:
``heights_mm``, ``height_loss_pct``, ``height_loss_vs_neighbours_pct``, ``genant_grade``,
``genant_morphology``, ``height_lines_mm`` (each height's two end points, LPS mm, for the
SR's drawing), ``trabecular_hu``, ``lesion_volume_ml``, ``lesion_share_pct``,
``posterior_involvement`` and ``sins``, each ``None`` with a ``..._reason`` where it could
not be measured. A vertebra cut by the edge of the scan, or too tilted to find its
endplates, gets no height and no grade.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipelines.lesions.zones import vertebral_body
from pipelines.measure.density import DensityRule, bone_density, contrast_phase, trabecular_hu, trabecular_roi
from pipelines.measure.frame import VertebraFrame, tilt_degrees, vertebra_frame, voxel_points
from pipelines.measure.heights import Heights, body_heights, genant
from pipelines.measure.lesion_volume import KINDS, lesion_volume_mm3
from pipelines.measure.sins import frame_left, involved_sides, sins
from pipelines.records import Geometry, VertebraFinding

BODY_RADIUS_MM = 5.0
FINE_PIXELS_MM = 1.0  # in-plane pixels finer than this: the body is found on every other pixel (4x fewer voxels)
MAX_TILT_DEGREES = 35.0
MARGIN = 2


@dataclass
class _Vertebra:
    finding: VertebraFinding
    box: tuple[slice, ...]
    mask: np.ndarray
    body: np.ndarray
    core: np.ndarray
    body_points: np.ndarray
    element_points: np.ndarray
    cut: bool


def measure_spine(hu: np.ndarray, labels: np.ndarray, geometry: Geometry, findings: list[VertebraFinding],
                  no_heights: str | None = None) -> None:
    """Set ``measurements`` of every finding (head to feet, as ``vertebra_findings`` orders them).

    Pure compute on the volume, so it runs where ``analyse`` runs (a worker); the series'
    flags, which need the headers, come from ``series_report``. ``no_heights``, when given,
    is why no body height (and so no Genant grade) may be measured on these labels at all:
    a column rebuilt from the CT has estimated disc planes, not the vertebrae's endplates.
    """
    boxes = ndimage.find_objects(labels)
    vertebrae = [_prepare(hu, labels, geometry, f, boxes) for f in findings]
    centres = [v.body_points.mean(axis=0) if len(v.body_points) else None for v in vertebrae]
    heights: list[Heights] = []
    for index, v in enumerate(vertebrae):
        heights.append(Heights(None, None, None, no_heights) if no_heights
                       else _heights(v, _column_axis(centres, index), geometry))
    for index, v in enumerate(vertebrae):
        neighbours = [heights[n].posterior for n in (index - 1, index + 1)
                      if 0 <= n < len(heights) and heights[n].posterior is not None]
        v.finding.measurements = _measurements(hu, geometry, v, heights[index], neighbours,
                                               _column_axis(centres, index))


def series_report(findings: list[VertebraFinding], header, rule: DensityRule | None = None) -> dict:
    """The series' part of the report: the bone-density flag, corrected for the contrast phase its header says."""
    trabecular = {f.level: f.measurements.get("trabecular_hu") for f in findings if f.measurements}
    phase = contrast_phase(header) if header is not None else None
    return {"bone_density": bone_density(trabecular, phase, rule or DensityRule())}


def _prepare(hu, labels, geometry: Geometry, finding: VertebraFinding, boxes) -> _Vertebra:
    raw = boxes[finding.label - 1]
    box = tuple(slice(max(s.start - MARGIN, 0), min(s.stop + MARGIN, n)) for s, n in zip(raw, labels.shape))
    cut = any(s.start == 0 or s.stop == n for s, n in zip(raw, labels.shape))
    mask = labels[box] == finding.label
    step = 2 if max(geometry.spacing[1], geometry.spacing[2]) < FINE_PIXELS_MM else 1
    coarse = mask[:, ::step, ::step]
    spacing = (geometry.spacing[0], geometry.spacing[1] * step, geometry.spacing[2] * step)
    body_coarse = vertebral_body(coarse, spacing, BODY_RADIUS_MM)
    body = mask & _fine(body_coarse, step, mask.shape)
    core = _fine(trabecular_roi(body_coarse, spacing), step, mask.shape) & body
    offset = tuple(s.start for s in box)
    return _Vertebra(finding, box, mask, body, core, voxel_points(body, geometry, offset),
                     voxel_points(mask & ~body, geometry, offset), cut)


def _fine(coarse: np.ndarray, step: int, shape) -> np.ndarray:
    """A mask found on every ``step``-th pixel, back on the full grid (each pixel takes its block's value)."""
    if step == 1:
        return coarse
    return np.repeat(np.repeat(coarse, step, axis=1), step, axis=2)[:, :shape[1], :shape[2]]


def _column_axis(centres: list, index: int) -> np.ndarray | None:
    """The column's direction at vertebra ``index``: from the body below it to the body above it."""
    above = centres[index - 1] if index > 0 else None
    below = centres[index + 1] if index + 1 < len(centres) else None
    here = centres[index]
    if here is None:
        return None
    if above is not None and below is not None:
        return above - below
    if above is not None:
        return above - here
    if below is not None:
        return here - below
    return None


def _frame(v: _Vertebra, axis) -> VertebraFrame:
    return vertebra_frame(v.body_points, v.element_points, axis)


def _heights(v: _Vertebra, axis, geometry: Geometry) -> Heights:
    if v.cut:
        return Heights(None, None, None, "vertebra cut by the edge of the scan")
    if len(v.body_points) < 50:
        return Heights(None, None, None, "no vertebral body found in the mask")
    frame = _frame(v, axis)
    own = vertebra_frame(v.body_points, v.element_points, None).superior
    if axis is not None and tilt_degrees(own, frame.superior) > MAX_TILT_DEGREES:
        return Heights(None, None, None, f"endplates not found: the body is tilted "
                                         f"{tilt_degrees(own, frame.superior):.0f} degrees from the column")
    # positions from the body (the opened mask), lengths on the whole mask: an opening rounds off the
    # endplates of a sloping body on thick slices, and a mid-sagittal ray inside the body meets no process
    return body_heights(v.mask, tuple(s.start for s in v.box), geometry, frame, v.body_points)


def _measurements(hu, geometry: Geometry, v: _Vertebra, heights: Heights, neighbours: list[float], axis) -> dict:
    graded = genant(heights, neighbours)
    trabecular, trabecular_reason = (None, "vertebra cut by the edge of the scan") if v.cut else \
        trabecular_hu(hu[v.box], v.core, geometry.spacing)
    volume_ml, share = _lesion_volume(hu, v, geometry.spacing)
    sides = _posterior_sides(hu, geometry, v, axis) if v.finding.lesion in ("lytic", "mixed") else []
    scored, sins_reason = sins(v.finding.level, v.finding.lesion, graded.grade, graded.loss_pct,
                               None if share is None else share / 100, sides)
    out = {"heights_mm": heights.as_dict(), "height_lines_mm": heights.lines_as_lists(),
           "height_loss_pct": graded.loss_pct,
           "height_loss_vs_neighbours_pct": graded.loss_vs_neighbours_pct,
           "genant_grade": graded.grade, "genant_morphology": graded.morphology,
           "trabecular_hu": trabecular, "lesion_volume_ml": volume_ml, "lesion_share_pct": share,
           "posterior_involvement": sides if v.finding.lesion in ("lytic", "mixed") else None,
           "sins": scored}
    reasons = {"heights_mm": heights.reason, "genant_grade": graded.reason, "trabecular_hu": trabecular_reason,
               "sins": sins_reason}
    if out["posterior_involvement"] is None:
        reasons["posterior_involvement"] = ("no lytic focus to look for" if v.finding.lesion == "none"
                                            else f"not assessed for a {v.finding.lesion} call")
    for name, reason in reasons.items():
        if out[name] is None and reason:
            out[f"{name}_reason"] = reason
    return out


def _lesion_volume(hu, v: _Vertebra, spacing) -> tuple[float | None, float | None]:
    """The volume of the lesion behind the call (ml, ``lesion_volume``) and its share of the body (%)."""
    features = v.finding.features or {}
    if v.finding.lesion not in KINDS:
        return (0.0, 0.0) if v.finding.lesion == "none" else (None, None)
    mm3 = lesion_volume_mm3(hu[v.box], v.core, spacing, features, v.finding.lesion, vertebra=v.body)
    if mm3 is None:  # no focus to start from: the classifier's own volumes
        mm3 = sum(float(features.get(f"{kind}_focus_mm3") or 0.0) for kind in KINDS[v.finding.lesion])
    body_mm3 = float(v.body.sum()) * float(np.prod(spacing))
    return round(mm3 / 1000.0, 3), (round(100.0 * mm3 / body_mm3, 1) if body_mm3 else None)


def _posterior_sides(hu, geometry: Geometry, v: _Vertebra, axis) -> list[str]:
    if len(v.body_points) < 50:
        return []
    frame = _frame(v, axis)
    offset = tuple(s.start for s in v.box)
    left = frame_left(v.mask.shape, offset, geometry, frame)
    return involved_sides(hu[v.box], v.mask & ~ndimage.binary_dilation(v.body, iterations=1), left,
                          geometry.spacing)
