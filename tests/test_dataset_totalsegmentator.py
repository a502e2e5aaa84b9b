"""TotalSegmentator's two numberings (pipelines/levels.py) and its label-name convention.

The ids below are TotalSegmentator's own (totalsegmentator/map_to_binary.py): the merged
``total`` output numbers the vertebrae 25..50, its vertebrae model
Dataset292_TotalSegmentator_part2_vertebrae_1532subj numbers them 1..26.
"""
from __future__ import annotations

import pytest

from pipelines.levels import LEVELS, check_label_map, level_of_label_name, preset

# class_map_part_vertebrae of map_to_binary.py, as the dataset.json of Dataset292 names its labels.
DATASET292_NAMES = {1: "sacrum", 2: "vertebrae_S1", 3: "vertebrae_L5", 4: "vertebrae_L4", 5: "vertebrae_L3",
                    6: "vertebrae_L2", 7: "vertebrae_L1", 8: "vertebrae_T12", 9: "vertebrae_T11",
                    10: "vertebrae_T10", 11: "vertebrae_T9", 12: "vertebrae_T8", 13: "vertebrae_T7",
                    14: "vertebrae_T6", 15: "vertebrae_T5", 16: "vertebrae_T4", 17: "vertebrae_T3",
                    18: "vertebrae_T2", 19: "vertebrae_T1", 20: "vertebrae_C7", 21: "vertebrae_C6",
                    22: "vertebrae_C5", 23: "vertebrae_C4", 24: "vertebrae_C3", 25: "vertebrae_C2",
                    26: "vertebrae_C1"}
# The vertebrae of class_map["total"] (the merged output).
TOTAL_NAMES = {25: "sacrum", 26: "vertebrae_S1", **{27 + i: f"vertebrae_L{5 - i}" for i in range(5)},
               **{32 + i: f"vertebrae_T{12 - i}" for i in range(12)},
               **{44 + i: f"vertebrae_C{7 - i}" for i in range(7)}}


def test_vertebrae_model_preset_names_each_of_dataset292s_26_labels_as_its_label_name_does():
    vertebrae = check_label_map(preset("totalsegmentator-vertebrae"), "totalsegmentator-vertebrae")
    assert sorted(vertebrae) == list(range(1, 27))
    for label, name in DATASET292_NAMES.items():
        assert vertebrae[label] == level_of_label_name(name), (label, name)
    assert vertebrae[3] == "L5" and vertebrae[19] == "T1" and vertebrae[20] == "C7" and vertebrae[26] == "C1"


def test_merged_total_preset_keeps_the_ids_of_totalsegmentators_total_output():
    total = preset("totalsegmentator")
    for label, name in TOTAL_NAMES.items():
        assert total[label] == level_of_label_name(name), (label, name)


def test_merged_preset_on_dataset292_weights_would_name_every_reported_vertebra_wrongly():
    """The bug of issue 14: ids 1..26 read with the merged map. None of T1..L5 comes out right."""
    total = preset("totalsegmentator")
    right = [label for label, name in DATASET292_NAMES.items()
             if level_of_label_name(name) in LEVELS and total.get(label) == level_of_label_name(name)]
    assert right == []


def test_both_totalsegmentator_presets_give_each_reported_level_one_id():
    for name in ("totalsegmentator", "totalsegmentator-vertebrae"):
        inverse = {level: label for label, level in preset(name).items()}
        assert set(LEVELS) <= set(inverse), name


@pytest.mark.parametrize("name, level", [("vertebrae_T1", "T1"), ("T1", "T1"), ("T1 vertebra", "T1"),
                                         ("L5 vertebra", "L5"), ("sacrum", "sacrum"), ("vertebrae_S1", "S1"),
                                         ("Vertebrae_C7", "C7"), ("liver", None), ("vertebrae_T14", None),
                                         ("spinal_cord", None)])
def test_label_names_of_trained_model_folders_map_to_levels_or_to_none(name, level):
    assert level_of_label_name(name) == level
