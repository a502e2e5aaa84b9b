"""Contrast-filled large vessels in a short field (pipelines/model/vessels.py): found by not changing along the
scan, so that the column found on the CT alone leaves them out and never takes a body for one."""
from __future__ import annotations

import numpy as np

from pipelines.model import vessels

SPACING = (2.0, 1.0, 1.0)
CANAL = (90.0, 64.0)   # (y, x): the canal lies behind the body
AORTA = (30.0, 80.0)   # 60 mm in front of the canal, to the left
AORTA_MM = 12.0


def _field(slices: int = 20, lumen_hu: float = 160.0, seed: int = 0) -> np.ndarray:
    """A body whose marrow changes along the scan (a disc and endplates in the field) and, in front of it, a round
    lumen of ``lumen_hu`` that does not; soft tissue round both, with noise."""
    rng = np.random.default_rng(seed)
    hu = np.full((slices, 128, 128), 40.0, np.float32)
    yy, xx = np.indices((128, 128))
    body = (yy - 65.0) ** 2 / 18 ** 2 + (xx - 64.0) ** 2 / 22 ** 2 <= 1
    for z in range(slices):
        marrow = 60.0 if z in (9, 10) else (450.0 if z in (8, 11) else 180.0)  # disc, endplates, marrow
        hu[z][body] = marrow
    hu[:, np.hypot(yy - AORTA[0], xx - AORTA[1]) <= AORTA_MM] = lumen_hu
    return hu + rng.normal(0, 15, hu.shape).astype(np.float32)


def test_a_contrast_filled_aorta_in_front_of_the_body_is_found_to_its_wall():
    mask, found = vessels.vessel_lumens(_field(), SPACING, CANAL)
    [aorta] = found
    assert np.allclose(aorta["centre_yx"], AORTA, atol=1.5)
    assert abs(aorta["lumen_radius_mm"] - AORTA_MM) <= 2.0
    yy, xx = np.indices(mask.shape)
    assert mask[np.hypot(yy - AORTA[0], xx - AORTA[1]) <= AORTA_MM].all()  # the whole lumen
    assert not mask[65, 64] and mask.sum() < 1.6 * np.pi * (AORTA_MM + vessels.WALL_MM) ** 2  # not the body


def test_a_lumen_without_contrast_is_soft_tissue_and_no_vessel_is_taken_out():
    mask, found = vessels.vessel_lumens(_field(lumen_hu=45.0), SPACING, CANAL)
    assert found == [] and not mask.any()


def test_a_steady_bright_core_next_to_the_canal_is_body_not_vessel():
    mask, found = vessels.vessel_lumens(_field(), SPACING, (AORTA[0] + 30.0, AORTA[1]))  # the "canal" 30 mm behind
    assert found == []


def test_a_field_shorter_than_a_vertebra_is_not_searched():
    """Under MIN_FIELD_MM a field may hold no disc, and a body's marrow may then look as steady as a lumen."""
    mask, found = vessels.vessel_lumens(_field(slices=10), SPACING, CANAL)
    assert found == []


def test_the_vessel_is_read_as_soft_tissue_in_every_slice_and_the_ct_is_kept():
    hu = _field()
    mask, _ = vessels.vessel_lumens(hu, SPACING, CANAL)
    cleared = vessels.without_vessels(hu, mask)
    assert (cleared[:, mask] == 40.0).all() and (cleared[:, ~mask] == hu[:, ~mask]).all()
    assert (hu[:, int(AORTA[0]), int(AORTA[1])] > 100).all()  # the input is not changed


def test_a_large_steady_organ_in_front_is_not_taken_for_a_vessel():
    """An enhancing liver is as bright and as steady as a lumen, but larger and not round: it stays."""
    hu = _field(lumen_hu=45.0)
    hu[:, 2:40, 10:120] = 130.0  # a 38 x 110 mm slab of organ, 50-88 mm in front of the canal
    mask, found = vessels.vessel_lumens(hu, SPACING, CANAL)
    assert found == [] and not mask.any()
