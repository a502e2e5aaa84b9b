"""Phantoms v2 (real vertebra shapes, ribs, auxiliary labels) and the v2 recipe's helpers."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pipelines.levels import LEVELS, check_label_map
from research.phantoms.v2.anatomy import AUXILIARY_LABELS, LABEL_C7, LABEL_RIB, LABEL_SACRUM, pick_template
from research.phantoms.v2.generator import make_phantom_v2, reported_labels
from research.phantoms.v2.templates import analytic_templates, load_templates, shared_data_root

SPACING = (2.5, 2.5, 2.5)


@pytest.fixture(scope="module")
def shapes():
    """The analytic templates: the generator's fallback, the same on every machine."""
    return analytic_templates()


@pytest.fixture(scope="module")
def thoracolumbar(shapes):
    return make_phantom_v2(100000, fov="thoracolumbar", spacing=SPACING, matrix=None, templates=shapes)


def test_the_same_seed_gives_the_same_phantom(shapes):
    a = make_phantom_v2(100001, fov="lumbar", spacing=SPACING, matrix=None, templates=shapes)
    b = make_phantom_v2(100001, fov="lumbar", spacing=SPACING, matrix=None, templates=shapes)
    c = make_phantom_v2(100002, fov="lumbar", spacing=SPACING, matrix=None, templates=shapes)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert a.image.shape != c.image.shape or not np.array_equal(a.image, c.image)


def test_labels_are_the_levels_in_head_to_feet_order(thoracolumbar):
    labels = thoracolumbar.labels
    present = [lb for lb in range(1, 18) if (labels == lb).any()]
    assert len(present) >= 14
    z = [np.nonzero(labels == lb)[0].mean() for lb in present]  # axis 0 grows towards the head
    assert all(a > b for a, b in zip(z, z[1:]))
    assert (labels == LABEL_SACRUM).any() and (labels == LABEL_RIB).any()
    sacrum_top = np.nonzero(labels == LABEL_SACRUM)[0].max()
    assert sacrum_top < np.nonzero(labels == 17)[0].mean()


def test_labelled_voxels_are_bone_denser_than_their_surroundings(thoracolumbar):
    image, labels = thoracolumbar.image.astype(float), thoracolumbar.labels
    for label in (5, 10, 15):
        mask = labels == label
        shell = ndimage.binary_dilation(mask, iterations=2) & ~ndimage.binary_dilation(mask) & (labels == 0)
        assert np.median(image[mask]) > np.median(image[shell]) + 50


def test_ribs_touch_only_thoracic_vertebrae(thoracolumbar):
    labels = thoracolumbar.labels
    near_rib = ndimage.binary_dilation(labels == LABEL_RIB, iterations=1)
    touched = set(np.unique(labels[near_rib]).tolist()) - {0, LABEL_RIB}
    assert touched, "the ribs articulate with the thoracic vertebrae"
    assert touched <= set(range(1, 13)), f"ribs touch {sorted(touched)}"
    lowest_rib = np.nonzero(labels == LABEL_RIB)[0].min()
    assert lowest_rib > np.nonzero(labels == 14)[0].max(), "no rib reaches down to L2"


def test_reported_labels_drop_the_auxiliary_ones(thoracolumbar):
    reported = reported_labels(thoracolumbar.labels)
    assert reported.max() <= len(LEVELS)
    assert not np.isin(reported, list(AUXILIARY_LABELS)).any()
    vertebrae = (thoracolumbar.labels >= 1) & (thoracolumbar.labels <= 17)
    assert np.array_equal(reported > 0, vertebrae)


def test_a_thoracic_scan_labels_c7_and_no_sacrum(shapes):
    phantom = make_phantom_v2(100003, fov="neck-thoracic", spacing=SPACING, matrix=None, templates=shapes)
    assert (phantom.labels == LABEL_C7).any()
    assert not (phantom.labels == LABEL_SACRUM).any()


def test_trabecular_bone_is_heterogeneous_like_real_bone(shapes):
    phantom = make_phantom_v2(100004, fov="lumbar", spacing=(1.5, 1.5, 1.5), matrix=None, templates=shapes)
    core = ndimage.binary_erosion(phantom.labels == 15, iterations=3)
    values = phantom.image[core].astype(float)
    assert core.sum() > 100
    assert -50 < np.median(values) < 400
    assert values.std() > 40


def test_short_and_crop_fields_of_view_are_small(shapes):
    short = make_phantom_v2(100005, fov="short", spacing=SPACING, matrix=None, templates=shapes)
    crop = make_phantom_v2(100005, fov="crop", spacing=SPACING, matrix=None, templates=shapes)
    assert short.image.shape[0] * SPACING[0] <= 95
    assert crop.image.shape[2] * SPACING[2] <= 135 and (reported_labels(crop.labels) > 0).any()


def test_levels_without_a_mask_borrow_a_near_neighbours_shape(shapes):
    rng = np.random.default_rng(0)
    without_t7 = [t for t in shapes if t.level not in ("T6", "T7", "T8")]
    picked = {pick_template(rng, "T7", without_t7).level for _ in range(50)}
    assert picked <= {"T5", "T9"} and picked


def test_the_v2_dataset_and_manifest_keep_auxiliary_labels_out_of_the_reported_map():
    from pipelines.levels import check_auxiliary_labels
    from research.training_v2 import RECIPE_V2, dataset_json_v2, manifest_v2

    dataset = dataset_json_v2(3)["labels"]
    assert dataset["C7"] == LABEL_C7 and dataset["sacrum"] == LABEL_SACRUM and dataset["rib"] == LABEL_RIB
    manifest = manifest_v2(RECIPE_V2, 1.0)
    reported = check_label_map(manifest["label_map"], "manifest")
    assert sorted(reported.values(), key=LEVELS.index) == LEVELS
    assert check_auxiliary_labels(manifest["auxiliary_labels"], reported, "manifest") == AUXILIARY_LABELS


@pytest.mark.real_data
def test_verse_masks_give_real_templates_for_every_region():
    if not (shared_data_root() / "verse-masks").is_dir():
        pytest.skip(f"real_data: {shared_data_root()} has no verse-masks")
    templates = load_templates()
    levels = {t.level for t in templates}
    assert {"C7", "T1", "T5", "T9", "T12", "L1", "L5"} <= levels
    assert all(t.source != "analytic" for t in templates)
    width = {t.level: t.body[0] for t in templates}
    assert width["L3"] > width["T3"]  # lumbar bodies are wider than upper thoracic ones
