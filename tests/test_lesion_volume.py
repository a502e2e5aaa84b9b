"""The lesion volume is the lesion's share of each voxel summed, so it holds under blur, noise and slice thickness."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pipelines.measure.lesion_volume import lesion_volume_mm3

RADIUS_MM = 5.0
TRUE_MM3 = 4.0 / 3.0 * np.pi * RADIUS_MM ** 3


def _body_with_sphere(slice_mm: float, lesion_hu: float, seed: int = 0, radius_mm: float = RADIUS_MM):
    """A block of trabecular bone (200 HU, noisy) with a sphere at ``lesion_hu``, blurred as a scanner does.

    Drawn on a fine 0.25 mm grid, blurred in plane and along z by the slice profile, then
    averaged down to 0.75 mm pixels and ``slice_mm`` slices, plus voxel noise.
    """
    fine = 0.25
    n = 144  # 36 mm: whole 0.75 mm pixels and 1 or 2 mm slices
    z, y, x = (np.arange(n) * fine - n * fine / 2 + fine / 2 for _ in range(3))
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    hu = np.where(zz ** 2 + yy ** 2 + xx ** 2 <= radius_mm ** 2, lesion_hu, 200.0).astype(np.float32)
    hu = ndimage.gaussian_filter(hu, [0.4 * slice_mm / fine, 0.6 / fine, 0.6 / fine])
    fz, fy = int(round(slice_mm / fine)), 3
    hu = hu.reshape(n // fz, fz, n // fy, fy, n // fy, fy).mean(axis=(1, 3, 5))
    rng = np.random.default_rng(seed)
    hu = hu + rng.normal(0, 40, hu.shape).astype(np.float32)
    spacing = (slice_mm, 0.75, 0.75)
    body = np.ones(hu.shape, bool)
    return hu, body, spacing


def _features(lesion_hu: float, kind: str) -> dict:
    """What the classifier hands on: the bone's reference HU and the focus' mean (nearer the bone than the lesion)."""
    return {"reference_hu": 200.0, f"{kind}_focus_mean_hu": 0.5 * (200.0 + lesion_hu) - 20 * np.sign(200 - lesion_hu),
            f"{kind}_focus_mm3": 300.0}


@pytest.mark.parametrize("slice_mm", [1.0, 2.0])
def test_a_blurred_lytic_sphere_in_noisy_bone_measures_within_ten_percent_at_each_slice_thickness(slice_mm):
    hu, body, spacing = _body_with_sphere(slice_mm, 30.0)
    got = lesion_volume_mm3(hu, body, spacing, _features(30.0, "hypodense"), "lytic")
    assert got == pytest.approx(TRUE_MM3, rel=0.10)


def test_a_blastic_sphere_is_measured_from_its_bright_side():
    hu, body, spacing = _body_with_sphere(1.0, 900.0)
    got = lesion_volume_mm3(hu, body, spacing, _features(900.0, "hyperdense"), "blastic")
    assert got == pytest.approx(TRUE_MM3, rel=0.10)


def test_no_volume_is_given_without_a_focus_or_a_reference():
    hu, body, spacing = _body_with_sphere(1.0, 30.0)
    assert lesion_volume_mm3(hu, body, spacing, {"hypodense_focus_mean_hu": 100.0}, "lytic") is None
    assert lesion_volume_mm3(hu, body, spacing, _features(30.0, "hypodense"), "none") is None
    no_focus = {**_features(30.0, "hypodense"), "hypodense_focus_mm3": 0.0}
    assert lesion_volume_mm3(hu, body, spacing, no_focus, "lytic") == 0.0


def _scanned(paint, n: int = 144, pixel_cells: int = 3, noise_hu: float = 40.0, seed: int = 0):
    """HU painted by ``paint(zz, yy, xx)`` on a 0.25 mm grid (mm, centred), blurred as a scanner does, averaged
    down to 1 mm slices and ``pixel_cells`` x 0.25 mm pixels, plus voxel noise; returns (hu, spacing)."""
    fine = 0.25
    z, y, x = (np.arange(n) * fine - n * fine / 2 + fine / 2 for _ in range(3))
    hu = paint(*np.meshgrid(z, y, x, indexing="ij")).astype(np.float32)
    hu = ndimage.gaussian_filter(hu, [0.4 / fine, 0.6 / fine, 0.6 / fine])
    k = pixel_cells
    hu = hu.reshape(n // 4, 4, n // k, k, n // k, k).mean(axis=(1, 3, 5))
    hu = hu + np.random.default_rng(seed).normal(0, noise_hu, hu.shape).astype(np.float32)
    return hu, (1.0, fine * k, fine * k)


def _core(hu: np.ndarray, spacing) -> np.ndarray:
    """The 36 mm block less a 3 mm shell: what the report measures a lesion in."""
    centres = [(np.arange(k) + 0.5) * s - 18.0 for k, s in zip(hu.shape, spacing)]
    cz, cy, cx = np.meshgrid(*centres, indexing="ij")
    return (np.abs(cz) <= 15.0) & (np.abs(cy) <= 15.0) & (np.abs(cx) <= 15.0)


def test_dense_bone_lining_the_core_edge_is_not_taken_for_a_blastic_focus():
    """Dense bone past the half-way level along the core's edge (the body's wall, a pedicle's root) is not lesion.

    On report phantoms the core a body is measured in reaches through its posterior wall in
    places: the blurred cortex and pedicle root there made pieces of 110-330 mm3 lining the
    core's edge, each voxel counted about 60 % lesion beside a blastic focus (+17 to +25 %).
    Here dense bone reaches 1.5 mm into the core's posterior face; before, this read +36 %.
    """
    def paint(zz, yy, xx):
        hu = np.full(zz.shape, 200.0)
        hu[(yy >= 13.5) & (np.abs(xx) <= 8.0) & (np.abs(zz) <= 6.0)] = 650.0  # reaches 1.5 mm into the core
        hu[zz ** 2 + yy ** 2 + xx ** 2 <= RADIUS_MM ** 2] = 900.0
        return hu
    hu, spacing = _scanned(paint)
    core = _core(hu, spacing)
    got = lesion_volume_mm3(hu, core, spacing, _features(900.0, "hyperdense"), "blastic")
    assert got == pytest.approx(TRUE_MM3, rel=0.10)


def test_a_blastic_ball_against_the_core_edge_is_measured_not_dropped():
    """A ball cut by the core's edge, as a real one against the cortex, is thick: it is no lining rim, and counts.

    Here the edge runs 1.5 mm past the sphere's centre: the cap inside the core (3.5 mm of
    its 5 mm radius) has more than half its surface voxels on the edge, and read 0 before.
    """
    hu, body, spacing = _body_with_sphere(1.0, 900.0)
    core = body.copy()
    core[:, : hu.shape[1] // 2 + 2, :] = False  # two 0.75 mm pixels past the centre
    cap = np.pi * 3.5 ** 2 * (3 * RADIUS_MM - 3.5) / 3
    got = lesion_volume_mm3(hu, core, spacing, _features(900.0, "hyperdense"), "blastic")
    assert got == pytest.approx(cap, rel=0.15)

def _sphere_at_the_cortex(lesion_hu: float = 30.0, cortex_hu: float = 800.0):
    """A sphere (``lesion_hu``) in bone (200 HU) reaching 2 mm into the 3 mm shell, under a 1 mm cortex.

    Returns the blurred, noisy HU, the vertebra (the whole block), its core (the block less
    its 3 mm shell) and the spacing; the sphere lies inside the vertebra, so all of it is lesion.
    """
    def paint(zz, yy, xx):
        hu = np.full(zz.shape, 200.0)
        hu[np.maximum.reduce([np.abs(zz), np.abs(yy), np.abs(xx)]) > 17.0] = cortex_hu  # the cortex: the outer 1 mm
        hu[zz ** 2 + (yy - 12.0) ** 2 + xx ** 2 <= RADIUS_MM ** 2] = lesion_hu  # up to y = 17 mm: 2 mm past the core
        return hu
    hu, spacing = _scanned(paint)
    return hu, np.ones(hu.shape, bool), _core(hu, spacing), spacing


def test_a_lytic_focus_grown_into_the_cortical_shell_is_measured_there_too():
    """The cap of the sphere past the core (2 mm of its 10 mm, 10 % of its volume) counts, the bright cortex does not.

    The cortex blurs into the cap, so part of it reads as bone: here the core alone reads
    12 % low and the shell brings back more than half of what is missing.
    """
    hu, vertebra, core, spacing = _sphere_at_the_cortex()
    features = _features(30.0, "hypodense")
    core_only = lesion_volume_mm3(hu, core, spacing, features, "lytic")
    with_shell = lesion_volume_mm3(hu, core, spacing, features, "lytic", vertebra=vertebra)
    assert core_only < 0.93 * TRUE_MM3  # the cap is missing
    assert with_shell - core_only >= 0.05 * TRUE_MM3  # half of the cap or more is back
    assert with_shell == pytest.approx(TRUE_MM3, rel=0.08)


def test_a_lytic_focus_inside_the_core_gains_nothing_from_the_shell():
    hu, body, spacing = _body_with_sphere(1.0, 30.0)
    core = np.zeros(body.shape, bool)
    core[3:-3, 4:-4, 4:-4] = True  # 3 mm in from every face: the sphere (5 mm) stays inside it
    features = _features(30.0, "hypodense")
    assert lesion_volume_mm3(hu, core, spacing, features, "lytic", vertebra=body) == \
        lesion_volume_mm3(hu, core, spacing, features, "lytic")


@pytest.mark.parametrize("cortex_hu", [500.0, 1100.0])
def test_a_blastic_focus_grown_into_the_shell_counts_there_but_the_cortex_does_not(cortex_hu):
    """The shell is judged against its own HU at each depth: a cortex dimmer or brighter than the focus adds nothing.

    On real bone a blastic ball's part in the 3 mm shell used to be left out (its volumes read
    13-21 % low); judged against the marrow, the cortex beside it would count as lesion.
    """
    hu, vertebra, core, spacing = _sphere_at_the_cortex(900.0, cortex_hu)
    features = _features(900.0, "hyperdense")
    core_only = lesion_volume_mm3(hu, core, spacing, features, "blastic")
    with_shell = lesion_volume_mm3(hu, core, spacing, features, "blastic", vertebra=vertebra)
    assert core_only < 0.93 * TRUE_MM3
    assert with_shell == pytest.approx(TRUE_MM3, rel=0.08)


def test_a_mixed_lesions_blastic_part_does_not_raise_the_bone_its_lytic_part_is_measured_against():
    """Beside a blastic ball the lytic ball's shell holds bright voxels: the bone is taken without them."""
    def paint(zz, yy, xx):
        hu = np.full(zz.shape, 200.0)
        hu[zz ** 2 + (yy + 5.75) ** 2 + xx ** 2 <= RADIUS_MM ** 2] = 30.0
        hu[zz ** 2 + (yy - 5.75) ** 2 + xx ** 2 <= RADIUS_MM ** 2] = 900.0  # 1.5 mm apart
        return hu
    hu, spacing = _scanned(paint, n=160, pixel_cells=2, noise_hu=30.0, seed=1)  # 0.5 mm pixels
    lytic_part = lesion_volume_mm3(hu, np.ones(hu.shape, bool), spacing, _features(30.0, "hypodense"), "lytic")
    assert lytic_part == pytest.approx(TRUE_MM3, rel=0.06)  # the mean of its shell read it 15 % high
    both = {**_features(30.0, "hypodense"), **_features(900.0, "hyperdense")}
    assert lesion_volume_mm3(hu, np.ones(hu.shape, bool), spacing, both, "mixed") == pytest.approx(2 * TRUE_MM3, rel=0.06)


