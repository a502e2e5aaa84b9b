"""The column found on the CT alone where the network finds none in a short field (pipelines/model/ct_column.py).

On the two real crops in ../shared/data the demo network finds no vertebra; the CT shows
them plainly. What must hold: the crops' vertebrae are found and split at their discs, the
names say they are a prior where nothing in the field names them, no lesion is called on
their normal bone, a short field with no spine in it stays "no vertebra", and the rules the
finder stands on (dark marrow mid-body is no disc; ribs make a column thoracic) hold.
"""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from pipelines.levels import LEVELS
from pipelines.model import ct_column
from pipelines.model.anatomy import review_ct_only, review_vertebrae
from research.volume_io import read_volume
from support.paths import SHARED_DATA

LEVEL_MAP = {i + 1: level for i, level in enumerate(LEVELS)}
CROP = SHARED_DATA / "real-ct-crop-l2-l4"
T11_T12 = SHARED_DATA / "real-ct-dicom-t11-t12"


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def _id(level: str) -> int:
    return LEVELS.index(level) + 1


@pytest.mark.real_data
def test_the_real_l2_l4_crop_is_found_on_the_ct_alone_split_at_its_discs_and_named_as_a_prior():
    ct = read_volume(CROP / "sub-ct_label-22_ct.nii.gz")
    ref = np.rint(read_volume(CROP / "sub-ct_seg-vert_label-22_msk.nii.gz").array)
    hu = ct.array.astype(np.float32)
    review = review_vertebrae(hu, ct.spacing, np.zeros(hu.shape, np.uint8), LEVEL_MAP)
    assert review.no_vertebra is None
    assert review.naming["evidence"]["named"] == ["L2", "L3", "L4"]
    assert review.naming["verdict"] == "cannot_be_settled"  # no rib, no sacrum: nothing names a lumbar crop
    assert "prior" in review.naming["reason"]
    assert review.no_heights  # disc planes are estimates: no height, no collapse grade
    # the whole L3, arch included: 0.80 measured; 0.79 without the disc rim left out between the endplates
    assert _dice(ref == 22, review.labels == _id("L3")) >= 0.795
    assert _dice(ref == 23, review.labels == _id("L4")) >= 0.75
    # L2's inferior articular processes reach down beside L3's: 0.61 measured, 0.51 when bone the flood
    # carried up across a facet joint is dropped instead of given to the vertebra of its slab
    assert _dice(ref == 21, review.labels == _id("L2")) >= 0.58
    found = review.naming["evidence"]["ct_only"]
    truth_discs_mm = [57.0, 19.5]  # the middles of the L2/L3 and L3/L4 discs on this crop's own slices
    assert np.allclose(found["discs_z_mm"], truth_discs_mm, atol=3.0)


@pytest.fixture(scope="module")
def t11_t12():
    """The real T11-T12 series as the CT-only path reviews it, and TotalSegmentator's labels on it (LPS)."""
    ct = read_volume(T11_T12)
    hu = ct.array.astype(np.float32)
    review = review_ct_only(hu, ct.spacing, np.zeros(hu.shape, np.uint8), LEVEL_MAP)
    labels = sitk.GetArrayFromImage(sitk.DICOMOrient(
        sitk.ReadImage(str(SHARED_DATA / "real-ct-dicom-t11-t12-totalseg-labels.nii.gz")), "LPS"))
    return review, labels


@pytest.mark.real_data
def test_the_real_t11_t12_series_is_found_as_two_vertebrae_and_its_ribs_make_it_thoracic(t11_t12):
    review, labels = t11_t12
    assert review is not None
    assert review.naming["evidence"]["named"] == ["T11", "T12"]
    assert review.naming["evidence"]["ct_only"]["ribs_leaving_field_z_mm"]  # the 11th/12th ribs leave the 40 mm field
    assert review.naming["verdict"] == "cannot_be_settled"
    spine = np.isin(labels, (32, 33))
    assert _dice(spine, review.labels > 0) >= 0.6  # TotalSegmentator's own labels (model output, with holes)


@pytest.mark.real_data
def test_the_contrast_filled_aorta_against_the_real_t12_is_left_out_of_it(t11_t12):
    """The aorta's lumen (~150 HU) and calcified wall lie against T12's front: 7,584 voxels of TotalSegmentator's
    aorta were in T12 and the body read 48 mm deep before ``vessels``; 546 and 43 mm now (T12 Dice 0.57 -> 0.67)."""
    review, labels = t11_t12
    found = review.naming["evidence"]["ct_only"]
    [aorta] = found["vessels_left_out"]
    assert 10.0 <= aorta["lumen_radius_mm"] <= 16.0  # TotalSegmentator's aorta: ~615 voxels a slice, r ~13.7 mm
    assert ((review.labels > 0) & (labels == 52)).sum() <= 1000
    assert found["body_depth_mm"] <= 45.0
    assert _dice(labels == 32, review.labels == _id("T12")) >= 0.68  # 0.665 with the T12/L1 disc taken for body


