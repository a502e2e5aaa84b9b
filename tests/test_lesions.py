"""The explainable lesion classifier on vertebrae whose truth is known."""
from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
from scipy import ndimage

from pipelines.errors import LesionConfigError
from pipelines.lesions import LESION_CLASSES, LesionClassifier, LesionThresholds, ThresholdClassifier
from pipelines.lesions.classifier import Focus, _beside_blastic, _certain, _decide, _say, _without, lytic_delta
from pipelines.lesions.zones import posterior_elements
from pipelines.levels import LEVELS
from research.phantoms.generator import make_phantom

LUMBAR_GRID = (1.0, 0.8, 0.8)
THICK_SLICES = (3.0, 0.8, 0.8)


def _vertebra(foci=(), spacing=LUMBAR_GRID, trabecular=220.0, posterior=700.0, noise=15.0, seed=0, lytic_hu=40.0):
    """A lumbar-like vertebra on a (z, y, x) grid: (HU, mask).

    Body: elliptic cylinder 40 mm wide, 30 mm deep, 24 mm high, 1.5 mm cortex of 950 HU
    around trabecular bone. Behind it a ring of posterior elements (``posterior`` HU, the
    thin dense bone that used to pass for "blastic") around the canal (CSF), and a spinous
    process. ``foci``: (kind, (dz, dy, dx) mm from the body centre, radius mm); lytic
    foci read ``lytic_hu``, blastic ones 900 HU. Blurred (0.8 mm) and noisy like the phantoms.
    """
    shape = tuple(int(round(extent / s)) for extent, s in zip((40.0, 84.0, 60.0), spacing))
    z, y, x = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)], indexing="ij")
    y = y + 22.0  # body centre 22 mm in front of the grid centre
    body = ((x / 20) ** 2 + (y / 15) ** 2 <= 1) & (np.abs(z) <= 12)
    core = ((x / 18.5) ** 2 + (y / 13.5) ** 2 <= 1) & (np.abs(z) <= 10.5)
    canal_y = 15 + 7 - 1
    canal = ((x / 10) ** 2 + ((y - canal_y) / 7) ** 2 <= 1) & (np.abs(z) <= 8)
    ring = ((x / 16) ** 2 + ((y - canal_y) / 13) ** 2 <= 1) & (np.abs(z) <= 8) & (y > 4.5) & ~canal
    spinous = (np.abs(x) <= 3.5) & (y > canal_y + 9) & (y < canal_y + 38) & (np.abs(z + 1) <= 5.5)
    hu = np.full(shape, 40.0)
    hu[ring | spinous] = posterior
    hu[body] = 950.0
    hu[core] = trabecular
    hu[canal] = 15.0
    for kind, (dz, dy, dx), radius in foci:
        ball = (z - dz) ** 2 + (y - dy) ** 2 + (x - dx) ** 2 <= radius ** 2
        hu[ball & body] = lytic_hu if kind == "lytic" else 900.0
    hu = ndimage.gaussian_filter(hu, [0.8 / s for s in spacing])
    rng = np.random.default_rng(seed)
    hu += ndimage.gaussian_filter(rng.normal(0, noise * 1.7, shape), 0.6)
    return np.rint(hu).astype(np.int16), (body | ring | spinous) & ~canal


LYTIC = ("lytic", (2.0, -3.0, -6.0), 4.0)
BLASTIC = ("blastic", (-2.0, 2.0, 7.0), 4.0)
CASES = {"none": (), "lytic": (LYTIC,), "blastic": (BLASTIC,), "mixed": (LYTIC, BLASTIC)}
DRAWN = list(CASES)  # the classes a drawn vertebra has; "indeterminate" is the classifier's, never a truth


@pytest.mark.parametrize("expected", DRAWN)
def test_the_foci_inside_the_body_decide_the_class(expected):
    hu, mask = _vertebra(CASES[expected])
    finding = ThresholdClassifier().classify(hu, mask, LUMBAR_GRID)
    assert finding.kind == expected, finding.features["reason"]


@pytest.mark.parametrize("posterior", [450.0, 725.0, 900.0])
def test_dense_posterior_elements_of_a_lesion_free_vertebra_stay_none(posterior):
    hu, mask = _vertebra(posterior=posterior, noise=30.0)
    finding = ThresholdClassifier().classify(hu, mask, LUMBAR_GRID)
    assert finding.kind == "none", finding.features["reason"]
    assert finding.features["hyperdense_focus_mm3"] < LesionThresholds().min_focus_mm3


def test_osteoporotic_bone_is_not_lytic_and_dense_bone_not_blastic():
    for trabecular in (120.0, 330.0):
        hu, mask = _vertebra(trabecular=trabecular, noise=25.0)
        finding = ThresholdClassifier().classify(hu, mask, LUMBAR_GRID)
        assert finding.kind == "none", (trabecular, finding.features["reason"])
        assert abs(finding.features["reference_hu"] - trabecular) < 30


