"""The column rebuilt from the CT's own anatomy (pipelines/model/column.py), on a synthetic spine.

Four vertebrae with a 2 mm cortex round a marrow as dark as soft tissue (60 HU, normal in
an old adult), 6 mm discs, a spinal canal behind them, an arch round it, and a rib at
each level reaching far laterally. What must hold: each body ends up whole (its dark
marrow included) under the level its rib level was given, the discs, the canal and the
far ribs under none, and the lesion core stays away from the discs.
"""
from __future__ import annotations

import numpy as np

from pipelines.model.column import CORE_MARGIN_MM, _part_names, rebuild_column

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