@pytest.mark.real_data
def test_a_normal_real_crop_found_on_the_ct_alone_gets_no_lesion_call():
    from pipelines.lesions import ThresholdClassifier

    ct = read_volume(CROP / "sub-ct_label-22_ct.nii.gz")
    hu = ct.array.astype(np.float32)
    review = review_ct_only(hu, ct.spacing, np.zeros(hu.shape, np.uint8), LEVEL_MAP)
    finding = ThresholdClassifier().classify(hu, review.lesion_labels == _id("L3"), ct.spacing)
    assert finding.kind in ("none", "indeterminate")


@pytest.mark.real_data
def test_a_short_slab_of_the_real_thorax_is_found_but_its_rib_numbering_on_a_cut_vertebra_is_not_trusted():
    """Slices 10-49 of the real chest CT: the whole scan's column puts T9-T12 there (T12 cut by the slab's bottom).

    The rib rule would call the cut vertebra at the bottom rib-free, hence L1, and name the
    slab one level low with confidence; a short field's numbering must rest on a whole
    rib-free vertebra, so here the names stay a prior and the verdict says so.
    """
    ct = read_volume(SHARED_DATA / "real-ct-thorax-dicom")
    slab = ct.array[10:50].astype(np.float32)
    review = review_ct_only(slab, ct.spacing, np.zeros(slab.shape, np.uint8), LEVEL_MAP)
    assert review is not None
    assert review.naming["verdict"] == "cannot_be_settled"
    assert review.naming["evidence"]["named"] == ["T9", "T10", "T11", "T12"]


def test_a_short_fields_rib_numbering_stands_only_on_a_whole_rib_free_vertebra():
    # parts head to feet: 0 | 1 | 2 | 3; ribs in parts 0 and 1
    assert ct_column._numbering_stands([0, 1], 4, "last rib", [], [40.0, 30.0], 2.0)  # part 2 is whole
    assert not ct_column._numbering_stands([0, 1, 2], 4, "last rib", [], [40.0, 30.0, 20.0], 2.0)  # part 3 is cut
    assert not ct_column._numbering_stands([0, 1], 4, "last rib", [5.0], [40.0, 30.0], 2.0)  # a rib leaves below
    assert ct_column._numbering_stands([2, 3], 5, "first rib", [], [20.0, 10.0], 2.0)
    assert not ct_column._numbering_stands([1, 2], 4, "first rib", [], [20.0, 10.0], 2.0)  # part 0 is cut
    assert not ct_column._numbering_stands([1, 2], 4, None, [], [20.0, 10.0], 2.0)


def test_a_short_field_of_a_long_bone_has_no_canal_with_a_body_in_front():
    """A femur's shaft: a cortex ring round dark marrow, fat around. Its marrow is a hole, but nothing is in front."""
    shape, spacing = (30, 160, 160), (2.0, 1.0, 1.0)
    hu = np.full(shape, -80.0, np.float32)
    y, x = np.indices(shape[1:])
    r = np.hypot(y - 80, x - 80)
    hu[:, (r <= 14) & (r > 9)] = 900.0
    hu[:, r <= 9] = 40.0
    rng = np.random.default_rng(3)
    hu += rng.normal(0, 20, shape).astype(np.float32)
    assert ct_column.find_centre(hu, spacing) is None
    review = review_vertebrae(hu, spacing, np.zeros(shape, np.uint8), LEVEL_MAP)
    assert review.no_vertebra.startswith("the model found no vertebra")


def test_a_long_scan_is_left_to_the_network():
    assert ct_column.short_field((60, 512, 512), (2.0, 0.8, 0.8))
    assert not ct_column.short_field((200, 512, 512), (2.0, 0.8, 0.8))


