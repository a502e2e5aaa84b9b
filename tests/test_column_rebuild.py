"""The column rebuilt from the CT's own anatomy (pipelines/model/column.py), on a synthetic spine.

Four vertebrae with a 2 mm cortex round a marrow as dark as soft tissue (60 HU, normal in
an old adult), 6 mm discs, a spinal canal behind them, an arch round it, and a rib at
each level reaching far laterally. What must hold: each body ends up whole (its dark
marrow included) under the level its rib level was given, the discs, the canal and the
far ribs under none, and the lesion core stays away from the discs. And on the real
lumbar crop: the discs below the ribs are found with the lumbar discs' endplate window.
"""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.model.column import (CORE_MARGIN_MM, END_SCORE_HU, _part_names, core_profile, disc_positions, disc_score,
                                    endplate_window, rebuild_column)
from research.volume_io import read_volume
from support.paths import SHARED_DATA

SPACING = (2.0, 1.0, 1.0)
SHAPE = (82, 130, 160)
CENTRE_Y, CENTRE_X = 50, 80
BODY_R, CANAL_Y, CANAL_R = 14, 78, 7
CENTRES_MM = [137.0, 115.0, 93.0, 71.0, 49.0, 27.0]  # head to feet; bodies 16 mm tall, discs 6 mm
RIB_BEARING = 4  # T9-T12 bear ribs; the two below (L1, L2) do not
RIBS_MM = [c + 4.0 for c in CENTRES_MM[:RIB_BEARING]]  # a rib level lies in the upper part of its vertebra
NAMES = ["T9", "T10", "T11", "T12"]
LEVELS_FOUND = NAMES + ["L1", "L2"]
LABEL_MAP = {i + 9: f"T{i + 9}" for i in range(4)} | {13: "L1", 14: "L2", 1: "T1"}


def _spine():
    hu = np.full(SHAPE, 40.0, np.float32)
    z = (np.arange(SHAPE[0]) * SPACING[0])[:, None, None]
    y, x = (a[None] for a in np.indices(SHAPE[1:]))
    r = np.hypot(y - CENTRE_Y, x - CENTRE_X)
    canal = np.hypot(y - CANAL_Y, x - CENTRE_X)
    truth = np.zeros(SHAPE, np.int8)
    for k, c in enumerate(CENTRES_MM):
        slab = np.abs(z - c) <= 8.0
        body = slab & (r <= BODY_R)
        hu[body & (r > BODY_R - 2)] = 600.0  # cortex
        hu[body & (r <= BODY_R - 2)] = 60.0  # dark marrow
        hu[slab & (np.abs(z - c) > 6.0) & (r <= BODY_R)] = 600.0  # endplates
        truth[body] = k + 1
        arch = slab & (canal > CANAL_R) & (canal <= CANAL_R + 4) & (y > CENTRE_Y + BODY_R - 2)
        hu[arch] = 500.0
        if k < RIB_BEARING:
            rib = (np.abs(z - c) <= 4.0) & (np.abs(y - CANAL_Y) <= 3) & (np.abs(x - CENTRE_X) >= CANAL_R + 3)
            hu[rib & (np.abs(x - CENTRE_X) <= 75)] = 500.0
        if k < len(CENTRES_MM) - 1:
            disc = (np.abs(z - (c - 11.0)) < 3.0) & (r <= BODY_R)
            hu[disc] = 90.0
    hu[(canal <= CANAL_R) & np.ones_like(z, bool)] = 20.0
    return hu, truth, canal <= CANAL_R - 2, np.abs(x - CENTRE_X) >= 55  # (the canal's rim blurs with the arch)


def test_each_body_is_labelled_whole_with_the_name_of_its_rib_level():
    hu, truth, canal, far = _spine()
    axis = np.tile([CENTRE_Y + 12.0, CENTRE_X], (SHAPE[0], 1))
    rib_z = [r / SPACING[0] for r in RIBS_MM]
    column = rebuild_column(hu, SPACING, axis, rib_z, NAMES, LABEL_MAP)
    assert column is not None and column.record["levels"] == LEVELS_FOUND  # the lumbar ones counted on below T12
    id_of = {level: label for label, level in LABEL_MAP.items()}
    for k, name in enumerate(LEVELS_FOUND):
        body = truth == k + 1
        share = float(np.mean(column.labels[body] == id_of[name]))
        assert share >= 0.9, f"{name}: {share:.2f} of its body (dark marrow included) got its own level"
    assert not column.labels[np.broadcast_to(canal, SHAPE)].any(), "the spinal canal was labelled as bone"
    assert not column.labels[np.broadcast_to(far, SHAPE) & (hu >= 400)].any(), "a rib far from the spine was labelled"
    # the disc above each rib's vertebra, found by its endplates (the top one has none above it: placed by offset)
    assert column.record["discs_z_mm"][1:] == [c + 11.0 for c in CENTRES_MM[1:]]
    assert column.record["discs"]["found_by"] == ["rib level + the clear discs' offset"] + ["endplates"] * 3
    assert len(column.record["discs"]["below_last"]) == 2  # under T12 and under L1; none under L2 (no body below)


def test_the_endplate_window_stays_under_half_a_body_so_dark_marrow_is_no_disc():
    assert endplate_window(22.0) < 8.0  # the bodies above: 16 mm tall, 6 mm discs
    assert endplate_window(37.0) >= 7.0  # a lumbar pitch: the endplates of a 10 mm disc lie 5-7 mm from its middle
    assert endplate_window(10.0) == 4.0 and endplate_window(80.0) == 8.0


