"""The paper's validation figures (research/paper_validation.py): Dice subgroups, kappa, paired comparison."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from research.errors import PaperValidationError
from research.paper_validation import (VertebraScore, cohen_kappa, compare, cross_validation_figures, dice_summary,
                                       format_comparison, format_validation, held_out_fold, lesion_agreement,
                                       mean_sd, scores_from_nnunet_summary, validation_report)


def _scores(dices, lesions=None, folds=None, case="c1", levels=None):
    levels = levels or [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)]
    return [VertebraScore(case if not isinstance(case, list) else case[i], levels[i % len(levels)], d,
                          None if folds is None else folds[i], None if lesions is None else lesions[i])
            for i, d in enumerate(dices)]


def test_mean_sd_uses_the_sample_standard_deviation_and_skips_nan():
    item = mean_sd([0.9, 1.0, float("nan"), 0.8])
    assert item == {"mean": 0.9, "sd": round(float(np.std([0.9, 1.0, 0.8], ddof=1)), 4), "n": 3}


def test_dice_summary_splits_by_fold_region_and_lesion_status():
    levels = ["T1", "T12", "L1", "L5"]
    scores = [VertebraScore("a", "T1", 0.9, 0, "none"), VertebraScore("a", "T12", 0.7, 0, "lytic"),
              VertebraScore("b", "L1", 0.8, 1, "none"), VertebraScore("b", "L5", 0.6, 1, "blastic")]
    summary = dice_summary(scores)
    assert summary["overall"]["mean"] == 0.75 and summary["overall"]["n"] == 4
    assert summary["per_fold"]["0"]["mean"] == 0.8 and summary["per_fold"]["1"]["mean"] == 0.7
    assert summary["over_folds"]["mean"] == 0.75
    assert summary["thoracic"]["mean"] == 0.8 and summary["lumbar"]["mean"] == 0.7
    assert summary["with_lesions"]["mean"] == 0.65 and summary["without_lesions"]["mean"] == 0.85
    assert summary["per_lesion_class"]["mixed"]["n"] == 0
    assert list(summary["per_level"]) == levels


def test_kappa_is_one_for_perfect_agreement_zero_for_chance_and_matches_the_textbook_example():
    truth = ["none", "lytic", "blastic", "mixed"] * 5
    assert cohen_kappa(truth, truth) == 1.0
    # 2x2 textbook case: 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no -> kappa 0.4
    a = ["lytic"] * 25 + ["none"] * 25
    b = ["lytic"] * 20 + ["none"] * 5 + ["lytic"] * 10 + ["none"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4, abs=1e-4)
    assert math.isnan(cohen_kappa(["none"] * 4, ["none"] * 4))


def test_lesion_agreement_counts_missed_vertebrae_apart():
    scores = [VertebraScore("a", "T1", 0.9, lesion="lytic", lesion_predicted="lytic"),
              VertebraScore("a", "T2", 0.9, lesion="none", lesion_predicted="blastic"),
              VertebraScore("a", "T3", 0.0, lesion="mixed", lesion_predicted=None)]
    agreement = lesion_agreement(scores)
    assert agreement["matrix"]["lytic"]["lytic"] == 1 and agreement["matrix"]["none"]["blastic"] == 1
    assert agreement["matrix"]["mixed"]["missed"] == 1 and agreement["n"] == 2 and agreement["missed"] == 1


def test_a_classifier_answer_outside_the_four_classes_gets_its_own_column_and_counts_as_disagreement():
    scores = [VertebraScore("a", "T1", 0.9, lesion="lytic", lesion_predicted="lytic"),
              VertebraScore("a", "T2", 0.9, lesion="none", lesion_predicted="none"),
              VertebraScore("a", "T3", 0.9, lesion="none", lesion_predicted="indeterminate")]
    agreement = lesion_agreement(scores)
    assert agreement["columns"][-2:] == ["indeterminate", "missed"]
    assert agreement["matrix"]["none"]["indeterminate"] == 1
    assert 0 < agreement["kappa"] < 1
    assert "indeterminate" in format_validation(validation_report(scores, {"name": "m"}))


def test_compare_pairs_vertebrae_and_finds_a_consistent_gain_significant():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.85, 0.95, 40)
    lesions = ["lytic" if i % 4 == 0 else "none" for i in range(40)]
    cases = [f"c{i // 17}" for i in range(40)]
    a = _scores(list(base + 0.03 + rng.normal(0, 0.005, 40)), lesions, case=cases)
    b = _scores(list(base), lesions, case=cases)
    result = compare(a, b, "ours", "totalsegmentator")
    assert result["all"]["n"] == 40 and result["lesion_vertebrae"]["n"] == 10
    assert result["all"]["mean_difference"] == pytest.approx(0.03, abs=0.005)
    assert result["all"]["p_value"] < 1e-6
    text = format_comparison(result)
    assert "vertebrae with lesions" in text and "+3.32%" in text and "+5.18%" in text


def test_compare_of_identical_models_reports_no_difference_and_no_test():
    a = _scores([0.9, 0.8, 0.7], ["none", "lytic", "none"])
    result = compare(a, a)
    assert result["all"]["mean_difference"] == 0.0 and result["all"]["p_value"] is None


def test_compare_refuses_models_scored_on_different_cases():
    with pytest.raises(PaperValidationError, match="share no scored vertebra"):
        compare(_scores([0.9], case="x"), _scores([0.9], case="y"))


def test_nnunet_validation_summary_becomes_one_score_per_reference_vertebra(tmp_path):
    summary = {"metric_per_case": [
        {"reference_file": "/x/gt_segmentations/case_a.nii.gz", "prediction_file": "/x/case_a.nii.gz",
         "metrics": {"1": {"Dice": 0.9, "n_ref": 100, "n_pred": 90}, "13": {"Dice": 0.8, "n_ref": 50, "n_pred": 50},
                     "2": {"Dice": float("nan"), "n_ref": 0, "n_pred": 0}}}]}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    scores = scores_from_nnunet_summary(tmp_path / "summary.json", 2, {("case_a", "L1"): "mixed"})
    assert [(s.case, s.level, s.dice, s.fold, s.lesion) for s in scores] == \
        [("case_a", "T1", 0.9, 2, None), ("case_a", "L1", 0.8, 2, "mixed")]
    figures = cross_validation_figures({2: tmp_path / "summary.json"}, {})
    assert figures["dice"]["overall"]["mean"] == 0.85 and figures["paper"]["mean_dice"] == 0.9433


def test_held_out_fold_reads_the_splits_of_the_trained_folds_only():
    manifest = {"cross_validation": {"splits": [{"train": ["b", "c"], "val": ["a"]}, {"train": ["a", "c"], "val": ["b"]},
                                                {"train": ["a", "b"], "val": ["c"]}]},
                "nnunet": {"folds": ["0", "1"]}}
    assert held_out_fold(manifest) == {"a": 0, "b": 1}
    assert held_out_fold({"nnunet": {"folds": ["all"]}}) == {}


def test_validation_table_sets_the_papers_figures_beside_the_models():
    scores = _scores([0.95, 0.93, 0.91, 0.90], ["none", "lytic", "none", "mixed"], folds=[0, 0, 1, 1])
    text = format_validation(validation_report(scores, {"name": "m", "version": "1"}))
    assert "94.33 % ± 2.24 %" in text and "fold 0" in text and "with lesions" in text


# --- validate(): a bundle on an imported dataset, held-out folds, two models compared -------------------------

@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from research.datasets.tcia import import_collection
    from research.datasets.tcia_phantom import write_collection

    root = tmp_path_factory.mktemp("pv")
    write_collection(root / "coll", [41, 42, 43], ["HFS", "FFS"], spacing=(5.0, 4.0, 4.0))
    import_collection(root / "coll", root / "coll" / "lesions.xlsx", root / "ds", log=lambda *_: None)
    return root / "ds"


class _Bundle:
    """What validate() reads of a bundle: name, folds, manifest, label map."""

    def __init__(self, name, folds=("all",), splits=None):
        from pipelines.levels import preset

        self.name, self.version, self.sha256, self.path = name, "1", "0" * 64, name
        self.folds = folds
        self.manifest = {"nnunet": {"folds": list(folds)}, "cross_validation": {"splits": splits or []}}
        self.label_map = preset("paper")


def _reference_segmenter(erode: int, calls: list):
    """segmenter_for(bundle, folds) whose model returns the case's reference labels, eroded ``erode`` times.

    The reference is the one ``evaluate_case`` read just before segmenting (see the monkeypatch below).
    """
    from scipy import ndimage

    def make(bundle, folds):
        calls.append((bundle.name, tuple(folds)))

        def segment(volume):
            return _current_reference["labels"] if not erode else \
                np.where(ndimage.binary_erosion(_current_reference["labels"] > 0, iterations=erode),
                         _current_reference["labels"], 0)
        return segment
    return make


_current_reference: dict = {}


def test_validate_scores_each_case_with_its_held_out_fold_and_compare_finds_the_better_model(dataset, monkeypatch):
    from research import evaluation
    from research.datasets.raw import read_lesion_table
    from research.paper_validation import validate

    real_read = evaluation.read_volume

    def read_and_remember(path):
        volume = real_read(path)
        if "labelsTr" in str(path):
            _current_reference["labels"] = np.rint(volume.array).astype(np.int32)
        return volume

    monkeypatch.setattr(evaluation, "read_volume", read_and_remember)
    ids = sorted(p.name[:-7] for p in (dataset / "labelsTr").glob("*.nii.gz"))
    splits = [{"train": [c for c in ids if c != ids[f]], "val": [ids[f]]} for f in range(3)]
    calls: list = []
    perfect = validate(_Bundle("cv", ("0", "1", "2"), splits), dataset, _reference_segmenter(0, calls), log=lambda *_: None)
    assert sorted(calls) == [("cv", ("0",)), ("cv", ("1",)), ("cv", ("2",))]  # each case by the fold that held it out
    assert {s.fold for s in perfect} == {0, 1, 2}
    assert all(s.dice == 1.0 for s in perfect)
    assert {(s.case, s.level): s.lesion for s in perfect} == read_lesion_table(dataset)
    eroded = validate(_Bundle("other"), dataset, _reference_segmenter(1, calls), log=lambda *_: None)
    assert ("other", ("all",)) in calls
    result = compare(perfect, eroded, "cv", "other")
    assert result["all"]["n"] == len(perfect) and result["all"]["mean_difference"] > 0.05
    assert result["all"]["p_value"] < 0.001
    assert result["lesion_vertebrae"]["n"] == sum(s.lesion != "none" for s in perfect)
    text = format_validation(validation_report(perfect, {"name": "cv"}))
    assert "100.00 % ± 0.00 %" in text and "fold 2" in text