def test_dark_marrow_in_the_middle_of_a_body_is_no_disc():
    """Two discs 36 mm apart; the marrow half-way is as dark, between the same endplates, but too near either disc."""
    sz = 1.5
    z = np.arange(60) * sz
    profile = np.full(len(z), 300.0)
    for disc in (15.0, 51.0):
        profile[np.abs(z - disc) <= 4.0] = 80.0            # the disc
        profile[np.abs(np.abs(z - disc) - 5.5) <= 1.0] = 450.0  # its endplates
    profile[np.abs(z - 33.0) <= 5.0] = 60.0                # dark marrow mid-body
    discs, scores = ct_column.find_discs(profile, sz, pitch_mm=36.0)
    assert [round(d * sz) for d in discs] == [51, 15]  # head to feet
    assert all(s >= 60.0 for s in scores)


# the real T11-T12 series' core profile (HU per 2 mm slice, feet first): the T12/L1 disc fills the two lowest
# slices under T12's inferior endplate, the T11/T12 disc lies at slice 16
T11_T12_PROFILE = np.array([73, 71, 104, 189, 208, 158, 135, 132, 133, 151, 150, 131, 134, 161, 149, 93, 68, 85, 165,
                            213], float)


def test_a_disc_the_fields_edge_cuts_is_a_disc_not_the_body_beside_it():
    layers = ct_column.disc_layers(T11_T12_PROFILE, 2.0, [16.0], pitch_mm=47.3)
    assert np.flatnonzero(layers[:5]).tolist() == [0, 1, 2]  # the cut disc, up to T12's endplate
    assert not layers[19]  # the field's top slice is T11's endplate: bone
    assert ct_column._edge_disc(T11_T12_PROFILE[::-1], 4) == 0


def test_a_field_that_starts_in_marrow_has_no_disc_at_its_edge():
    marrow = np.array([150, 140, 160, 150, 145, 155, 150, 160], float)
    assert ct_column._edge_disc(marrow, 4) == 0


def test_dark_marrow_at_the_fields_edge_near_a_disc_is_no_disc():
    """On the real L2-L4 crop L2's marrow reads 28-34 HU under an endplate of 291, 12 mm from the L2/L3 disc:
    as dark as a disc, too near the one found to be the next."""
    sz = 1.5
    profile = np.array([300, 450, 80, 80, 80, 80, 450, 150, 150, 150, 150, 150, 150, 291, 33, 34, 28], float)
    layers = ct_column.disc_layers(profile, sz, [3.5], pitch_mm=42.9)
    assert ct_column._edge_disc(profile[::-1], 5) == 3  # it looks like one ...
    assert not layers[-3:].any()  # ... but lies 0.3 pitch from the disc


def test_prior_names_make_a_ribbed_column_end_at_t12_and_a_rib_free_one_lumbar_round_l3():
    assert ct_column.prior_names(2, [False, True]) == (["T11", "T12"], "the lowest rib-bearing vertebra named T12")
    assert ct_column.prior_names(3, [True, True, False])[0] == ["T11", "T12", "L1"]
    assert ct_column.prior_names(3, [False, False, False])[0] == ["L2", "L3", "L4"]
    assert ct_column.prior_names(5, [False] * 5)[0] == ["L1", "L2", "L3", "L4", "L5"]
    assert ct_column.prior_names(6, [False] * 6)[0][0] == "L1"  # never thoracic without a rib


@pytest.mark.real_data  # v2 phantoms take their vertebra shapes from the VerSe masks in ../shared/data
def test_the_short_field_evaluation_finds_and_names_a_mid_lumbar_phantom_field():
    from research.evaluate_short_fields import evaluate_seed, summarise

    row = evaluate_seed(300020)  # a "short" field of L2-L4 (76 mm), never used to set the method
    assert row["truth"] == ["L2", "L3", "L4"] and row["found"] == ["L2", "L3", "L4"]
    assert row["vertebra_dice"] >= 0.6 and row["names_right"] == 3
    summary = summarise([row, {**row, "found": [], "vertebra_dice": 0.0, "names_right": 0,
                               "best_dice": {lv: 0.0 for lv in row["truth"]}}])
    assert summary["found"] == 1 and summary["found_vertebrae"] == 3 and summary["named_right"] == 3
    assert summary["consistent_and_wrong"] == 0


@pytest.mark.real_data
@pytest.mark.parametrize("seed", [300012, 300019])
def test_a_narrow_canal_and_a_marrow_hole_beside_it_do_not_hide_the_column(seed):
    """300012: its canal shows as a hole only where bone is in half the slices; 300019: the body's marrow is a
    hole too, nearer the middle of the projection, with no disc along it. Both were missed before."""
    from research.evaluate_short_fields import evaluate_seed

    row = evaluate_seed(seed)
    assert row["found"] and row["vertebra_dice"] >= 0.4