def test_a_5_mm_focus_is_found():
    hu, mask = _vertebra([("lytic", (0.0, 0.0, 0.0), 2.5)])
    assert ThresholdClassifier().classify(hu, mask, LUMBAR_GRID).kind == "lytic"
    hu, mask = _vertebra([("blastic", (0.0, 0.0, 0.0), 2.5)])
    assert ThresholdClassifier().classify(hu, mask, LUMBAR_GRID).kind == "blastic"


def test_a_focus_below_the_minimum_volume_is_ignored_and_reported():
    hu, mask = _vertebra([("lytic", (0.0, 0.0, 0.0), 1.6)])  # a 3.2 mm focus, 17 mm3 drawn, ~8 mm3 after blur
    finding = ThresholdClassifier().classify(hu, mask, LUMBAR_GRID)
    assert finding.kind == "none"
    assert finding.features["hypodense_focus_mm3"] < LesionThresholds().min_focus_mm3


@pytest.mark.parametrize("expected", DRAWN)
@pytest.mark.parametrize("change", [ndimage.binary_dilation, ndimage.binary_erosion])
@pytest.mark.parametrize("spacing", [LUMBAR_GRID, THICK_SLICES])
def test_a_mask_one_voxel_off_gives_the_same_class(expected, change, spacing):
    hu, mask = _vertebra(CASES[expected], spacing=spacing)
    classifier = ThresholdClassifier()
    assert classifier.classify(hu, mask, spacing).kind == expected
    finding = classifier.classify(hu, change(mask), spacing)
    assert finding.kind == expected, f"{change.__name__}: {finding.features['reason']}"


def test_features_explain_the_decision():
    hu, mask = _vertebra([LYTIC])
    finding = ThresholdClassifier().classify(hu, mask, LUMBAR_GRID)
    f = finding.features
    assert f["hypodense_focus_mm3"] > 100 and f["hyperdense_focus_mm3"] == 0
    assert f["hypodense_focus_mean_hu"] < f["lytic_below_hu"] < f["reference_hu"] < f["blastic_above_hu"]
    assert 190 < f["reference_hu"] < 250
    assert 0 < f["blastic_zone_ml"] < f["lytic_zone_ml"] < f["body_ml"] < mask.sum() * np.prod(LUMBAR_GRID) / 1000
    assert f["hypodense_focus"]["grade"] == "evidence" and f["hypodense_focus"]["thickness_mm"] >= 4
    assert f["thresholds"] == asdict(LesionThresholds())
    assert "hypodense focus" in f["reason"] and "mm3" in f["reason"]


def test_thresholds_come_from_the_configuration_dict():
    hu, mask = _vertebra([LYTIC])
    strict = ThresholdClassifier({"min_focus_mm3": 5000.0})
    finding = strict.classify(hu, mask, LUMBAR_GRID)
    assert finding.kind == "indeterminate"  # still a focus, too small for these thresholds to call it a lesion
    assert finding.features["thresholds"]["min_focus_mm3"] == 5000.0
    assert LesionThresholds.from_dict({"lytic_delta_hu": 50}) == LesionThresholds(lytic_delta_hu=50)
    assert LesionThresholds.from_dict(None) == LesionThresholds()


@pytest.mark.parametrize("values,words", [
    ({"lytic_delta": 50}, "unknown lesion threshold(s) lytic_delta"),
    ({"min_focus_mm3": "big"}, "min_focus_mm3 must be a number"),
    ({"min_focus_mm3": 0}, "min_focus_mm3 must be positive"),
    ({"cortex_mm": -1}, "cortex_mm must not be negative"),
    ({"weak_focus_mm3": 100}, "weak_focus_mm3 (100) must not be above min_focus_mm3 (50.0)"),
    ({"outline_fraction": 1.0}, "outline_fraction must be below 1"),
    ({"compact_min": -0.1}, "compact_min must not be negative"),
])
def test_a_bad_threshold_is_refused_with_its_name(values, words):
    with pytest.raises(LesionConfigError) as error:
        LesionThresholds.from_dict(values)
    assert words in str(error.value)


def test_empty_mask_is_none_not_an_error():
    hu, _ = _vertebra()
    finding = ThresholdClassifier().classify(hu, np.zeros(hu.shape, bool), LUMBAR_GRID)
    assert finding.kind == "none" and finding.features["reason"] == "empty mask"


def test_the_threshold_classifier_satisfies_the_protocol():
    classifier: LesionClassifier = ThresholdClassifier()
    hu, mask = _vertebra()
    assert classifier.classify(hu, mask, LUMBAR_GRID).kind in LESION_CLASSES