def test_lesions_are_judged_only_on_the_body_core_away_from_the_discs():
    hu, truth, _, _ = _spine()
    axis = np.tile([CENTRE_Y + 12.0, CENTRE_X], (SHAPE[0], 1))
    column = rebuild_column(hu, SPACING, axis, [r / SPACING[0] for r in RIBS_MM], NAMES, LABEL_MAP)
    cores = column.cores
    assert cores is not None and set(np.unique(cores)) == {0, 9, 10, 11, 12, 13, 14}
    assert np.all(column.labels[cores > 0] == cores[cores > 0])  # a core lies inside its own vertebra
    z_mm = np.nonzero(cores)[0] * SPACING[0]
    for disc in (c + 11.0 for c in CENTRES_MM[1:]):
        assert np.min(np.abs(z_mm - disc)) >= CORE_MARGIN_MM - SPACING[0] / 2


def test_too_few_rib_levels_leave_the_network_column_alone():
    hu, _, _, _ = _spine()
    axis = np.tile([CENTRE_Y + 12.0, CENTRE_X], (SHAPE[0], 1))
    assert rebuild_column(hu, SPACING, axis, [CENTRES_MM[0] / 2], ["T9"], LABEL_MAP) is None
    assert rebuild_column(hu, SPACING, axis, [46.5, 35.5], ["T9"], LABEL_MAP) is None  # names do not match


def test_the_part_above_the_first_rib_disc_is_the_level_above_and_the_one_below_the_last_disc_the_next():
    assert _part_names(["T11", "T12"], below=2) == ["T10", "T11", "T12", "L1", "L2"]
    assert _part_names(["T1", "T2"], below=0) == ["C7", "T1", "T2"]
    assert _part_names(["T12"], below=6)[-1] == "S1"  # past L5: not a reported level


@pytest.mark.real_data
def test_the_real_lumbar_discs_stand_out_only_with_the_endplate_window_of_their_pitch():
    """On the real L2-L4 crop the two discs are 8-12 mm thick: their endplates lie beyond 4 mm of their middle."""
    ct = read_volume(SHARED_DATA / "real-ct-crop-l2-l4" / "sub-ct_label-22_ct.nii.gz")
    ref = np.rint(read_volume(SHARED_DATA / "real-ct-crop-l2-l4" / "sub-ct_seg-vert_label-22_msk.nii.gz").array)
    sz = ct.spacing[0]
    l3 = np.argwhere(ref == 22)
    front = l3[:, 1].min()
    body = l3[l3[:, 1] <= front + 20]  # the front 30 mm of L3: its body, not the arch
    centre = np.tile(body[:, 1:].mean(0), (ct.array.shape[0], 1))
    profile = core_profile(ct.array.astype(np.float32), ct.spacing, centre)
    core = np.zeros(ref.shape, bool)
    core[:, int(centre[0, 0]) - 3:int(centre[0, 0]) + 4, int(centre[0, 1]) - 3:int(centre[0, 1]) + 4] = True
    gaps = [z for z in range(1, ref.shape[0] - 1) if not (ref[z][core[z]] > 0).any()]  # no vertebra in the core
    discs = [np.mean([z for z in gaps if z < l3[:, 0].mean()]), np.mean([z for z in gaps if z > l3[:, 0].mean()])]
    pitch_mm = (discs[1] - discs[0]) * sz
    assert 30.0 <= pitch_mm <= 45.0  # L3, about 37 mm from disc to disc
    thoracic, lumbar = disc_score(profile, sz), disc_score(profile, sz, endplate_window(pitch_mm))
    for disc in discs:
        near = slice(int(round(disc - 4 / sz)), int(round(disc + 4 / sz)) + 1)
        assert lumbar[near].max() >= END_SCORE_HU > thoracic[near].max()
        assert abs(near.start + int(np.argmax(lumbar[near])) - disc) * sz <= 3.0


def _thoraco_lumbar_profile(sz: float = 2.0):
    """A core profile head to feet: three lower thoracic vertebrae (30 mm pitch, 6 mm discs), then four lumbar (36, 10 mm).

    Returns the profile (index 0 = feet, as ``disc_positions`` reads it), the rib levels
    (4 mm under the disc above each thoracic vertebra) and the lumbar discs' indices.
    """
    layers = []  # (HU, mm) from the head down
    for pitch, disc, marrow in [(30.0, 6.0, 200.0)] * 3 + [(36.0, 10.0, 150.0)] * 4:
        layers += [(90.0, disc), (400.0, 2.0), (marrow, pitch - disc - 4.0), (400.0, 2.0)]
    layers += [(90.0, 10.0), (400.0, 2.0), (150.0, 30.0)]  # the disc under the last one, and bone below it
    head_down = np.concatenate([np.full(int(round(mm / sz)), hu) for hu, mm in layers])
    starts = np.cumsum([0] + [int(round(mm / sz)) for _, mm in layers])
    middles = [starts[i] + int(round(layers[i][1] / sz)) // 2 for i in range(0, len(layers) - 2, 4)]  # discs' middles
    n = len(head_down)
    z = [n - 1 - m for m in middles]  # head to feet, as indices from the feet
    rib_z = [d - 4.0 / sz for d in z[:3]]
    return head_down[::-1].copy(), rib_z, z[3:]


def test_the_discs_below_the_ribs_are_found_by_endplates_as_far_apart_as_a_lumbar_disc():
    profile, rib_z, lumbar_discs = _thoraco_lumbar_profile()
    discs, notes = disc_positions(profile, rib_z, 2.0)
    found = [b["z"] for b in notes["below_last"]]
    assert len(found) == len(lumbar_discs) and all(abs(f - d) <= 1 for f, d in zip(found, lumbar_discs)), found
    # the thoracic window alone (4 mm) does not reach a 10 mm disc's endplates: the column would stop under T12
    assert disc_score(profile, 2.0)[lumbar_discs].max() < END_SCORE_HU
