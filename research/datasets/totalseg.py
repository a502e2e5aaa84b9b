"""Import folders in TotalSegmentator's convention into a raw dataset in the paper's map.

Two forms of a case folder ``<case>/`` are read, both with ``ct.nii.gz``:

* TotalSegmentator's dataset layout: ``segmentations/vertebrae_T1.nii.gz`` ... one binary
  mask per structure (named as in its ``map_to_binary.py``); masks that share voxels are
  refused, since the paper's map gives each voxel one level;
* one label map (``labels.nii.gz``, ``segmentations.nii.gz`` or ``seg.nii.gz``) in the ids of
  TotalSegmentator's merged ``total`` output (preset ``totalsegmentator``) or of its
  vertebrae model Dataset292 (preset ``totalsegmentator-vertebrae``); ``convention`` says which.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pipelines.levels import LEVELS, level_of_label_name, preset
from research.datasets.nifti_cases import (add_nifti_case, check_same_grid, integer_labels, read_image, run_cases,
                                           to_paper)
from research.datasets.raw import PAPER_LABELS, RawDatasetWriter
from research.errors import CaseRefused, DatasetError

LABEL_FILES = ("labels.nii.gz", "segmentations.nii.gz", "seg.nii.gz")
CONVENTIONS = ("totalsegmentator", "totalsegmentator-vertebrae")


def import_totalseg(root: Path | str, out: Path | str, convention: str = "totalsegmentator", log=print) -> dict:
    """Import each case folder under ``root`` (see the module docstring) into ``out``; return the report."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"folder {root} does not exist")
    if convention not in CONVENTIONS:
        raise DatasetError(f"convention {convention!r}: expected one of {', '.join(CONVENTIONS)}")
    folders = [p for p in sorted(root.iterdir()) if p.is_dir() and (p / "ct.nii.gz").is_file()]
    if not folders:
        raise DatasetError(f"{root}: no case folder with a ct.nii.gz")
    writer = RawDatasetWriter(out, "TotalSegmentatorConvention",
                              f"TotalSegmentator-convention cases imported by spine-node from {root.name}")
    try:
        jobs = [(f.name, str(f), lambda f=f: _case(writer, f, convention)) for f in folders]
        run_cases(writer, jobs, log)
        return writer.finish({"source": "TotalSegmentator convention", "folder": str(root),
                              "convention": convention})
    except BaseException:
        writer.abandon()
        raise


def _case(writer: RawDatasetWriter, folder: Path, convention: str):
    name = folder.name
    ct = read_image(folder / "ct.nii.gz", name)
    masks_dir = folder / "segmentations"
    if masks_dir.is_dir():
        paper, levels, notes = _from_masks(ct, masks_dir, name)
    else:
        label_file = next((folder / n for n in LABEL_FILES if (folder / n).is_file()), None)
        if label_file is None:
            raise CaseRefused(name, "no_mask", f"neither segmentations/ nor one of {', '.join(LABEL_FILES)}")
        labels = read_image(label_file, name)
        check_same_grid(ct, labels, name)
        paper, levels, notes = to_paper(integer_labels(labels, name), preset(convention), name)
    return add_nifti_case(writer, name, str(folder), ct, paper, levels, notes)


def _from_masks(ct: sitk.Image, masks_dir: Path, name: str) -> tuple[np.ndarray, list[str], list[str]]:
    """The paper-map labels of one binary mask per vertebra; overlaps refused."""
    paper = None
    owner: dict[int, str] = {}
    for path in sorted(masks_dir.glob("*.nii.gz")):
        level = level_of_label_name(path.name[: -len(".nii.gz")])
        if level not in LEVELS:
            continue
        image = read_image(path, name)
        check_same_grid(ct, image, name)
        mask = integer_labels(image, name) > 0
        if paper is None:
            paper = np.zeros(mask.shape, np.uint8)
        clash = mask & (paper > 0)
        if clash.any():
            other = owner[int(paper[clash][0])]
            raise CaseRefused(name, "overlapping_segments",
                              f"masks {level} and {other} overlap ({int(clash.sum())} voxels)")
        paper[mask] = PAPER_LABELS[level]
        owner[PAPER_LABELS[level]] = level
    if paper is None or not paper.any():
        raise CaseRefused(name, "no_vertebra", "segmentations/ holds no non-empty vertebrae_T1..L5 mask")
    levels = [level for level in LEVELS if (paper == PAPER_LABELS[level]).any()]
    return paper, levels, []
