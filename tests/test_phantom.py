"""The phantom generator: reproducible, anatomically ordered, realistic HU, lesions with truth."""
from __future__ import annotations

import numpy as np
import pytest

from research.phantoms.anatomy import sample_anatomy
from pipelines.levels import LEVELS
from research.phantoms.generator import AIR, FAT, LUNG, MUSCLE, make_grid, make_phantom, render

SMALL = dict(spacing=(2.5, 1.5, 1.5), matrix=None)


def _noise_free(seed: int, fov: str = "thoracolumbar"):
    """A phantom drawn without blur or noise, so HU values can be checked exactly."""
    rng = np.random.default_rng(seed)
    anat = sample_anatomy(rng)
    from research.phantoms.generator import field_of_view

    grid = make_grid(anat, field_of_view(anat, fov, rng), (2.0, 1.0, 1.0), None, rng)
    hu, labels, lesions, truth = render(anat, grid, rng, blur_mm=1e-3, noise_hu=0.0)
    return anat, hu, labels, lesions, truth


def test_same_seed_gives_identical_phantom():
    a, b = make_phantom(7, **SMALL), make_phantom(7, **SMALL)
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.labels, b.labels)
    assert a.truth == b.truth


def test_different_seeds_give_different_anatomy():
    a, b = make_phantom(1, **SMALL), make_phantom(2, **SMALL)
    assert a.image.shape != b.image.shape or not np.array_equal(a.image, b.image)


@pytest.mark.parametrize("fov,must_have", [("thoracic", {"T2", "T11"}), ("lumbar", {"L1", "L5"}),
                                           ("thoracolumbar", {"T6", "L4"})])
def test_field_of_view_covers_its_region(fov, must_have):
    phantom = make_phantom(3, fov=fov, **SMALL)
    assert must_have <= set(phantom.levels_present())


def test_levels_are_ordered_head_to_feet():
    phantom = make_phantom(5, fov="thoracolumbar", **SMALL)
    centres = [np.argwhere(phantom.labels == LEVELS.index(lv) + 1)[:, 0].mean() for lv in phantom.levels_present()]
    assert all(a > b for a, b in zip(centres, centres[1:])), "array index 0 grows towards the head"


def test_vertebrae_grow_caudally():
    anat, _, labels, _, _ = _noise_free(11)
    t3, t10, l4 = (np.sum(labels == LEVELS.index(lv) + 1) for lv in ("T3", "T10", "L4"))
    assert t3 < t10 < l4


def test_tissues_have_realistic_hounsfield_units():
    anat, hu, labels, lesions, _ = _noise_free(12)
    vert = anat.vertebra("L2")
    assert 650 <= vert.cortical_hu <= 1200  # ~700-1200, lower in osteoporotic bone
    assert 100 <= vert.trabecular_hu <= 300
    values = set(np.unique(hu).tolist())
    for tissue in (AIR, FAT, MUSCLE, LUNG):
        assert any(abs(v - tissue) <= 30 for v in values), f"no voxel near {tissue} HU"
    assert hu[labels > 0].max() <= 1250


def test_lesion_mask_lies_inside_vertebrae_with_the_right_density():
    for seed in range(20, 40):
        anat, hu, labels, lesions, truth = _noise_free(seed)
        if not (lesions > 0).any():
            continue
        assert (labels[lesions > 0] > 0).all(), "a lesion voxel outside every labelled vertebra"
        lytic, blastic = hu[lesions == 1], hu[lesions == 2]
        if lytic.size:
            assert np.median(lytic) <= 110
        if blastic.size:
            assert np.median(blastic) >= 590
        return
    pytest.fail("no lesion in 20 phantoms")


def test_truth_class_matches_the_lesion_kinds_drawn():
    for seed in range(40, 60):
        rng = np.random.default_rng(seed)
        anat = sample_anatomy(rng)
        for vert in anat.vertebrae:
            kinds = {lesion.kind for lesion in vert.lesions}
            expected = "none" if not kinds else ("mixed" if len(kinds) == 2 else next(iter(kinds)))
            assert vert.lesion_class == expected


def test_about_a_quarter_of_vertebrae_carry_lesions():
    involved = total = 0
    for seed in range(300):
        anat = sample_anatomy(np.random.default_rng(seed))
        for vert in anat.vertebrae:
            if vert.level in LEVELS:
                total += 1
                involved += vert.lesion_class != "none"
    assert 0.18 <= involved / total <= 0.32, involved / total


def test_realistic_scan_grid_uses_clinical_spacing():
    phantom = make_phantom(9)
    sz, sy, sx = phantom.grid.spacing
    assert 1.0 <= sz <= 3.0 and 0.6 <= sy <= 1.0 and sy == sx
    assert phantom.image.shape[1:] == (512, 512)
    assert phantom.image.dtype == np.int16
