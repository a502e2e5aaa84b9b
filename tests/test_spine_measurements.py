"""The spine report's measurements on analytic vertebrae of known heights, on axial, flipped and oblique grids.

Each vertebra is an elliptic-cylinder body (30 mm deep, 40 mm wide) whose height at each
point is given (wedge, biconcave or crushed bodies included) with a block of posterior
elements behind it, sampled on a grid of any orientation: the truth is the formula, not
another mask.
"""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.measure.density import DensityRule, bone_density, contrast_phase
from pipelines.measure.report import measure_spine, series_report
from pipelines.measure.sins import sins
from pipelines.process import vertebra_findings
from pipelines.records import Geometry

LEVELS = {1: "T11", 2: "T12", 3: "L1"}
PITCH_MM = 34.0


def rotation(axis, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = np.radians(degrees)
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def body_height(a, l, shape: dict) -> np.ndarray:
    """Height (mm) of a body at anterior coordinate ``a`` and left coordinate ``l`` (mm from its centre)."""
    hp, ha = shape.get("posterior", 24.0), shape.get("anterior", shape.get("posterior", 24.0))
    height = hp + (ha - hp) * (a + 15.0) / 30.0
    r2 = (a / 15.0) ** 2 + (l / 20.0) ** 2
    return height - 2 * shape.get("concavity", 0.0) * np.clip(1 - r2, 0, 1)


def truth(shape: dict) -> dict:
    """The heights the report should give: the formula at 15, 50 and 85 % of the depth, mid-sagittal."""
    return {name: float(body_height(-15.0 + 30.0 * f, 0.0, shape))
            for name, f in (("posterior", 0.15), ("middle", 0.5), ("anterior", 0.85))}


def column(geometry: Geometry, shape_zyx, shapes: list[dict], body_hu=180.0, noise=0.0, seed=0):
    """HU and labels of three vertebrae along the patient's z axis (head first), sampled on ``geometry``."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape_zyx), indexing="ij")
    steps = geometry.direction * np.array([geometry.spacing[2], geometry.spacing[1], geometry.spacing[0]])
    p = geometry.origin + np.stack([i, j, k], axis=-1).astype(float) @ steps.T
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    labels = np.zeros(shape_zyx, np.uint8)
    hu = np.zeros(shape_zyx, np.float32)
    for n, spec in enumerate(shapes):
        zc = PITCH_MM * (1 - n)
        a, l = -y, x
        body = ((a / 15.0) ** 2 + (l / 20.0) ** 2 <= 1) & (np.abs(z - zc) <= body_height(a, l, spec) / 2)
        elements = (y >= 14) & (y <= 34) & (np.abs(x) <= 10) & (np.abs(z - zc) <= 3.5)  # 7 mm: thinner than a body
        labels[body | elements] = n + 1
        hu[elements] = 550.0
        hu[body] = spec.get("hu", body_hu)
    hu += np.random.default_rng(seed).normal(0, noise, hu.shape).astype(np.float32)
    return hu, labels


def grid(spacing=(2.0, 0.8, 0.8), rotate=np.eye(3), flip=False, extent=(130.0, 90.0, 70.0),
         shift=(0.0, 0.0, 0.0)) -> tuple[Geometry, tuple]:
    """A grid covering the column, its slices along ``rotate``'s z (reversed for a feet-first series),
    moved by ``shift`` (mm, patient axes) so that the column falls at another phase of the voxels."""
    shape = tuple(int(round(e / s)) for e, s in zip(extent, spacing))
    direction = rotate.copy()
    if flip:
        direction[:, 2] *= -1
        direction[:, 0] *= -1
    centre_index = np.array([shape[2], shape[1], shape[0]]) / 2.0 - 0.5
    steps = direction * np.array([spacing[2], spacing[1], spacing[0]])
    origin = np.array([0.0, 5.0, 0.0]) + np.asarray(shift) - steps @ centre_index
    return Geometry(origin, direction, spacing), shape


def measured(geometry, shape, shapes, **kw):
    hu, labels = column(geometry, shape, shapes, **kw)
    findings = vertebra_findings(hu, labels, geometry.spacing, LEVELS)
    measure_spine(hu, labels, geometry, findings)
    return {f.level: f.measurements for f in findings}, series_report(findings, None)


@pytest.mark.parametrize("spacing, rotate, flip", [
    ((2.0, 0.8, 0.8), np.eye(3), False),
    ((1.0, 0.8, 0.8), np.eye(3), True),
    ((2.5, 0.9, 0.9), rotation((1, 0.3, 0), 20.0), False),
    ((2.0, 0.7, 0.7), rotation((0.2, 1, 0.4), 25.0), True),  # at 3 mm slices this case gave 1.1 mm (a mask edge is +-1.5 mm)
])
def test_heights_are_within_a_millimetre_on_axial_flipped_and_oblique_grids(spacing, rotate, flip):
    """Mean absolute error per height over the column's positions relative to the voxels (a mask's edge is
    off by up to half a voxel at each endplate, depending on where the slices fall)."""
    shapes = [{}, {"anterior": 19.0, "posterior": 25.0}, {"concavity": 3.0}]
    errors = {name: [] for name in ("anterior", "middle", "posterior")}
    for shift in np.random.default_rng(7).uniform(-1.5, 1.5, size=(4, 3)):
        geometry, shape = grid(spacing, rotate, flip, extent=(170.0, 120.0, 100.0), shift=shift)
        result, _ = measured(geometry, shape, shapes)
        for level, spec in (("T12", shapes[1]), ("L1", shapes[2])):
            for name, value in truth(spec).items():
                errors[name].append(abs(result[level]["heights_mm"][name] - value))
    assert all(np.mean(e) <= 1.0 for e in errors.values()), {k: np.round(e, 2) for k, e in errors.items()}


@pytest.mark.parametrize("middle, grade, morphology", [
    ({}, 0, None),
    ({"anterior": 14.0, "posterior": 25.0}, 2, "wedge"),      # 15.7 / 23.4 mm at 85 / 15 % of the depth: 33 %
    ({"anterior": 8.0, "posterior": 25.0}, 3, "wedge"),       # 10.6 / 22.5 mm: 53 %
    ({"concavity": 6.0}, 2, "biconcave"),                      # middle 12 of 17.9 mm: 33 %
    ({"posterior": 15.0}, 2, "crush"),                         # 15 against neighbours of 24 mm: 37.5 %
    ({"anterior": 17.0, "posterior": 25.0}, 1, "wedge"),       # 18.2 / 23.8 mm: 23.5 %
])
def test_genant_grade_and_morphology_follow_the_height_loss(middle, grade, morphology):
    """The expected grade is the formula's at the measured positions (Genant limits 20 / 25 / 40 %)."""
    t = truth({**{"posterior": 24.0}, **middle})
    loss = max(1 - t["anterior"] / t["posterior"], 1 - t["middle"] / max(t["anterior"], t["posterior"]),
               1 - t["posterior"] / 24.0)
    assert grade == (3 if loss >= 0.40 else 2 if loss >= 0.25 else 1 if loss >= 0.20 else 0)  # the case is what it says
    geometry, shape = grid((1.0, 0.7, 0.7))
    result, _ = measured(geometry, shape, [{}, middle, {}])
    assert result["T12"]["genant_grade"] == grade, result["T12"]
    assert result["T12"]["genant_morphology"] == morphology
    assert result["T11"]["genant_grade"] == 0 and result["L1"]["genant_grade"] == 0