def test_a_mask_on_another_grid_or_a_bad_spacing_is_refused_with_a_sentence():
    hu, mask = _vertebra()
    with pytest.raises(ValueError, match="same grid"):
        ThresholdClassifier().classify(hu, mask[:-1], LUMBAR_GRID)
    with pytest.raises(ValueError, match="three positive voxel sizes"):
        ThresholdClassifier().classify(hu, mask, (1.0, 0.0, 0.8))
    with pytest.raises(LesionConfigError, match="must map names to numbers"):
        LesionThresholds.from_dict([("min_focus_mm3", 5)])


def _phantom_vertebrae(seed: int, change=None):
    """(level, truth, predicted) of every vertebra of a coarse lumbar phantom that lies entirely inside the scan."""
    phantom = make_phantom(seed, fov="lumbar", spacing=(2.0, 1.0, 1.0), matrix=160)
    boxes = ndimage.find_objects(phantom.labels)
    classifier, out = ThresholdClassifier(), []
    for level, truth in phantom.truth.items():
        box = boxes[LEVELS.index(level)]
        if box[0].start == 0 or box[0].stop == phantom.labels.shape[0]:
            continue  # cut by the field of view: its lesion may lie outside the scan
        box = tuple(slice(max(s.start - 2, 0), s.stop + 2) for s in box)
        mask = phantom.labels[box] == LEVELS.index(level) + 1
        mask = change(mask) if change else mask
        out.append((level, truth["lesion"], classifier.classify(phantom.image[box], mask, phantom.grid.spacing).kind))
    return out


@pytest.mark.parametrize("change", [None, ndimage.binary_dilation, ndimage.binary_erosion])
def test_phantom_vertebrae_get_their_true_class(change):
    rows = _phantom_vertebrae(3, change) + _phantom_vertebrae(10, change)  # training seeds with all four classes
    assert {truth for _, truth, _ in rows} == set(DRAWN)
    wrong = [row for row in rows if row[1] != row[2]]
    assert not wrong, wrong


def test_thin_rims_off_the_body_are_not_posterior_elements_but_a_thick_arch_is():
    # the opening that finds the body leaves its thin rims outside it; on a body-only mask (the real chest CT's)
    # keeping the blastic zone 6 mm from them would take in most of a small body
    spacing = (2.0, 1.0, 1.0)
    body = np.zeros((20, 60, 60), bool)
    body[3:17, 10:40, 10:50] = True
    rim = np.zeros_like(body)
    rim[3:17, 9, 10:50] = True  # one voxel in front of the body
    arch = np.zeros_like(body)
    arch[6:14, 40:52, 24:36] = True  # 12 mm behind it, 12 mm wide
    assert not posterior_elements(body | rim, body, spacing, 1.5).any()
    elements = posterior_elements(body | rim | arch, body, spacing, 1.5)
    assert np.array_equal(elements, arch)
    assert np.array_equal(posterior_elements(body | rim, body, spacing, 0.0), rim)  # 0 mm: every part off the body


def _focus(core_z: float, core_hu: float, thickness_mm: float = 3.4, grade: str = "below", reference_hu: float = 140.0,
           volume_mm3: float = 150.0) -> Focus:
    """A measured focus as ``_judge`` returns it (only the numbers step 6c reads matter)."""
    return Focus(np.zeros((3, 3, 3), bool), volume_mm3, thickness_mm, 0.6, core_z, core_hu, core_hu, 20.0,
                 reference_hu, 40.0, grade, (1, 1, 1))


CERTAIN_BLASTIC = _focus(10.0, 600.0, thickness_mm=7.0, grade="evidence", volume_mm3=700.0)
THIN_SOFT_TISSUE = _focus(-2.2, 30.0)  # the lytic ball of a mixed lesion as 3 mm slices outline it: 3.4 mm thick


def test_a_thin_soft_tissue_focus_beside_a_certain_blastic_focus_makes_the_vertebra_mixed():
    hypo = _beside_blastic(THIN_SOFT_TISSUE, CERTAIN_BLASTIC, LesionThresholds())
    assert hypo.grade == "evidence" and hypo.beside_blastic and hypo.describe()["evidence_beside_blastic"]
    assert _decide(hypo, CERTAIN_BLASTIC) == "mixed"
    assert "beside a certain blastic focus" in _say("hypodense", hypo)


def test_the_same_thin_hypodense_focus_alone_or_beside_a_faint_blastic_focus_is_no_lytic_call():
    # step 6c only decides mixed or blastic: it never turns a vertebra without blastic evidence into a lesion
    assert _decide(_beside_blastic(THIN_SOFT_TISSUE, None, LesionThresholds()), None) == "none"
    faint = _focus(4.5, 350.0, thickness_mm=5.0, grade="evidence")  # evidence, but below mixed_blastic_z
    assert _beside_blastic(THIN_SOFT_TISSUE, faint, LesionThresholds()).grade == "below"


