"""The spine report in words, as the key images and the PDF page say it: collapse, change since the prior, density."""
from __future__ import annotations

from pipelines.outputs.report_text import (change_words, collapse_words, density_line, grade_words, level_notes,
                                           prior_line)
from pipelines.records import VertebraFinding


def test_a_fractured_body_is_worded_with_its_grade_and_morphology_and_a_normal_one_not_at_all():
    assert collapse_words({"genant_grade": 2, "genant_morphology": "wedge"}) == "Genant 2 wedge"
    assert collapse_words({"genant_grade": 0, "genant_morphology": None}) == ""
    assert collapse_words({"genant_grade": None}) == "" and collapse_words(None) == ""
    assert grade_words({"genant_grade": 2, "genant_morphology": "wedge"}) == "2 wedge"
    assert grade_words({"genant_grade": 0, "genant_morphology": None}) == "0" and grade_words({}) == ""


def test_the_change_since_the_prior_says_new_gone_growth_and_new_collapse():
    assert change_words({"compared": True, "lesion_change": "new", "new_collapse": False}) == "new lesion"
    assert change_words({"compared": True, "lesion_change": "gone"}) == "lesion gone"
    grown = {"compared": True, "lesion_change": "persisting", "lesion_volume_change_ml": 0.32,
             "lesion_volume_change_pct": 30.27, "new_collapse": True}
    assert change_words(grown) == "lesion +0.32 ml (+30 %), new collapse"
    assert change_words({"compared": True, "lesion_change": "none", "new_collapse": False}) == "no change"
    assert change_words({"compared": False, "reason": "the segmentations disagree"}) == "not compared"
    assert change_words(None) == ""


def test_each_level_gets_its_collapse_and_its_change_and_a_quiet_level_no_note():
    findings = [VertebraFinding("L1", 1, 10, 40.0, 200.0, "lytic", measurements={"genant_grade": 3,
                                                                                   "genant_morphology": "crush"}),
                VertebraFinding("L2", 2, 10, 40.0, 200.0, measurements={"genant_grade": 0})]
    change = {"vertebrae": {"L1": {"compared": True, "lesion_change": "persisting", "lesion_volume_change_ml": -0.03,
                                   "lesion_volume_change_pct": -3.2, "new_collapse": True},
                            "L2": {"compared": True, "lesion_change": "none", "new_collapse": False}}}
    notes = level_notes(findings, change)
    assert notes == {"L1": "Genant 3 crush; lesion -0.03 ml (-3 %), new collapse", "L2": "no change"}
    assert level_notes(findings, None) == {"L1": "Genant 3 crush"}


def test_the_density_line_names_site_threshold_source_and_correction_or_why_not():
    flag = {"site": "L1", "trabecular_hu": 85.0, "threshold_hu": 90.25, "source": "TotalSegmentator",
            "low": True, "contrast": "no contrast", "flag": "low bone density"}
    line = density_line(flag)
    assert line.startswith("Bone density: low bone density") and "L1 trabecular 85 HU" in line
    assert "90.25 HU" in line and "TotalSegmentator" in line and "no contrast" in line
    assert "neither L1 nor L2" in density_line({"flag": None, "reason": "neither L1 nor L2 measured"})


def test_the_prior_line_names_the_prior_study_the_levels_not_in_both_and_the_warnings():
    change = {"prior": {"study_instance_uid": "1.2.3"}, "only_now": ["L5"], "only_before": [],
              "warnings": ["the prior was analysed by demo 1.0, this study by demo 2.0"]}
    line = prior_line(change)
    assert "prior study 1.2.3" in line and "Not in the prior: L5" in line and "demo 1.0" in line
    assert prior_line(None) is None