@pytest.mark.parametrize("slice_mm", [1.0, 2.0])
def test_a_lytic_spheres_growth_in_noisy_bone_is_measured_within_ten_percent(slice_mm):
    """A lesion read the lower the larger it grew while its HU was a low percentile of its seed (past the lesion's HU
    by part of the noise): on real bone growths read 26-35 % low. Here 5 mm grows to 6.5 mm (2.2 times the volume)."""
    grown = 6.5
    before = lesion_volume_mm3(*_body_with_sphere(slice_mm, 30.0, seed=3), _features(30.0, "hypodense"), "lytic")
    after = lesion_volume_mm3(*_body_with_sphere(slice_mm, 30.0, seed=4, radius_mm=grown),
                              _features(30.0, "hypodense"), "lytic")
    true_change = 4.0 / 3.0 * np.pi * (grown ** 3 - RADIUS_MM ** 3)
    assert after - before == pytest.approx(true_change, rel=0.10)


def _overlapping_mixed(overlap_mm: float):
    """A lytic (30 HU) and a blastic (900 HU, painted over it) ball of 5 mm radius overlapping by ``overlap_mm``,
    in 200 HU bone at 0.5 mm pixels: (hu, body, spacing, the union's volume in mm3)."""
    offset = RADIUS_MM - overlap_mm / 2

    def paint(zz, yy, xx):
        hu = np.full(zz.shape, 200.0)
        hu[zz ** 2 + (yy + offset) ** 2 + xx ** 2 <= RADIUS_MM ** 2] = 30.0
        hu[zz ** 2 + (yy - offset) ** 2 + xx ** 2 <= RADIUS_MM ** 2] = 900.0
        return hu
    hu, spacing = _scanned(paint, n=160, pixel_cells=2, noise_hu=30.0, seed=2)
    cap = np.pi * overlap_mm ** 2 * (3 * RADIUS_MM - overlap_mm / 2) / 12  # each ball's cap inside the other
    return hu, np.ones(hu.shape, bool), spacing, 2 * TRUE_MM3 - 2 * cap


@pytest.mark.parametrize("overlap_mm", [1.0, 2.0])
def test_a_mixed_lesions_overlapping_balls_are_not_read_as_each_others_negative_share(overlap_mm):
    """Where the balls meet, the blastic ball's blur lies in the lytic ball's region, its darker-side voxels too.

    Counted against the lytic ball, a voxel of blastic blur is a negative share several times
    its size (a contrast of 700 HU against 170): here the union read 6 % (1 mm) and 10 %
    (2 mm) low, and on the report phantoms, whose mixed balls overlap, a mixed lesion read
    5-13 % low at both visits. Each voxel in both regions now belongs to the focus whose
    side of the bone it lies on.
    """
    hu, body, spacing, union_mm3 = _overlapping_mixed(overlap_mm)
    both = {**_features(30.0, "hypodense"), **_features(900.0, "hyperdense")}
    assert lesion_volume_mm3(hu, body, spacing, both, "mixed") == pytest.approx(union_mm3, rel=0.05)
