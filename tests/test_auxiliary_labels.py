"""Auxiliary labels (C7, sacrum, ribs): validated, used for naming, never reported; v2 recipe helpers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.errors import UnknownLevelError
from pipelines.levels import PAPER, check_auxiliary_labels
from pipelines.model.bundles import ModelBundle

AUX = {18: "C7", 19: "sacrum", 20: "rib"}


def test_auxiliary_labels_are_checked_against_the_reported_map():
    assert check_auxiliary_labels({"18": "C7", "19": "sacrum", "20": "rib"}, PAPER, "m") == AUX
    with pytest.raises(UnknownLevelError, match="both reported"):
        check_auxiliary_labels({"17": "rib"}, PAPER, "m")
    with pytest.raises(UnknownLevelError, match="names 'liver'"):
        check_auxiliary_labels({"21": "liver"}, PAPER, "m")
    with pytest.raises(UnknownLevelError, match="two label ids"):
        check_auxiliary_labels({"21": "rib", "22": "rib"}, PAPER, "m")


def _segmenter(auxiliary: dict[int, str]):
    """A Segmenter with its bundle and label maps but no network (only the post-processing is used)."""
    from pipelines.model.segmenter import Segmenter

    seg = Segmenter.__new__(Segmenter)
    manifest = {"name": "t", "version": "0", "auxiliary_labels": {str(k): v for k, v in auxiliary.items()}}
    seg.bundle = ModelBundle(Path("."), manifest, dict(PAPER))
    seg.relabel = True
    seg.auxiliary = auxiliary
    return seg


def _column(labels_top_down: list[int]) -> np.ndarray:
    """Blocks of 8 slices (20 mm at 2.5 mm), 2-slice gaps, listed head first; axis 0 grows towards the head."""
    n = len(labels_top_down)
    out = np.zeros((10 * n + 4, 16, 24), np.uint8)
    for k, label in enumerate(labels_top_down):
        top = out.shape[0] - 2 - 10 * k
        out[top - 8:top, 3:13, 3:13] = label
    return out


@pytest.mark.parametrize("column, reported", [([18, 1, 2, 3], {1, 2, 3}), ([16, 17, 19], {16, 17})])
def test_auxiliary_labels_never_come_out_of_the_segmenter(column, reported):
    seg = _segmenter(AUX)
    low = _column(column)
    low[low.shape[0] - 22:low.shape[0] - 14, 4:12, 15:22] = 20  # a rib beside the second piece
    out = seg._clean(low.copy(), (2.5, 2.5, 2.5))
    assert not np.isin(out, list(AUX)).any()
    assert set(np.unique(out)) == {0} | reported


def _split(low: np.ndarray, pairs: dict[int, tuple[int, int]]) -> np.ndarray:
    """Relabel each block of ``low`` half with one level and half with the next (an unsure network)."""
    out = low.copy()
    for label, (upper, lower) in pairs.items():
        zs = np.nonzero((low == label).any(axis=(1, 2)))[0]
        mid = zs.mean()
        for z in zs:
            out[z][low[z] == label] = upper if z > mid else lower
    return out


def test_c7_decides_between_two_namings_the_network_is_unsure_of():
    # under C7, three vertebrae the network calls "T2/T3", "T3/T4", "T4/T5"
    low = _split(_column([18, 101, 102, 103]), {101: (2, 3), 102: (3, 4), 103: (4, 5)})
    with_c7 = _segmenter(AUX)._clean(low.copy(), (2.5, 2.5, 2.5))
    without = _segmenter({})._clean(np.where(low == 18, 0, low).astype(np.uint8), (2.5, 2.5, 2.5))
    assert set(np.unique(with_c7)) == {0, 1, 2, 3}  # counted from C7
    assert set(np.unique(without)) == {0, 2, 3, 4}  # the network's own best guess, one level off


def test_without_auxiliary_labels_the_old_naming_is_kept():
    seg = _segmenter({})
    out = seg._clean(_column([3, 4, 5]), (2.5, 2.5, 2.5))
    assert set(np.unique(out)) == {0, 3, 4, 5}


def test_ribs_do_not_count_as_vertebra_when_labels_are_brought_back():
    import torch

    seg = _segmenter(AUX)
    logits = torch.full((21, 1, 1, 2), -5.0)
    logits[20, 0, 0, 0] = 5.0  # a rib voxel
    logits[7, 0, 0, 1] = 5.0   # a T7 voxel
    foreground = seg._foreground(logits)
    assert foreground[0, 0, 0] < 0 < foreground[0, 0, 1]


def test_time_budget_fixes_the_epochs_after_the_first_and_stretches_the_schedule(monkeypatch):
    import research.training as training

    clock = {"t": 1000.0}
    monkeypatch.setattr(training.time, "time", lambda: clock["t"])

    class Trainer:
        current_epoch, num_epochs = 0, 100
        lr_scheduler = type("S", (), {"max_steps": 100})()

        def on_epoch_end(self):
            clock["t"] += 60.0  # one minute per epoch
            self.current_epoch += 1

        def print_to_log_file(self, *args):
            pass

    trainer = Trainer()
    training.fit_to_budget(trainer, budget_s=10 * 60.0)
    with pytest.raises(training._BudgetSpent):
        for _ in range(100):
            trainer.on_epoch_end()
    assert trainer.num_epochs == 10 and trainer.lr_scheduler.max_steps == 10
    assert trainer.current_epoch == 10


def test_warm_start_keeps_the_old_classes_output_weights(tmp_path):
    import torch

    from research.training import warm_start

    old = torch.nn.Conv3d(2, 3, 1)
    torch.save({"network_weights": old.state_dict()}, tmp_path / "old.pth")

    class Trainer:
        network = torch.nn.Conv3d(2, 5, 1)

        def initialize(self):
            pass

    trainer = Trainer()
    warm_start(trainer, tmp_path / "old.pth")
    assert torch.equal(trainer.network.weight[:3], old.weight)
    assert torch.equal(trainer.network.bias[:3], old.bias)


def test_the_last_rib_bearing_vertebra_is_named_t12_when_the_network_is_unsure():
    # six vertebrae, truly T9-L2; the network calls each half one level, half the next, one level high
    low = _split(_column([101, 102, 103, 104, 105, 106]),
                 {100 + k: (7 + k, 8 + k) for k in range(1, 7)})  # (T8/T9), (T9/T10) ... (L1/L2)
    top = low.shape[0] - 2
    for k in range(4):  # ribs beside the first four (T9-T12)
        low[top - 10 * k - 6:top - 10 * k - 2, 5:10, 14:20] = 20
    without_ribs = _segmenter({})._clean(np.where(low == 20, 0, low).astype(np.uint8), (2.5, 2.5, 2.5))
    with_ribs = _segmenter({20: "rib"})._clean(low.copy(), (2.5, 2.5, 2.5))
    assert set(np.unique(without_ribs)) == {0, 8, 9, 10, 11, 12, 13}  # one level high: ties go up
    assert set(np.unique(with_ribs)) == {0, 9, 10, 11, 12, 13, 14}
    last_rib_piece_z = top - 30 - 4
    assert with_ribs[last_rib_piece_z, 8, 8] == 12


def test_ribs_say_nothing_where_the_scan_stops_at_the_last_rib_bearing_vertebra():
    from pipelines.model.postprocess import rib_bonus

    levels = ["T1", "T2", "T12", "L1"]
    bonus = rib_bonus([False, True, True], levels)
    assert bonus[2].sum() == 0  # no rib-free vertebra below: the scan may end above T12
    assert bonus[1][levels.index("T1")] > 0  # a rib-free one above: the first rib-bearing is T1
