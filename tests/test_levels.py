"""Vertebra levels and label conventions (pipelines/levels.py)."""
from __future__ import annotations

import pytest

from pipelines.errors import ModelBundleError, UnknownLevelError
from pipelines.levels import (
    KNOWN_LEVELS, LEVELS, PRESETS, check_label_map, level_index, preset)


def _inverse(label_map: dict[int, str]) -> dict[str, int]:
    return {level: label for label, level in label_map.items()}


def test_levels_are_t1_to_l5_cranial_to_caudal():
    assert LEVELS == [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)]
    assert set(LEVELS) <= set(KNOWN_LEVELS)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_round_trips_through_check_label_map(name):
    label_map = preset(name)
    assert check_label_map(label_map, name) == label_map
    # Written as JSON would write it (string keys), it reads back the same.
    assert check_label_map({str(k): v for k, v in label_map.items()}, name) == label_map
    # Each of the 17 reported levels has exactly one label id.
    inverse = _inverse(label_map)
    assert len(inverse) == len(label_map)
    assert set(LEVELS) <= set(inverse)


def test_paper_preset_numbers_t1_to_l5_from_1_to_17():
    paper = preset("paper")
    assert paper == {i + 1: level for i, level in enumerate(LEVELS)}
    assert paper[1] == "T1" and paper[12] == "T12" and paper[13] == "L1" and paper[17] == "L5"


def test_verse_preset():
    verse = preset("verse")
    assert verse[8] == "T1"
    assert verse[19] == "T12"
    assert verse[20] == "L1"
    assert verse[24] == "L5"
    assert verse[1] == "C1" and verse[7] == "C7"
    assert verse[25] == "L6" and verse[28] == "T13"


def test_totalsegmentator_preset():
    ts = preset("totalsegmentator")
    assert ts[27] == "L5"
    assert ts[31] == "L1"
    assert ts[32] == "T12"
    assert ts[43] == "T1"
    assert ts[44] == "C7" and ts[50] == "C1"
    assert ts[25] == "sacrum" and ts[26] == "S1"


def test_preset_returns_a_copy():
    paper = preset("paper")
    paper[1] = "L5"
    assert preset("paper")[1] == "T1"


def test_unknown_preset_raises_unknown_level_error():
    with pytest.raises(UnknownLevelError) as caught:
        preset("nope")
    message = str(caught.value)
    assert "'nope'" in message
    for name in PRESETS:
        assert name in message
    assert isinstance(caught.value, ModelBundleError)


@pytest.mark.parametrize("key", ["abc", "1.5", "", 1.5, 2.0, None, True])
def test_check_label_map_rejects_non_integer_ids(key):
    with pytest.raises(UnknownLevelError, match="not an integer") as caught:
        check_label_map({key: "T1"}, "where.json")
    assert "where.json" in str(caught.value)


@pytest.mark.parametrize("key", [0, "0", -3])
def test_check_label_map_rejects_id_zero_and_negative_ids(key):
    with pytest.raises(UnknownLevelError, match="positive"):
        check_label_map({key: "T1"}, "where.json")


def test_check_label_map_rejects_a_level_under_two_ids():
    with pytest.raises(UnknownLevelError) as caught:
        check_label_map({1: "T1", 2: "T1", 3: "T2"}, "where.json")
    message = str(caught.value)
    assert "T1" in message and "two label ids" in message and "T2" not in message


def test_check_label_map_rejects_the_same_id_written_twice():
    # JSON keys "1" and "01" are the same label id: the second must not silently win.
    with pytest.raises(UnknownLevelError, match="label id 1 is given twice"):
        check_label_map({"1": "T1", "01": "T2"}, "where.json")


@pytest.mark.parametrize("level", ["X9", "t1", "L7", "T0", "", None])
def test_check_label_map_rejects_unknown_level_names(level):
    with pytest.raises(UnknownLevelError) as caught:
        check_label_map({1: "T1", 2: level}, "where.json")
    message = str(caught.value)
    assert repr(level) in message and "where.json" in message and "\n" not in message


def test_check_label_map_rejects_a_map_that_is_not_a_dict():
    with pytest.raises(UnknownLevelError, match="where.json"):
        check_label_map(["T1", "T2"], "where.json")


def test_check_label_map_accepts_transitional_vertebrae():
    label_map = {"1": "T13", "2": "L6", "3": "S1", "4": "sacrum"}
    assert check_label_map(label_map, "x") == {1: "T13", 2: "L6", 3: "S1", 4: "sacrum"}


def test_level_index_is_craniocaudal():
    assert level_index("C1") < level_index("C7") < level_index("T1") < level_index("T12")
    assert level_index("T12") < level_index("T13") < level_index("L1") < level_index("L5")
    assert level_index("L5") < level_index("L6") < level_index("S1") < level_index("sacrum")
