"""What the NIfTI importers (VerSe, TotalSegmentator convention) share: read, check, relabel, write.

A NIfTI case is a CT file and a label map on the same grid. The label ids are turned into
the paper's map with one look-up table (never one id after another), the CT is written as
read (its own grid, never resampled) and the labels are written with the CT's geometry.
Vertebrae outside T1..L5 (cervical, sacral, the transitional T13 and L6) are left out and
noted. Lesion classes are not part of these datasets: the lesion table says ``unknown``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pipelines.levels import LEVELS
from research.datasets.raw import PAPER_LABELS, ImportedCase, RawDatasetWriter, Refusal, case_id_for
from research.errors import CaseRefused

GRID_TOLERANCE_MM = 1e-3


def read_image(path: Path, case: str) -> sitk.Image:
    """An image file, or CaseRefused (unreadable)."""
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        lines = str(exc).strip().splitlines()
        raise CaseRefused(case, "unreadable", f"{path.name} cannot be read ({lines[-1] if lines else 'ITK error'})") from None


def check_same_grid(ct: sitk.Image, labels: sitk.Image, case: str) -> None:
    """Refuse (grid_mismatch) a label map whose size, spacing, origin or direction differs from the CT's."""
    checks = {"size": ct.GetSize() == labels.GetSize(),
              "spacing": np.allclose(ct.GetSpacing(), labels.GetSpacing(), atol=GRID_TOLERANCE_MM),
              "origin": np.allclose(ct.GetOrigin(), labels.GetOrigin(), atol=GRID_TOLERANCE_MM * 10),
              "direction": np.allclose(ct.GetDirection(), labels.GetDirection(), atol=1e-4)}
    differ = [name for name, same in checks.items() if not same]
    if differ:
        raise CaseRefused(case, "grid_mismatch", f"the label map's {' and '.join(differ)} differ from the CT's "
                          f"(label map: size {labels.GetSize()}, spacing {_rounded(labels.GetSpacing())}, origin "
                          f"{_rounded(labels.GetOrigin())}; CT: size {ct.GetSize()}, spacing {_rounded(ct.GetSpacing())}, "
                          f"origin {_rounded(ct.GetOrigin())})")


def _rounded(values) -> tuple:
    return tuple(round(float(v), 3) for v in values)


def integer_labels(image: sitk.Image, case: str) -> np.ndarray:
    """The label ids of a label image (float files allowed when every value is an integer)."""
    array = sitk.GetArrayFromImage(image)
    if not np.issubdtype(array.dtype, np.integer):
        rounded = np.rint(array)
        if np.abs(array - rounded).max() > 1e-3:
            raise CaseRefused(case, "not_a_label_map", "the label file holds non-integer values")
        array = rounded
    if array.min() < 0:
        raise CaseRefused(case, "not_a_label_map", "the label file holds negative values")
    return array.astype(np.int64)


def to_paper(labels: np.ndarray, label_map: dict[int, str], case: str) -> tuple[np.ndarray, list[str], list[str]]:
    """Relabel ids (label_map: id -> level) to the paper's map in one look-up; (labels, levels, notes)."""
    top = int(labels.max())
    lut = np.zeros(max(top, max(label_map, default=0)) + 1, np.uint8)
    notes = []
    for label, level in label_map.items():
        if level in PAPER_LABELS:
            lut[label] = PAPER_LABELS[level]
    present_ids = set(np.unique(labels).tolist()) - {0}
    left_out = sorted(label_map.get(i, f"id {i}") for i in present_ids if i >= len(lut) or lut[i] == 0)
    if left_out:
        notes.append(f"left out (outside T1..L5 or not a vertebra): {', '.join(map(str, left_out))}")
    paper = lut[labels]
    levels = [level for level in LEVELS if (paper == PAPER_LABELS[level]).any()]
    if not levels:
        raise CaseRefused(case, "no_vertebra", "the label map holds none of T1..L5")
    return paper, levels, notes


def labels_like(ct: sitk.Image, array: np.ndarray) -> sitk.Image:
    """A label image of ``array`` with the CT's geometry."""
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.CopyInformation(ct)
    return image


def add_nifti_case(writer: RawDatasetWriter, name: str, source: str, ct: sitk.Image, paper: np.ndarray,
                   levels: list[str], notes: list[str]) -> ImportedCase:
    """Record and write one case whose labels are already in the paper's map."""
    sx, sy, sz = ct.GetSpacing()
    case = ImportedCase(case_id_for(name), source, levels, {level: "unknown" for level in levels},
                        list(paper.shape), [float(sz), float(sy), float(sx)],
                        sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(ct.GetDirection()),
                        notes=notes)
    writer.add(case, ct, labels_like(ct, paper))
    return case


def run_cases(writer: RawDatasetWriter, jobs: list[tuple[str, str, object]], log) -> None:
    """Call each job (name, source, function returning an ImportedCase); refusals recorded, others go on."""
    for name, source, job in jobs:
        try:
            case = job()
            log(f"{case.case_id}: {len(case.levels)} vertebrae {case.levels[0]}-{case.levels[-1]}")
        except CaseRefused as refused:
            writer.refuse(Refusal(refused.case, source, refused.code, refused.reason))
            log(f"refused {refused}")
