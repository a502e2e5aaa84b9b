"""A TCIA-shaped Spine-Mets-CT-SEG collection made from the phantom generator, for tests.

It has the collection's layout as the paper's code reads it (rouge1616/Spine-Mets-CT-SEG,
``tcia_dcm2nifti.py``: a case folder, one study folder in it, a CT series folder of many
files and a folder holding one DICOM SEG)::

    COLLECTION/<case>/<study>/1.000000-CT-<n>/1-001.dcm ...
    COLLECTION/<case>/<study>/300.000000-Segmentation-<n>/1-1.dcm
    COLLECTION/lesions.xlsx        one row per (case, vertebra): the lesion class; a demographics sheet

The SEG is a BINARY DICOM SEG (highdicom) with one segment per vertebra, labelled
"T7 vertebra" and coded with its SNOMED CT concept, written in a shuffled order (not the
level order), so that an importer which maps segments by number instead of by code
gets the levels wrong. The CT is ``research.phantoms.dicom``'s series, so geometry and
truth are the generator's, exactly.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from pipelines.levels import LEVELS
from research.datasets.workbook import DEFAULT_LAYOUT, WorkbookLayout
from research.phantoms.dicom import write_dicom_series
from research.phantoms.generator import Phantom, make_phantom

# Category as Slicer / dcmqi / TotalSegmentator write it; readers must accept it beside 91723000.
ANATOMICAL_STRUCTURE = hd.sr.CodedConcept("123037004", "SCT", "Anatomical Structure")
CLASS_TEXT = {"none": "Not involved", "lytic": "Lytic", "blastic": "Blastic", "mixed": "Mixed"}
"""How the workbook spells each class (capitalised, as a person types it)."""


@dataclass
class PhantomCase:
    """One case of the phantom collection: its folder name, phantom and orientation."""

    name: str
    phantom: Phantom
    orientation: str
    ct_dir: Path
    seg_path: Path


def vertebra_code(level: str) -> hd.sr.CodedConcept:
    """The SNOMED CT concept of a vertebra level (pydicom's DICOM tables: ``codes.SCT.T7Vertebra``)."""
    return getattr(codes.SCT, f"{level}Vertebra")


def write_vertebra_seg(ct_files: list[Path], masks: dict[str, np.ndarray], order: list[str], path: Path,
                       codes_by_level: dict[str, hd.sr.CodedConcept] | None = None) -> Path:
    """Write a BINARY SEG on a CT series: one segment per level of ``order``, numbered in that order.

    ``masks`` are (z, y, x) boolean arrays on the phantom grid (supine series only, as HFS
    and FFS are); ``codes_by_level`` overrides a segment's property type (to make a bad SEG).
    """
    datasets = [pydicom.dcmread(f) for f in ct_files]
    z0 = min(float(ds.ImagePositionPatient[2]) for ds in datasets)
    step = float(datasets[0].SliceThickness)
    ks = [int(round((float(ds.ImagePositionPatient[2]) - z0) / step)) for ds in datasets]
    pixels = np.stack([np.stack([masks[level][k] for level in order], axis=-1) for k in ks]).astype(bool)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number, segment_label=f"{level} vertebra",
            segmented_property_category=ANATOMICAL_STRUCTURE,
            segmented_property_type=(codes_by_level or {}).get(level, vertebra_code(level)),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for number, level in enumerate(order, start=1)]
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=300,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="spine-node phantom",
        manufacturer_model_name="research.datasets.tcia_phantom", software_versions="1",
        device_serial_number="0", content_label="VERTEBRAE", series_description="Segmentation",
        omit_empty_frames=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    return path


def write_phantom_case(collection: Path, seed: int, orientation: str = "HFS",
                       spacing: tuple[float, float, float] = (3.0, 2.0, 2.0),
                       lesion_rate: float = 0.27, name: str | None = None) -> PhantomCase:
    """Render phantom ``seed`` and write it as one TCIA-shaped case folder (CT series + SEG)."""
    phantom = make_phantom(seed, spacing=spacing, matrix=None, lesion_rate=lesion_rate)
    name = name or f"Phantom-Spine-Mets_{seed:05d}"
    study = collection / name / f"01-01-2000-NA-{orientation}-{seed % 100000:05d}"
    ct_dir = study / f"1.000000-CT-{seed % 100000:05d}"
    files = write_dicom_series(phantom, ct_dir, orientation=orientation, patient_id=name)
    for number, path in enumerate(files, start=1):  # TCIA names slices 1-001.dcm ...
        path.rename(ct_dir / f"1-{number:03d}.dcm")
    files = sorted(ct_dir.glob("1-*.dcm"))
    levels = phantom.levels_present()
    order = list(levels)
    random.Random(seed).shuffle(order)
    if order == levels and len(order) > 1:  # never the level order
        order = order[1:] + order[:1]
    masks = {level: phantom.labels == i + 1 for i, level in enumerate(LEVELS) if level in levels}
    seg_path = study / f"300.000000-Segmentation-{seed % 100000:05d}" / "1-1.dcm"
    write_vertebra_seg(files, masks, order, seg_path)
    return PhantomCase(name, phantom, orientation, ct_dir, seg_path)


def write_workbook(path: Path, cases: list[PhantomCase], layout: WorkbookLayout = DEFAULT_LAYOUT) -> Path:
    """The lesion workbook (openpyxl): one row per segmented vertebra, plus a demographics sheet."""
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = layout.sheet or "Lesions"
    sheet.append([layout.case_column, layout.level_column, layout.class_column])
    for case in cases:
        for level in case.phantom.levels_present():
            sheet.append([case.name, level, CLASS_TEXT[case.phantom.truth[level]["lesion"]]])
    demographics = book.create_sheet(layout.demographics_sheet or "Demographics")
    demographics.append([layout.case_column, "Age", "Sex", "Primary cancer"])
    for case in cases:
        rng = np.random.default_rng(case.phantom.seed)
        demographics.append([case.name, int(rng.integers(40, 85)), ["F", "M"][int(rng.integers(2))], "synthetic"])
    path.parent.mkdir(parents=True, exist_ok=True)
    book.save(path)
    return path


def write_collection(collection: Path | str, seeds: list[int], orientations: list[str] | None = None,
                     spacing: tuple[float, float, float] = (3.0, 2.0, 2.0),
                     lesion_rate: float = 0.27) -> list[PhantomCase]:
    """A whole TCIA-shaped collection: one case per seed (orientations cycled) and ``lesions.xlsx``."""
    collection = Path(collection)
    orientations = orientations or ["HFS", "FFS"]
    cases = [write_phantom_case(collection, seed, orientations[i % len(orientations)], spacing, lesion_rate)
             for i, seed in enumerate(seeds)]
    write_workbook(collection / "lesions.xlsx", cases)
    return cases