def test_labels_without_measured_endplates_get_no_height_and_no_grade_with_the_reason():
    """A column rebuilt from the CT (its disc planes estimated) must never report a collapse."""
    geometry, shape = grid((1.0, 0.7, 0.7))
    hu, labels = column(geometry, shape, [{}, {"anterior": 12.0, "posterior": 25.0}, {}])  # a grade-3 wedge
    findings = vertebra_findings(hu, labels, geometry.spacing, LEVELS)
    measure_spine(hu, labels, geometry, findings, no_heights="estimated disc planes")
    for f in findings:
        assert f.measurements["heights_mm"] is None and f.measurements["genant_grade"] is None
        assert f.measurements["heights_mm_reason"] == "estimated disc planes"
        assert f.measurements["trabecular_hu"] is not None  # the rest of the report is still measured


def test_a_vertebra_cut_by_the_edge_of_the_scan_gets_no_height_and_no_grade():
    geometry, shape = grid((2.0, 0.8, 0.8), extent=(84.0, 90.0, 70.0))  # the outer bodies run out of the scan
    result, _ = measured(geometry, shape, [{}, {}, {}])
    for cut in ("T11", "L1"):
        assert result[cut]["heights_mm"] is None and result[cut]["genant_grade"] is None
        assert "edge of the scan" in result[cut]["heights_mm_reason"]
    assert result["T12"]["genant_grade"] == 0 and result["T12"]["heights_mm"]["middle"] == pytest.approx(24, abs=1)


