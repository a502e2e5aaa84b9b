"""Small synthetic CT series for the series loader's tests: valid by default, each knob a way to break it.

``ct_datasets`` makes one single-frame CT dataset per slice of an int16 volume (stored
value = HU by default), with deterministic UIDs; tests change the datasets they need and
write them with ``save``. ``enhanced_ct`` packs single-frame datasets into one Enhanced CT
Image Storage instance (per-frame functional groups), in any frame order.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.valuerep import DSfloat
from pydicom.uid import CTImageStorage, EnhancedCTImageStorage, ExplicitVRLittleEndian, generate_uid

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def volume(slices: int = 24, rows: int = 12, columns: int = 10, seed: int = 0) -> np.ndarray:
    """A small int16 HU volume with structure in every direction (so flips and shuffles show)."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(np.arange(slices), np.arange(rows), np.arange(columns), indexing="ij")
    return (10 * k - 3 * j + 7 * i + rng.integers(-20, 20, (slices, rows, columns)) - 500).astype(np.int16)


def _ds(value: float) -> DSfloat:
    """A Decimal String as close to ``value`` as 16 characters allow."""
    return DSfloat(float(value), auto_format=True)


def ct_datasets(hu: np.ndarray, *, spacing=(2.0, 0.8, 0.6), origin=(-10.0, -20.0, 100.0), orientation=AXIAL,
                name: str = "series", slope: float = 1.0, intercept: float = 0.0) -> list[Dataset]:
    """One CT Image Storage dataset per slice of ``hu`` (stored = (HU - intercept) / slope), slice k at
    origin + k * spacing[0] along the normal of ``orientation``; InstanceNumber = k + 1."""
    row, col = np.array(orientation[:3], float), np.array(orientation[3:], float)
    normal = np.cross(row, col)
    study = generate_uid(entropy_srcs=["study", name])
    series = generate_uid(entropy_srcs=["series", name])
    frame_of_reference = generate_uid(entropy_srcs=["for", name])
    stored = np.rint((hu.astype(np.float64) - intercept) / slope).astype(np.int16)
    out = []
    for k in range(hu.shape[0]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[series, str(k)])
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_reference
        ds.PatientName, ds.PatientID = "Test^Series", "TEST-SERIES"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.StudyID = "CT", 1, k + 1, "1"
        ds.StudyDate = ds.SeriesDate = "20000101"
        ds.StudyTime = ds.SeriesTime = "120000"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [_ds(v) for v in orientation]
        ds.ImagePositionPatient = [_ds(v) for v in np.array(origin) + k * spacing[0] * normal]
        ds.PixelSpacing = [spacing[1], spacing[2]]
        ds.SliceThickness = spacing[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = hu.shape[1:]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = np.ascontiguousarray(stored[k], "<i2").tobytes()
        out.append(ds)
    return out


def save(datasets: Sequence[Dataset], folder: Path, prefix: str = "IM") -> list[Path]:
    """Write datasets as files ``<prefix>0001.dcm``... in ``folder`` (created), in the order given."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, ds in enumerate(datasets, start=1):
        path = folder / f"{prefix}{n:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _item(**attributes) -> Dataset:
    item = Dataset()
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return item


def enhanced_ct(slices: Sequence[Dataset], order: Sequence[int] | None = None) -> Dataset:
    """An Enhanced CT Image Storage instance holding ``slices`` as frames, in ``order`` (default: as given).

    Orientation and pixel measures are shared functional groups; position and rescale are
    per frame (so each frame may carry its own RescaleSlope/Intercept).
    """
    order = list(range(len(slices))) if order is None else [int(k) for k in order]
    first = slices[0]
    ds = copy.deepcopy(first)
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
                    "RescaleSlope", "RescaleIntercept", "InstanceNumber", "PixelData"):
        delattr(ds, keyword)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(
        entropy_srcs=["enhanced", first.SeriesInstanceUID])
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.NumberOfFrames = len(order)
    ds.SharedFunctionalGroupsSequence = DicomSequence([_item(
        PlaneOrientationSequence=DicomSequence([_item(ImageOrientationPatient=first.ImageOrientationPatient)]),
        PixelMeasuresSequence=DicomSequence([_item(PixelSpacing=first.PixelSpacing,
                                                   SliceThickness=first.SliceThickness)]),
    )])
    ds.PerFrameFunctionalGroupsSequence = DicomSequence([_item(
        PlanePositionSequence=DicomSequence([_item(ImagePositionPatient=slices[k].ImagePositionPatient)]),
        PixelValueTransformationSequence=DicomSequence([_item(
            RescaleSlope=slices[k].RescaleSlope, RescaleIntercept=slices[k].RescaleIntercept, RescaleType="HU")]),
        FrameContentSequence=DicomSequence([_item(InStackPositionNumber=k + 1)]),
    ) for k in order])
    ds.PixelData = b"".join(slices[k].PixelData for k in order)
    ds["PixelData"].VR = "OW"
    return ds
