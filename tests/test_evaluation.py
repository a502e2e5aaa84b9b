"""Evaluation arithmetic and case discovery, checked with known answers (no network involved)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.errors import EvaluationError
from research.evaluation import (confusion, discover_cases, evaluate_case, guess_convention, score_levels,
                                  summarise, to_level_index, vertebra_dice, format_table)
from pipelines.levels import LEVELS, PAPER, preset
from research.phantoms.generator import make_phantom
from research.phantoms.nifti import write_nifti_case
from support.paths import REAL_CT, SHARED_DATA

REAL_CROP = SHARED_DATA / "real-ct-crop-l2-l4"


def _two_vertebrae():
    ref = np.zeros((20, 10, 10), np.uint8)
    ref[2:8] = 13  # L1
    ref[10:16] = 14  # L2
    return ref


def test_perfect_prediction_scores_dice_one_and_all_levels_right():
    ref = _two_vertebrae()
    rows = score_levels(confusion(to_level_index(ref, PAPER), to_level_index(ref, PAPER)))
    assert [r["level"] for r in rows] == ["L1", "L2"]
    assert all(r["dice"] == 1.0 and r["level_correct"] for r in rows)


def test_off_by_one_labelling_keeps_shape_but_fails_level_identification():
    ref = _two_vertebrae()
    pred = np.where(ref > 0, ref + 1, 0).astype(np.uint8)  # L1 called L2, L2 called L3
    rows = score_levels(confusion(to_level_index(ref, PAPER), to_level_index(pred, PAPER)))
    assert [r["predicted_level"] for r in rows] == ["L2", "L3"]
    assert not any(r["level_correct"] for r in rows)
    assert rows[0]["dice"] == 0.0


def test_vertebra_dice_ignores_levels_so_a_misnamed_vertebra_still_counts_as_found():
    ref = _two_vertebrae()
    misnamed = np.where(ref > 0, ref + 1, 0).astype(np.uint8)
    half_missed = ref.copy()
    half_missed[2:5] = 0  # half of L1 (300 of 1200 vertebra voxels) not found
    ref_idx = to_level_index(ref, PAPER)
    assert vertebra_dice(confusion(ref_idx, to_level_index(misnamed, PAPER))) == 1.0
    assert vertebra_dice(confusion(ref_idx, to_level_index(half_missed, PAPER))) == pytest.approx(
        2 * 900 / (1200 + 900), abs=1e-4)


def test_half_overlap_gives_the_expected_dice():
    ref = _two_vertebrae()
    pred = ref.copy()
    pred[2:5][pred[2:5] == 13] = 0  # half of L1 missed
    rows = score_levels(confusion(to_level_index(ref, PAPER), to_level_index(pred, PAPER)))
    assert rows[0]["dice"] == pytest.approx(2 * 300 / (600 + 300), abs=1e-4)


def test_verse_and_totalsegmentator_ids_map_to_the_same_levels():
    verse = np.array([8, 19, 20, 24, 7, 25])
    assert [LEVELS[i - 1] if i else None for i in to_level_index(verse, preset("verse"))] == \
        ["T1", "T12", "L1", "L5", None, None]
    total = np.array([43, 32, 31, 27, 26, 79])
    assert [LEVELS[i - 1] if i else None for i in to_level_index(total, preset("totalsegmentator"))] == \
        ["T1", "T12", "L1", "L5", None, None]


def test_convention_is_guessed_from_label_ids():
    assert guess_convention(np.array([0, 1, 17])) == "paper"
    assert guess_convention(np.array([0, 21, 23])) == "verse"
    assert guess_convention(np.array([0, 32, 33, 79])) == "totalsegmentator"


def test_summary_averages_over_every_reference_vertebra():
    cases = [{"case": "a", "vertebrae": [{"level": "T1", "dice": 1.0, "level_correct": True}]},
             {"case": "b", "vertebrae": [{"level": "T1", "dice": 0.5, "level_correct": False},
                                         {"level": "T2", "dice": 0.9, "level_correct": True}]}]
    report = summarise(cases)
    assert report["mean_dice"] == pytest.approx(0.8)
    assert report["level_accuracy"] == pytest.approx(2 / 3, abs=1e-4)
    assert report["per_level"]["T1"] == {"dice": 0.75, "n": 2}


def test_summary_vertebra_dice_is_the_mean_over_the_cases_that_report_it():
    cases = [{"case": "a", "vertebra_dice": 0.9, "vertebrae": [{"level": "T1", "dice": 0.0, "level_correct": False}]},
             {"case": "b", "vertebra_dice": 0.5, "vertebrae": [{"level": "T2", "dice": 0.5, "level_correct": True}]},
             {"case": "c", "vertebrae": []}]
    report = summarise(cases)
    assert report["vertebra_dice"] == pytest.approx(0.7)
    assert "vertebra Dice, levels ignored (mean over 3 cases): 0.7000" in format_table(report)


def test_lesion_confusion_counts_truth_against_prediction():
    rows = [{"level": "T1", "dice": 1, "level_correct": True, "lesion_truth": "lytic",
             "lesion_predicted": "lytic", "lesion_max_diameter_mm": 8.0},
            {"level": "T2", "dice": 1, "level_correct": True, "lesion_truth": "lytic",
             "lesion_predicted": "none", "lesion_max_diameter_mm": 3.0},
            {"level": "T3", "dice": 1, "level_correct": True, "lesion_truth": "none",
             "lesion_predicted": None, "lesion_max_diameter_mm": 0.0}]
    report = summarise([{"case": "a", "vertebrae": rows}])
    assert report["lesion_confusion"]["matrix"]["lytic"]["lytic"] == 1
    assert report["lesion_confusion"]["matrix"]["lytic"]["none"] == 1
    assert report["lesion_confusion"]["matrix"]["none"]["missed"] == 1
    assert report["lesion_confusion"]["accuracy"]["lytic"] == 0.5
    assert report["lesion_confusion_ge5mm"]["accuracy"]["lytic"] == 1.0  # the 3 mm focus is left out


@pytest.mark.real_data
def test_real_verse_crop_is_found_as_a_verse_case():
    (case,) = discover_cases(REAL_CROP)
    assert case.convention == "verse" and case.ct.name.endswith("_ct.nii.gz")


@pytest.mark.real_data
def test_reference_fed_back_as_prediction_scores_perfectly_on_the_real_crop():
    """An oracle segmenter proves the reorientation (PIR -> LPS) keeps CT and labels aligned."""
    (case,) = discover_cases(REAL_CROP)
    from research.volume_io import read_volume

    ref = read_volume(case.reference)
    verse = preset("verse")
    paper_of = {label: next(k for k, v in PAPER.items() if v == lv) for label, lv in verse.items() if lv in LEVELS}

    def oracle(ct):
        out = np.zeros(ct.array.shape, np.uint8)
        for label, paper_label in paper_of.items():
            out[np.rint(ref.array) == label] = paper_label
        return out

    result = evaluate_case(case, oracle, PAPER)
    assert [r["level"] for r in result["vertebrae"]] == ["L2", "L3", "L4"]
    assert all(r["dice"] == 1.0 and r["level_correct"] for r in result["vertebrae"])


def test_phantom_case_written_as_nifti_reads_back_with_its_truth(tmp_path):
    phantom = make_phantom(100001, spacing=(3.0, 2.0, 2.0), matrix=None)
    write_nifti_case(phantom, tmp_path / "case")
    (case,) = discover_cases(tmp_path)
    assert case.convention == "paper" and case.truth["seed"] == 100001
    result = evaluate_case(case, lambda ct: ct.array * 0 + phantom.labels, PAPER)
    assert len(result["vertebrae"]) == len(phantom.levels_present())
    assert all(r["dice"] == 1.0 for r in result["vertebrae"])


def test_missing_cases_folder_is_a_clear_error(tmp_path):
    with pytest.raises(EvaluationError, match="does not exist"):
        discover_cases(tmp_path / "nope")
    with pytest.raises(EvaluationError, match="no case found"):
        discover_cases(tmp_path)


def test_truth_json_of_a_phantom_is_valid_json(tmp_path):
    phantom = make_phantom(100002, spacing=(3.0, 2.0, 2.0), matrix=None)
    write_nifti_case(phantom, tmp_path)
    truth = json.loads((tmp_path / "truth.json").read_text())
    assert set(truth["vertebrae"]) == set(phantom.levels_present())


@pytest.mark.real_data
def test_real_dicom_series_and_totalsegmentator_labels_share_one_grid():
    """The JPEG 2000 series (empty UIDs) reads as a folder and lines up with its TotalSegmentator map."""
    series, labels = REAL_CT, SHARED_DATA / "real-ct-dicom-t11-t12-totalseg-labels.nii.gz"
    from research.evaluation import Case
    from research.volume_io import read_volume

    ref = read_volume(labels)
    assert guess_convention(np.rint(ref.array).astype(int)) == "totalsegmentator"
    oracle = lambda ct: to_level_index(np.rint(ref.array).astype(np.int32), preset("totalsegmentator"))  # noqa: E731
    result = evaluate_case(Case("real", series, labels, "auto"), oracle, PAPER)
    assert [r["level"] for r in result["vertebrae"]] == ["T11", "T12"]
    assert all(r["dice"] == 1.0 for r in result["vertebrae"])