def test_trabecular_hu_is_within_10_hu_of_the_truth_despite_noise_cortex_and_a_focus():
    geometry, shape = grid((1.5, 0.8, 0.8))
    hu, labels = column(geometry, shape, [{"hu": 140.0}, {"hu": 95.0}, {"hu": 210.0}], noise=60.0)
    findings = vertebra_findings(hu, labels, geometry.spacing, LEVELS)
    measure_spine(hu, labels, geometry, findings)
    got = {f.level: f.measurements["trabecular_hu"] for f in findings}
    assert got["T11"] == pytest.approx(140, abs=10) and got["T12"] == pytest.approx(95, abs=10)
    assert got["L1"] == pytest.approx(210, abs=10)


def test_bone_density_uses_l1_and_says_whether_it_was_corrected_for_contrast():
    rule = DensityRule(threshold_hu=100.0, source="test rule")
    low = bone_density({"L1": 90.0, "L2": 150.0}, "none", rule)
    assert (low["site"], low["flag"], low["threshold_hu"]) == ("L1", "low bone density", 100.0)
    arterial = bone_density({"L1": 110.0}, "arterial", rule)
    assert arterial["threshold_hu"] == 120.0 and arterial["low"] and "arterial" in arterial["contrast"]
    assert "uncorrected" in bone_density({"L2": 130.0}, "contrast", rule)["contrast"]
    assert bone_density({"T12": 80.0}, None, rule)["flag"] is None


def test_contrast_phase_is_read_from_the_series_header():
    class Header:
        ContrastBolusAgent = "IOMEPROL"
        SeriesDescription = "Abdomen portal venous 2mm"
    assert contrast_phase(Header()) == "portal-venous"
    Header.SeriesDescription = "Thorax"
    assert contrast_phase(Header()) == "contrast"
    Header.ContrastBolusAgent = ""
    assert contrast_phase(Header()) == "none"


def test_sins_scores_each_ct_component_with_its_rule_and_never_pain_or_alignment():
    scored, _ = sins("T12", "lytic", 2, 30.0, 0.4, ["left", "right"])
    points = {k: v["points"] for k, v in scored["components"].items()}
    assert points == {"location": 3, "bone_lesion_quality": 2, "vertebral_body_collapse": 2,
                      "posterolateral_involvement": 3}
    assert scored["partial_score"] == 10 and any("pain" in n for n in scored["not_assessed"])
    blastic, _ = sins("T6", "blastic", 0, 5.0, 0.6, [])
    assert blastic["partial_score"] == 1 + 0 + 1 + 0
    assert sins("L3", "none", 0, 0.0, 0.0, [])[0] is None
    assert sins("L3", "indeterminate", 0, 0.0, 0.0, [])[0] is None