@pytest.mark.parametrize("core_hu", [55.0, -20.0])
def test_normal_bone_s_low_tail_or_fat_beside_a_blastic_focus_stays_blastic(core_hu):
    # beside inserted blastic lesions, normal thoracic bone's hypodense regions read 46-55 HU; fat is no tumour
    hypo = _beside_blastic(_focus(-2.5, core_hu), CERTAIN_BLASTIC, LesionThresholds())
    assert hypo.grade == "below" and _decide(hypo, CERTAIN_BLASTIC) == "blastic"


def test_a_lytic_focus_reaching_the_endplate_of_3_mm_slices_is_outlined_whole():
    # the lytic zone leaves out the endplate's slice and the snapping peels the hypodense one beyond it; the outline
    # of step 6b is drawn on the whole body, so a 12 mm ball there is not cut to 5 mm
    hu, mask = _vertebra([("lytic", (7.0, 0.0, 0.0), 6.0)], spacing=THICK_SLICES, noise=25.0, trabecular=130.0)
    finding = ThresholdClassifier().classify(hu, mask, THICK_SLICES)
    assert finding.kind == "lytic", finding.features["reason"]
    assert finding.features["hypodense_focus"]["outline"]["thickness_mm"] >= LesionThresholds().compact_thickness_mm


@pytest.mark.parametrize("spacing", [LUMBAR_GRID, THICK_SLICES])
@pytest.mark.parametrize("lytic_hu", [10.0, 20.0])
def test_a_soft_tissue_ball_in_light_bone_is_lytic_and_the_light_bone_alone_is_none(spacing, lytic_hu):
    # osteoporotic bone of 60 HU: no tumour can read lytic_delta_hu (60 HU) below it, so before the light-bone rule
    # a 12 mm ball of 10-20 HU there was "none"
    hu, mask = _vertebra([("lytic", (0.0, 0.0, 0.0), 6.0)], spacing=spacing, noise=20.0, trabecular=60.0,
                         lytic_hu=lytic_hu)
    finding = ThresholdClassifier().classify(hu, mask, spacing)
    assert finding.kind == "lytic", finding.features["reason"]
    hu, mask = _vertebra([], spacing=spacing, noise=20.0, trabecular=60.0)
    assert ThresholdClassifier().classify(hu, mask, spacing).kind == "none"


def test_the_hu_a_hypodense_focus_needs_below_the_bone_shrinks_only_in_light_bone():
    t = LesionThresholds()
    assert lytic_delta(200.0, t) == t.lytic_delta_hu  # normal bone: unchanged
    assert lytic_delta(t.light_floor_hu + t.lytic_delta_hu, t) == t.lytic_delta_hu
    assert lytic_delta(55.0, t) == 55.0 - t.light_floor_hu  # the TPTBox L3: read below the floor
    assert lytic_delta(30.0, t) == t.light_min_delta_hu  # never less than this below the bone


def test_a_dense_ball_at_the_pedicle_root_is_blastic():
    # centred 6 mm from the posterior elements' roots, outside the blastic zone; at 3 mm slices it used to be "none"
    hu, mask = _vertebra([("blastic", (0.0, 11.0, 10.0), 5.0)], spacing=THICK_SLICES, noise=25.0)
    finding = ThresholdClassifier().classify(hu, mask, THICK_SLICES)
    assert finding.kind == "blastic", finding.features["reason"]
    assert finding.features["hyperdense_focus"]["near_elements"]
    assert "near the posterior elements" in finding.features["reason"]


@pytest.mark.parametrize("core_z, core_hu, thickness_mm, certain", [
    (8.0, 600.0, 5.0, True),
    (8.0, 370.0, 2.9, False),  # the dense pedicle root of a real vertebra: thin, however many spreads off
    (4.5, 600.0, 5.0, False),  # not far enough off
    (-8.0, 20.0, 5.0, False),  # hypodense
])
def test_a_focus_off_the_blastic_zone_counts_only_when_thick_and_far_denser_than_the_bone(core_z, core_hu,
                                                                                          thickness_mm, certain):
    focus = _focus(core_z, core_hu, thickness_mm=thickness_mm, grade="evidence")
    assert _certain(focus, LesionThresholds()) is certain


def test_a_focus_taking_most_of_the_zone_is_not_left_out_of_the_reference():
    # a blastic ball that raises the reference makes the normal bone read "hypodense"; leaving that out would leave
    # the blastic side no bone to be judged against, and the lesion was lost
    zone = np.zeros((10, 10, 10), bool)
    zone[:, :, :8] = True
    small, large = np.zeros_like(zone), np.zeros_like(zone)
    small[:3] = True
    large[:7] = True
    assert np.array_equal(_without(zone, small), zone & ~small)
    assert np.array_equal(_without(zone, large), zone)
