"""The QC picture: an RGB array with both views, level colours, names, lesion marks and true proportions."""
from __future__ import annotations

import numpy as np
from PIL import Image

from pipelines.levels import PAPER
from pipelines.outputs.codes import level_colour
from pipelines.outputs.qc import (HEADER_PX, LESION_RED, VertebraMark, qc_picture, write_png)

SPACING = (2.0, 1.0, 1.0)


def _spine(nz: int = 60, levels=("T11", "T12", "L1")) -> tuple[np.ndarray, np.ndarray]:
    """A small LPS CT: box vertebrae on a straight column in soft tissue, labelled head to feet."""
    hu = np.full((nz, 120, 160), 40.0, np.float32)
    labels = np.zeros(hu.shape, np.uint8)
    height = nz // len(levels)
    for i, level in enumerate(levels):
        top = nz - i * height
        hu[top - height + 2:top - 1, 50:80, 65:95] = 700.0
        labels[top - height + 2:top - 1, 50:80, 65:95] = list(PAPER.values()).index(level) + 1
    return hu, labels


def _has_colour(rgb: np.ndarray, colour, tolerance: int = 2) -> bool:
    return bool((np.abs(rgb.astype(int) - np.array(colour)).max(axis=2) <= tolerance).any())


def test_picture_is_rgb_with_each_level_outlined_in_its_colour():
    hu, labels = _spine()
    rgb = qc_picture(hu, labels, SPACING, PAPER, title="test")
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    for level in ("T11", "T12", "L1"):
        assert _has_colour(rgb, level_colour(level)), level


def test_lesion_calls_are_marked_red_and_indeterminate_yellow():
    hu, labels = _spine()
    plain = qc_picture(hu, labels, SPACING, PAPER)
    marked = qc_picture(hu, labels, SPACING, PAPER, [VertebraMark("T12", "lytic")])
    below_header = (slice(HEADER_PX, None), slice(None))
    assert not _has_colour(plain[below_header], LESION_RED, 0)
    assert _has_colour(marked[below_header], LESION_RED, 0)
    unsure = qc_picture(hu, labels, SPACING, PAPER, [VertebraMark("T12", "indeterminate")])
    assert _has_colour(unsure[below_header], (250, 210, 40), 0)


def test_pixels_are_square_whatever_the_slice_spacing():
    hu, labels = _spine(nz=60)
    thin = qc_picture(hu, labels, (2.0, 1.0, 1.0), PAPER)
    hu3, labels3 = _spine(nz=40)
    thick = qc_picture(hu3, labels3, (3.0, 1.0, 1.0), PAPER)
    # the same 120 mm of spine: the panels come out the same height (within a row)
    assert abs(thin.shape[0] - thick.shape[0]) <= 2


def test_no_vertebra_gives_a_picture_that_says_so():
    hu = np.full((30, 64, 64), 40.0, np.float32)
    rgb = qc_picture(hu, np.zeros(hu.shape, np.uint8), SPACING, PAPER, footer="no vertebra found: a knee")
    assert _has_colour(rgb, LESION_RED, 0)  # the red NO VERTEBRA FOUND banner


def test_png_round_trip(tmp_path):
    hu, labels = _spine()
    rgb = qc_picture(hu, labels, SPACING, PAPER)
    path = write_png(tmp_path / "qc.png", rgb)
    again = np.asarray(Image.open(path).convert("RGB"))
    assert np.array_equal(again, rgb)
