"""The spine report's must-show figures on report phantoms, on their ground-truth labels (no network).

Report phantoms (``research.phantoms.report``) carry fractures of known Genant grade and
morphology, known trabecular HU, lesions reaching the pedicles and follow-up pairs; the
figures (``research.report_figures``) compare the pipeline's measurements with that truth
under HFS, FFS, prone and oblique geometries of the same voxels.
"""
from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from research.phantoms.dicom import write_followup_pair
from research.phantoms.generator import make_phantom
from research.phantoms.nifti import truth_record
from research.phantoms.report import GRADE_LOSSES, LESION_BONE_HU, ReportDesign, followup_pair, truth_heights
from research.report_figures import ACQUISITIONS, Figures, add_phantom, pair_figures

DESIGNS = {1: ((1, "wedge"), (2, "biconcave")), 2: ((3, "crush"), (1, "biconcave"))}
"""Each grade and each morphology, two lumbar fractures a phantom (at most two fit with intact neighbours)."""


@pytest.fixture(scope="module")
def figures():
    """The designs measured under the four acquisitions (about 30 s: the figure tests are ``slow``)."""
    out = Figures()
    fractured = 0
    for seed, fractures in DESIGNS.items():
        phantom = make_phantom(seed, report=ReportDesign(fractures=fractures))
        fractured += sum(1 for t in phantom.truth.values() if t["genant_grade"])
        add_phantom(out, phantom, ACQUISITIONS)
    return {**out.summary(), "drawn_fractures": fractured}


def test_a_report_phantom_draws_the_fractures_asked_for_with_their_truth():
    design = ReportDesign(fractures=((3, "wedge"), (1, "crush")))
    phantom = make_phantom(4, report=design)
    drawn = {lv: t for lv, t in phantom.truth.items() if t["genant_grade"]}
    assert sorted((t["genant_grade"], t["genant_morphology"]) for t in drawn.values()) == [(1, "crush"), (3, "wedge")]
    for truth in drawn.values():
        low, high = GRADE_LOSSES[truth["genant_grade"]]
        assert 100 * low <= truth["height_loss_pct"] <= 100 * high
    wedge = next(t for t in drawn.values() if t["genant_morphology"] == "wedge")["heights_mm"]
    assert wedge["anterior"] < 0.6 * wedge["posterior"]
    json.dumps(truth_record(phantom))  # the truth file can be written


def test_a_report_phantom_leaves_the_seeds_default_phantom_unchanged():
    before = make_phantom(9, spacing=(2.5, 1.5, 1.5), matrix=None)
    make_phantom(9, report=ReportDesign())
    after = make_phantom(9, spacing=(2.5, 1.5, 1.5), matrix=None)
    assert np.array_equal(before.image, after.image) and before.truth == after.truth


def test_truth_heights_follow_the_drawn_shape_of_an_intact_body():
    phantom_anatomy = make_phantom(3, report=ReportDesign(fracture_count=0))
    heights = [t["heights_mm"] for t in phantom_anatomy.truth.values() if t["heights_mm"]]
    assert heights and all(h["middle"] > h["anterior"] == pytest.approx(h["posterior"]) for h in heights)


@pytest.mark.slow
def test_heights_are_within_a_millimetre_of_the_truth_under_every_acquisition(figures):
    assert all(mae <= 1.0 for mae in figures["height_mae_mm"].values()), figures


@pytest.mark.slow
def test_heights_stay_within_one_slice_between_acquisitions_of_the_same_voxels(figures):
    assert figures["height_spread_over_acquisitions_mm"] <= 1.25, figures


@pytest.mark.slow
def test_genant_grade_is_right_on_fractured_vertebrae_and_zero_on_normal_ones(figures):
    assert figures["drawn_fractures"] == 4 and figures["fractured_vertebrae"] == 4 * len(ACQUISITIONS)
    assert figures["genant_correct_on_fractured_pct"] >= 90.0, figures["misses"]
    assert figures["grade_0_on_normal_pct"] >= 95.0, figures["misses"]


@pytest.mark.slow
def test_trabecular_hu_is_within_10_hu_of_the_truth(figures):
    assert figures["trabecular_hu_max_error"] <= 10.0, figures


@pytest.mark.slow
def test_sins_components_equal_the_truth_on_lesion_vertebrae(figures):
    assert figures["sins_vertebrae"] >= 2 * len(ACQUISITIONS)
    assert figures["sins_components_equal_pct"] == 100.0, figures["misses"]


def test_a_pedicle_lesion_is_truth_for_posterolateral_involvement():
    phantom = make_phantom(2, report=ReportDesign(lesions=1, pedicle_lesions=1))
    involved = [t for t in phantom.truth.values() if t["posterior_involvement"]]
    assert len(involved) == 1 and involved[0]["posterior_lesion_volume_ml"] > 0.1
    assert involved[0]["sins"]["posterolateral_involvement"] == (3 if len(involved[0]["posterior_involvement"]) == 2
                                                                 else 1)


@pytest.mark.slow
def test_follow_up_pairs_report_lesion_growth_new_lesions_and_new_collapse():
    figures = pair_figures(3, 1)
    assert figures["lesion_volume_change_ml_error_pct"]["mean"] <= 10.0, figures
    found, drawn = figures["new_collapse_reported"].split("/")
    assert found == drawn != "0", figures
    found, drawn = figures["new_lesions_reported"].split("/")
    assert found == drawn != "0", figures


def test_a_follow_up_pair_is_one_patient_two_studies_later_with_its_change_truth(tmp_path):
    baseline, followup = followup_pair(6)
    change = followup.extra_truth["change"]
    assert change["new_collapse"] and change["new_lesions"]
    grown = [c for c in change["vertebrae"].values() if c["lesion_change"] == "persisting"]
    assert grown and all(c["lesion_volume_change_ml"] > 0 for c in grown)
    first, second = (pydicom.dcmread(paths[0], stop_before_pixels=True)
                     for paths in write_followup_pair((baseline, followup), tmp_path))
    assert (first.PatientID, first.IssuerOfPatientID) == (second.PatientID, second.IssuerOfPatientID)
    assert second.StudyDate > first.StudyDate and second.StudyInstanceUID != first.StudyInstanceUID
    for level in change["new_lesions"]:  # bone a lytic focus shows in, unchanged between the visits
        assert baseline.truth[level]["trabecular_hu"] == followup.truth[level]["trabecular_hu"]
        assert followup.truth[level]["trabecular_hu"] >= LESION_BONE_HU[0] - 30  # the scan's HU offset at most
    level = change["new_collapse"][0]
    assert followup.truth[level]["genant_grade"] >= 2 and baseline.truth[level]["genant_grade"] == 0
    assert truth_heights  # the truth's own formula is importable for readers of the module
