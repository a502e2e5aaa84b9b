"""The model sees every series in LPS order, and its labels go back voxel for voxel."""
from itertools import permutations, product

import numpy as np
import pytest

from pipelines.records import Geometry
from pipelines.model.orientation import lps_reorientation


def _signed_permutations():
    for perm in permutations(range(3)):
        for signs in product((1.0, -1.0), repeat=3):
            direction = np.zeros((3, 3))
            for column, (axis, sign) in enumerate(zip(perm, signs)):
                direction[axis, column] = sign
            if np.linalg.det(direction) != 0:
                yield direction


def _positions(geometry: Geometry, shape) -> np.ndarray:
    """Patient position (x, y, z) of every voxel of a (k, j, i) array."""
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    d, s = geometry.direction, geometry.spacing
    return (geometry.origin[:, None, None, None] + d[:, [0]][..., None, None] * (i * s[2])
            + d[:, [1]][..., None, None] * (j * s[1]) + d[:, [2]][..., None, None] * (k * s[0]))


@pytest.mark.parametrize("direction", list(_signed_permutations()))
def test_every_axis_aligned_series_reaches_the_model_in_lps_order(direction):
    geometry = Geometry(np.array([10.0, -20.0, 30.0]), direction, (2.0, 0.7, 0.9))
    shape = (3, 4, 5)
    reorient = lps_reorientation(geometry)
    xyz = np.stack([reorient.to_lps(c) for c in _positions(geometry, shape)])
    spacing = reorient.spacing(geometry.spacing)
    # axis 0 grows towards the head (+z), axis 1 towards the back (+y), axis 2 towards the left (+x)
    assert np.allclose(np.diff(xyz[2], axis=0), spacing[0])
    assert np.allclose(np.diff(xyz[1], axis=1), spacing[1])
    assert np.allclose(np.diff(xyz[0], axis=2), spacing[2])


@pytest.mark.parametrize("direction", list(_signed_permutations())[::7])
def test_labels_come_back_voxel_for_voxel(direction):
    geometry = Geometry(np.zeros(3), direction, (1.0, 1.0, 1.0))
    reorient = lps_reorientation(geometry)
    labels = np.random.default_rng(0).integers(0, 17, (4, 5, 6)).astype(np.uint8)
    assert np.array_equal(reorient.from_lps(reorient.to_lps(labels)), labels)


def test_an_oblique_series_maps_to_its_closest_axes():
    angle = np.deg2rad(20)
    row = np.array([np.cos(angle), np.sin(angle), 0.0])
    col = np.array([-np.sin(angle), np.cos(angle), 0.0])
    geometry = Geometry(np.zeros(3), np.stack([row, col, [0, 0, -1.0]], axis=1), (1.0, 1.0, 1.0))
    reorient = lps_reorientation(geometry)
    assert reorient.axes == (0, 1, 2)
    assert reorient.flips == (True, False, False)
