"""The explainable lesion classifier on vertebrae whose truth is known."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.lesions import LesionThresholds, ThresholdClassifier

SPACING = (1.0, 1.0, 1.0)


def _vertebra(focus_hu: list[tuple[float, float]], noise: float = 15.0, seed: int = 0):
    """A 40 mm box of trabecular bone (220 HU) with a 1.5 mm cortex (900 HU) and spherical foci (radius, HU)."""
    rng = np.random.default_rng(seed)
    hu = np.full((50, 50, 50), 40.0, np.float32)
    mask = np.zeros(hu.shape, bool)
    mask[5:45, 5:45, 5:45] = True
    hu[mask] = 900.0
    hu[7:43, 7:43, 7:43] = 220.0
    zz, yy, xx = np.mgrid[:50, :50, :50]
    centres = [(25, 18, 18), (25, 32, 32)]
    for (radius, value), centre in zip(focus_hu, centres):
        ball = (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius ** 2
        hu[ball] = value
    hu += rng.normal(0, noise, hu.shape).astype(np.float32)
    return hu, mask


@pytest.mark.parametrize("foci,expected", [
    ([], "none"),
    ([(4.0, 50.0)], "lytic"),
    ([(4.0, 900.0)], "blastic"),
    ([(4.0, 40.0), (4.0, 850.0)], "mixed"),
])
def test_focus_density_decides_the_class(foci, expected):
    hu, mask = _vertebra(foci)
    finding = ThresholdClassifier().classify(hu, mask, SPACING)
    assert finding.kind == expected, finding.features


def test_cortex_alone_is_not_called_blastic():
    hu, mask = _vertebra([], noise=30.0)
    assert ThresholdClassifier().classify(hu, mask, SPACING).kind == "none"


def test_a_focus_below_the_minimum_volume_is_ignored():
    hu, mask = _vertebra([(2.0, -100.0)])  # about 26 mm3 survive the smoothing
    finding = ThresholdClassifier(LesionThresholds(min_focus_mm3=40.0)).classify(hu, mask, SPACING)
    assert finding.kind == "none"
    assert 0 < finding.features["largest_hypodense_focus_mm3"] < 40.0


def test_features_explain_the_decision():
    hu, mask = _vertebra([(5.0, 20.0)])
    features = ThresholdClassifier().classify(hu, mask, SPACING).features
    assert features["largest_hypodense_focus_mm3"] > 200
    assert features["largest_hyperdense_focus_mm3"] == 0
    assert features["thresholds"]["lytic_max_hu"] == 100.0
    assert 150 < features["interior_median_hu"] < 300


def test_empty_mask_is_none_not_an_error():
    hu, _ = _vertebra([])
    assert ThresholdClassifier().classify(hu, np.zeros(hu.shape, bool), SPACING).kind == "none"
