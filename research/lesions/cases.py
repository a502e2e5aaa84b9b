"""The real scans with vertebra masks that lesions are inserted into (``../shared/data``, see its README).

* ``crop-l2-l4``: the TPTBox/VerSe lumbar crop, 1.5 mm isotropic, VerSe labels 21-23
  (L2, L3, L4); L2 and L4 are cut by the crop, L3 is whole.
* ``t11-t12``: the TotalSegmentator DICOM example (2 mm, JPEG 2000) with its label map
  (32 = T12, 33 = T11); both vertebrae are cut by its 20 slices.
* ``thorax``: the whole real chest CT (2 mm), bodies from ``thorax.py`` (classical
  processing and disc levels read by eye; not the node's model, which finds six lumps on
  this scan): ten whole bodies, about T2/T3 to T11/T12, named ``body-1`` (lowest) up.

Each ``RealScan`` is reoriented to LPS (``research.volume_io``) and, for the chest CT,
cropped in-plane to the spine and the tissue around it (the noise is measured there).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from research.volume_io import read_volume, same_grid

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@dataclass
class RealScan:
    """One real CT (z, y, x HU, LPS) with its vertebra label map and the names of the labels."""

    name: str
    hu: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    names: dict[int, str]
    mask_source: str
    notes: list[str] = field(default_factory=list)

    def whole(self, label: int) -> bool:
        """Whether vertebra ``label`` lies inside the scan (not cut by its first or last slice)."""
        zs = np.nonzero((self.labels == label).any(axis=(1, 2)))[0]
        return bool(zs.size) and zs[0] > 0 and zs[-1] < self.labels.shape[0] - 1


def data_folder(root: Path | None = None) -> Path:
    """``../shared/data`` of the project (or ``root``), resolved."""
    return (root or DATA).resolve()


def available(root: Path | None = None) -> bool:
    """Whether the three real data sets are there."""
    folder = data_folder(root)
    return all((folder / p).exists() for p in ("real-ct-crop-l2-l4", "real-ct-dicom-t11-t12", "real-ct-thorax-dicom"))


def crop_l2_l4(root: Path | None = None) -> RealScan:
    """The lumbar crop with its VerSe vertebra labels (21 = L2, 22 = L3, 23 = L4)."""
    folder = data_folder(root) / "real-ct-crop-l2-l4"
    ct = read_volume(folder / "sub-ct_label-22_ct.nii.gz")
    mask = read_volume(folder / "sub-ct_seg-vert_label-22_msk.nii.gz")
    _same(ct, mask, folder)
    return RealScan("crop-l2-l4", ct.array.astype(np.float32), mask.array.astype(np.uint8), ct.spacing,
                    {21: "L2", 22: "L3", 23: "L4"}, "VerSe labels (manual)")


def t11_t12(root: Path | None = None) -> RealScan:
    """The T11/T12 DICOM crop with TotalSegmentator's labels (32 = T12, 33 = T11)."""
    folder = data_folder(root)
    ct = read_volume(folder / "real-ct-dicom-t11-t12")
    labels = read_volume(folder / "real-ct-dicom-t11-t12-totalseg-labels.nii.gz")
    _same(ct, labels, folder)
    keep = np.where(np.isin(labels.array, (32, 33)), labels.array, 0).astype(np.uint8)
    return RealScan("t11-t12", ct.array.astype(np.float32), keep, ct.spacing, {32: "T12", 33: "T11"},
                    "TotalSegmentator v2 predictions")


def thorax(root: Path | None = None, margin_mm: float = 50.0) -> RealScan:
    """The whole chest CT, cropped in-plane to the bodies plus ``margin_mm``, with the bodies of ``thorax.py``."""
    from research.lesions.thorax import thorax_bodies

    ct = read_volume(data_folder(root) / "real-ct-thorax-dicom")
    labels = thorax_bodies(ct.array, ct.spacing)
    ys, xs = np.nonzero(labels.any(axis=0))
    my, mx = (int(round(margin_mm / s)) for s in ct.spacing[1:])
    box = (slice(None), slice(max(ys.min() - my, 0), ys.max() + my + 1),
           slice(max(xs.min() - mx, 0), xs.max() + mx + 1))
    names = {int(k): f"body-{int(k)}" for k in np.unique(labels) if k}
    return RealScan("thorax", ct.array[box].astype(np.float32), labels[box], ct.spacing, names,
                    "classical body segmentation, disc levels read by eye (research/lesions/thorax.py)")


def _same(a, b, folder: Path) -> None:
    if not same_grid(a, b):
        raise ValueError(f"{folder}: the CT and its labels are not on the same grid")
