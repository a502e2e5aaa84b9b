"""The anatomical cross-checks of a vertebra naming (ribs, sacrum, count), pinned on small synthetic CTs.

Each synthetic CT is a column of box vertebrae on a straight axis (body, posterior
elements, transverse processes), straight ribs on T1-T12 running 95 mm laterally, and,
where asked, a sacrum that meets two iliac plates across a 4 mm joint. The label map
names each vertebra (body and posterior elements; not its transverse processes, as a
network often leaves them out) with a chosen offset, so that a naming that is right,
shifted or merged can be checked against what the bone shows.
"""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.levels import LEVELS, PAPER
from pipelines.model.anatomy import (check_naming, column_check, named_vertebrae, naming_note, review_vertebrae,
                                     shifted_label_map)

SPACING = (2.0, 1.0, 1.0)
SHAPE_YX = (150, 250)
AXIS_YX = (75, 125)
PITCH = {"C": 18.0, "T": 22.0, "L": 32.0}
BONE, SOFT, AIR = 700.0, 40.0, -1000.0
BACK_MM = 50.0
FLANK_MM = 118.0


def _pitch(level: str) -> float:
    return PITCH[level[0]]


def synthetic_spine(levels: list[str], names: list[str | None] | None = None, sacrum: bool = False,
                    margin_mm: tuple[float, float] = (30.0, 30.0), ribs: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """HU and labels (LPS z, y, x; axis 0 to the head) of the vertebrae ``levels`` (head to feet).

    The body fills the field in front of the skin of the back (``BACK_MM`` behind the
    axis) and between the flanks (``FLANK_MM`` either side). ``names[i]`` is the level label map gives vertebra i (None: unlabelled); a C7 or an
    L-level gets no rib, T1-T12 get one on each side. ``margin_mm`` is the scan beyond
    the top and the bottom vertebra (the sacrum, 50 mm, comes in addition).
    """
    names = list(levels) if names is None else names
    heights = [_pitch(lv) for lv in levels]
    total = margin_mm[0] + sum(heights) + (50.0 if sacrum else 0.0) + margin_mm[1]
    nz = int(round(total / SPACING[0]))
    hu = np.full((nz, *SHAPE_YX), SOFT, np.float32)
    labels = np.zeros(hu.shape, np.uint8)
    z_mm = np.arange(nz) * SPACING[0]
    _, yy, xx = np.indices((1, *SHAPE_YX))
    dx, dy = (xx - AXIS_YX[1]) * SPACING[2], (yy - AXIS_YX[0]) * SPACING[1]
    hu[:, dy[0, :, 0] > BACK_MM, :] = AIR  # the back's skin, 50 mm behind the canal: the spine lies in the back half
    hu[:, :, np.abs(dx[0, 0]) > FLANK_MM] = AIR  # the flanks, inside the field of view
    top = total - margin_mm[0]
    for level, height, name in zip(levels, heights, names):
        bottom = top - height
        body_z = (z_mm >= bottom + 3) & (z_mm < top - 3)        # a 6 mm disc between bodies
        centre = (top + bottom) / 2
        body = (np.abs(dx) <= 15) & (dy >= -35) & (dy < -5)
        arch = (np.abs(dx) <= 9) & (dy >= -5) & (dy <= 22)
        vertebra = body_z[:, None, None] & (body | arch)
        hu[vertebra] = BONE
        if name is not None:
            labels[vertebra] = LEVELS.index(name) + 1
        process_z = (np.abs(z_mm - centre) <= 6)[:, None, None]
        hu[process_z & (np.abs(dx) > 9) & (np.abs(dx) <= 30) & (dy >= 4) & (dy <= 12)] = BONE
        if ribs and level.startswith("T"):
            rib_z = (np.abs(z_mm - (centre + 2)) <= 3)[:, None, None]
            hu[rib_z & (np.abs(dx) >= 24) & (np.abs(dx) <= 95) & (dy >= -2) & (dy <= 6)] = BONE
        top = bottom
    if sacrum:
        sac_z = ((z_mm < top - 4) & (z_mm >= top - 50))[:, None, None]
        hu[sac_z & (np.abs(dx) <= 55) & (dy >= -35) & (dy <= 20)] = BONE
        hu[sac_z & (np.abs(dx) >= 59) & (np.abs(dx) <= 110) & (dy >= -20) & (dy <= 40)] = BONE
    return hu, labels


def _check(levels, names, **kw):
    hu, labels = synthetic_spine(levels, names, **kw)
    return check_naming(hu, SPACING, labels, PAPER)


THORACOLUMBAR = [f"T{i}" for i in range(6, 13)] + [f"L{i}" for i in range(1, 6)]


def test_right_names_on_ribs_and_sacrum_are_consistent():
    check = _check(THORACOLUMBAR, THORACOLUMBAR, sacrum=True)
    assert check.verdict == "consistent", check.reason
    assert check.offset == 0
    assert check.evidence["rib_bearing"] == [f"T{i}" for i in range(6, 13)]
    assert check.evidence["sacrum"]["found"]
    assert check.evidence["rib_numbering"]["from"] == "last rib"


def test_names_one_level_too_high_are_shifted_and_applied_when_ribs_and_sacrum_agree():
    names = [LEVELS[LEVELS.index(lv) + 1] if lv != "L5" else None for lv in THORACOLUMBAR]  # T6 called T7, ...
    names = names[:-1] + [None]
    hu, labels = synthetic_spine(THORACOLUMBAR, names, sacrum=True)
    check = check_naming(hu, SPACING, labels, PAPER)
    # the lowest named vertebra ("L5", really L4) does not stand on the sacrum: the unlabelled L5 does
    assert not check.evidence["sacrum"]["found"]
    assert check.verdict == "shifted" and check.offset == -1, check.reason
    assert not check.apply  # ribs alone, count not confirmed from both ends: reported, not applied


def test_a_shift_confirmed_by_ribs_and_sacrum_is_marked_applicable():
    names = [LEVELS[LEVELS.index(lv) - 1] for lv in THORACOLUMBAR]  # T6 called T5, ..., L5 called L4
    check = _check(THORACOLUMBAR, names, sacrum=True)
    assert check.verdict == "shifted" and check.offset == 1, check.reason
    assert check.apply
    assert {e["offset"] for e in check.evidence["offsets"]} == {1}


def test_whole_thoracic_spine_between_rib_free_c7_and_l1_is_numbered_from_both_ends():
    levels = ["C7"] + [f"T{i}" for i in range(1, 13)] + ["L1"]
    names = [None] + [f"T{i + 2}" for i in range(1, 13)] + [None]  # every name two levels too low
    names = [n if n is None or n in LEVELS else None for n in names]
    check = _check(levels, names, margin_mm=(5.0, 5.0))
    numbering = check.evidence["rib_numbering"]
    assert check.evidence["rib_count"] == 12
    assert numbering["both_ends"] and numbering["count_as_expected"]
    assert check.verdict == "shifted" and check.offset == -2, check.reason
    assert check.apply


def test_a_label_spanning_two_rib_levels_cannot_be_settled():
    names = list(THORACOLUMBAR)
    names[1] = "T6"  # T7 labelled T6 too: one label over two rib-bearing vertebrae
    check = _check(THORACOLUMBAR, names, sacrum=True)
    assert check.verdict == "cannot_be_settled"
    assert "ran several vertebrae together" in check.reason
    assert not check.apply


def test_no_rib_free_vertebra_and_no_sacrum_in_view_cannot_be_settled():
    levels = [f"T{i}" for i in range(3, 10)]
    check = _check(levels, levels, margin_mm=(4.0, 4.0))
    assert check.verdict == "cannot_be_settled"
    assert "cannot be numbered" in check.reason
    assert "not in view" in check.reason


def test_lumbar_name_on_a_rib_bearing_vertebra_is_reported():
    levels = [f"T{i}" for i in range(8, 13)]
    names = ["T10", "T11", "T12", "L1", "L2"]
    check = _check(levels, names, margin_mm=(4.0, 4.0))
    assert check.evidence["rib_bearing"] == names
    assert "L1, L2 named lumbar but bear(s) a rib" in check.reason


def test_column_check_finds_a_missing_level_and_a_merged_vertebra():
    levels = [f"T{i}" for i in range(5, 11)]
    hu, labels = synthetic_spine(levels, ["T5", "T6", None, "T8", "T9", "T9"])
    vertebrae = named_vertebrae(labels, SPACING, PAPER)
    column = column_check(vertebrae)
    assert not column["contiguous"]
    text = " ".join(column["problems"])
    assert "1 level(s) missing between T6 and T8" in text
    assert "T9 is" in text and "run together" in text


def test_column_check_accepts_a_clean_column():
    hu, labels = synthetic_spine(THORACOLUMBAR)
    column = column_check(named_vertebrae(labels, SPACING, PAPER))
    assert column["contiguous"], column["problems"]
    assert [s["from"] for s in column["steps"]] == THORACOLUMBAR[:-1]


def test_no_named_vertebra_cannot_be_settled():
    hu = np.zeros((20, 30, 30), np.float32)
    check = check_naming(hu, SPACING, np.zeros(hu.shape, np.uint8), PAPER)
    assert check.verdict == "cannot_be_settled" and "no vertebra" in check.reason


def test_shifted_label_map_moves_levels_and_drops_those_pushed_out():
    mapping = shifted_label_map(PAPER, 2)
    assert mapping[1] == 3            # T1 -> T3
    assert mapping[15] == 17          # L3 -> L5
    assert mapping[16] == 0 and mapping[17] == 0
    assert shifted_label_map({1: "T1", 30: "sacrum"}, -1) == {1: 0, 30: 30}


def test_review_reports_no_vertebra_when_the_pieces_lie_in_no_trunk():
    hu, labels = synthetic_spine(THORACOLUMBAR[-4:])
    _, _, xx = np.indices((1, *SHAPE_YX))
    hu[:, :, np.abs(xx[0, 0] - AXIS_YX[1]) * SPACING[2] > 60] = AIR  # a limb, 120 mm wide
    review = review_vertebrae(hu, SPACING, labels, PAPER)
    assert review.no_vertebra and "does not lie in a trunk" in review.no_vertebra
    assert review.no_vertebra.endswith("Is this a spine CT?")
    assert not review.labels.any()
    assert review.naming["verdict"] == "no_vertebra"
    assert naming_note(review.naming) == review.no_vertebra


def test_review_of_an_empty_label_map_says_the_model_found_nothing():
    hu, labels = synthetic_spine(THORACOLUMBAR[-2:])
    review = review_vertebrae(hu, SPACING, np.zeros_like(labels), PAPER)
    assert review.no_vertebra.startswith("the model found no vertebra (T1-L5) in this series")


def test_review_renames_only_an_unambiguous_shift_and_records_the_network_names():
    names = [LEVELS[LEVELS.index(lv) - 1] for lv in THORACOLUMBAR]
    hu, labels = synthetic_spine(THORACOLUMBAR, names, sacrum=True)
    review = review_vertebrae(hu, SPACING, labels, PAPER)
    assert review.naming["applied"] and review.naming["network_names"] == names
    assert [v.level for v in named_vertebrae(review.labels, SPACING, PAPER)] == THORACOLUMBAR
    assert "renamed by +1" in naming_note(review.naming)
    # ribs alone (no sacrum in view): the same shift is reported, not applied
    hu, labels = synthetic_spine(THORACOLUMBAR[:-1], names[:-1])
    review = review_vertebrae(hu, SPACING, labels, PAPER)
    assert review.naming["verdict"] == "shifted" and not review.naming["applied"]
    assert np.array_equal(review.labels, labels)
    assert "not applied" in naming_note(review.naming)


def test_review_drops_a_label_far_off_the_column():
    hu, labels = synthetic_spine(THORACOLUMBAR)
    labels[10:20, 60:70, 5:15] = LEVELS.index("T3") + 1  # a "T3" on the lateral edge, nowhere near the spine
    review = review_vertebrae(hu, SPACING, labels, PAPER)
    assert [d["level"] for d in review.naming["dropped"]] == ["T3"]
    assert not (review.labels == LEVELS.index("T3") + 1).any()
    assert review.naming["verdict"] == "consistent"


def test_review_keeps_vertebrae_forward_in_the_trunk_as_lordotic_l4_l5_but_drops_a_label_at_the_sternum():
    hu, labels = synthetic_spine(THORACOLUMBAR)
    hu[:, :25, :] = AIR  # the front of the trunk in the field: the vertebrae lie at about 40 % of its depth
    labels[10:20, 27:35, 115:135] = LEVELS.index("T3") + 1  # a "T3" just behind the front, where the sternum is
    review = review_vertebrae(hu, SPACING, labels, PAPER)
    assert [d["level"] for d in review.naming["dropped"]] == ["T3"]
    depths = [p["depth_from_front"] for p in review.naming["evidence"]["positions"] if p["level"] != "T3"]
    assert all(0.35 <= d < 0.45 for d in depths), depths  # kept, where a half-depth rule would drop them
    assert [v.level for v in named_vertebrae(review.labels, SPACING, PAPER)] == THORACOLUMBAR


def test_review_keeps_vertebrae_of_a_targeted_reconstruction_whose_field_cuts_the_body():
    hu, labels = synthetic_spine(THORACOLUMBAR[-4:])
    narrow = slice(AXIS_YX[1] - 70, AXIS_YX[1] + 70)  # a 140 mm field centred on the spine
    review = review_vertebrae(hu[:, :, narrow], SPACING, labels[:, :, narrow], PAPER)
    assert review.no_vertebra is None
    assert all(p["inside_trunk"] and p["field_cuts_body"] for p in review.naming["evidence"]["positions"])
