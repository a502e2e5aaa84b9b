"""Writers for phantoms: NIfTI cases and nnU-Net raw datasets (DICOM: ``phantom_dicom.py``).

A NIfTI case is a folder ``<case>/`` with ``ct.nii.gz``, ``labels.nii.gz`` (paper
convention), ``lesions.nii.gz`` and ``truth.json`` (per-vertebra lesion class; for report
phantoms the spine report's truth too, and a follow-up's change), the layout
``spine-node evaluate`` reads. Geometry goes through SimpleITK, whose frame is LPS like
the phantom's, so origin and direction are written exactly.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pipelines.levels import LEVELS
from research.phantoms.generator import Grid, Phantom


def to_sitk(array: np.ndarray, grid: Grid) -> sitk.Image:
    """An SimpleITK image of a (z, y, x) array on an LPS-aligned grid."""
    image = sitk.GetImageFromArray(array)
    sz, sy, sx = grid.spacing
    image.SetSpacing((float(sx), float(sy), float(sz)))
    image.SetOrigin(tuple(float(o) for o in grid.origin))
    image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return image


def truth_record(phantom: Phantom) -> dict:
    """The JSON ground truth of a phantom: seed, FOV kind and per-vertebra lesion truth."""
    return {"seed": phantom.seed, "fov": phantom.fov, "label_convention": "paper",
            "spacing_zyx_mm": list(phantom.grid.spacing), "vertebrae": phantom.truth,
            **({"visit": phantom.visit, "days_after_baseline": phantom.days_after_baseline} if phantom.visit else {}),
            **phantom.extra_truth}


def write_nifti_case(phantom: Phantom, folder: Path) -> Path:
    """Write one phantom as a NIfTI case folder and return it."""
    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(to_sitk(phantom.image, phantom.grid), str(folder / "ct.nii.gz"), useCompression=True)
    sitk.WriteImage(to_sitk(phantom.labels, phantom.grid), str(folder / "labels.nii.gz"), useCompression=True)
    sitk.WriteImage(to_sitk(phantom.lesions, phantom.grid), str(folder / "lesions.nii.gz"), useCompression=True)
    (folder / "truth.json").write_text(json.dumps(truth_record(phantom), indent=1))
    return folder


def nnunet_dataset_json(num_training: int) -> dict:
    """dataset.json of the phantom dataset: one CT channel, labels in the paper's convention."""
    labels = {"background": 0, **{level: i + 1 for i, level in enumerate(LEVELS)}}
    return {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": num_training,
            "file_ending": ".nii.gz", "name": "SpinePhantom",
            "description": "Synthetic spine CT phantoms made by spine-node (pipelines/phantom.py)"}


def write_nnunet_case(phantom: Phantom, raw_dataset: Path, case_id: str) -> None:
    """Add one phantom to an nnU-Net raw dataset folder (imagesTr / labelsTr)."""
    (raw_dataset / "imagesTr").mkdir(parents=True, exist_ok=True)
    (raw_dataset / "labelsTr").mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(to_sitk(phantom.image, phantom.grid),
                    str(raw_dataset / "imagesTr" / f"{case_id}_0000.nii.gz"), useCompression=True)
    sitk.WriteImage(to_sitk(phantom.labels, phantom.grid),
                    str(raw_dataset / "labelsTr" / f"{case_id}.nii.gz"), useCompression=True)
