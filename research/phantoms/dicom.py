"""Write a phantom as a DICOM CT Image Storage series, one file per axial slice.

The series is the input a DICOM node receives from a scanner or a PACS, so its geometry
must be exact: each slice's ImagePositionPatient is the LPS position (mm) of its first
transmitted pixel, ImageOrientationPatient gives the row and column directions, and
PixelSpacing is (row spacing, column spacing) = (sy, sx). Pixels are the phantom's HU as
signed 16-bit integers with RescaleSlope 1 and RescaleIntercept 0, so stored value = HU.

The four patient positions are exact array flips of the same volume, never a resampling:

* supine (HFS, FFS): IOP [1,0,0, 0,1,0], pixel (r, c) = voxel (j=r, i=c);
* prone (HFP, FFP): IOP [-1,0,0, 0,-1,0], the slice flipped along both in-plane axes,
  so the first pixel is the voxel with the largest x and y;
* head first (HFS, HFP): instance 1 is the most superior slice; feet first (FFS, FFP):
  instance 1 is the most inferior one.

The slice normal (row x column) is +z for all four. Patient data are synthetic only and
all UIDs derive from the seed (and grid), so the same phantom gives the same study,
series and instances, byte for byte.
"""
from __future__ import annotations

import copy
import datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DSfloat

from research.phantoms.generator import Grid, Phantom

ORIENTATIONS = ("HFS", "FFS", "HFP", "FFP")

MANUFACTURER = "spine-node phantom"
STUDY_DESCRIPTION = "spine-node phantom"
# A fixed, obviously synthetic acquisition date: real dates would make the files differ run to run.
SYNTHETIC_DATE = "20000101"
SYNTHETIC_TIME = "120000"


def _ds(value: float) -> DSfloat:
    """A Decimal String of at most 16 characters, as close to ``value`` as DS allows (~1e-11 mm)."""
    return DSfloat(float(value), auto_format=True)


def _check_orientation(orientation: str) -> None:
    """Refuse an unknown patient position early, before any file is written."""
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {ORIENTATIONS}, not {orientation!r}")


def is_prone(orientation: str) -> bool:
    """True for the prone positions, whose slices are flipped along both in-plane axes."""
    return orientation.endswith("P")


def image_orientation(orientation: str) -> list[float]:
    """ImageOrientationPatient (row direction, column direction) of a patient position."""
    return [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0] if is_prone(orientation) else [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def slice_pixels(image: np.ndarray, k: int, orientation: str) -> np.ndarray:
    """The transmitted pixels (rows, columns) of axial slice ``k``: the array slice, flipped if prone."""
    plane = image[k]
    if is_prone(orientation):
        plane = plane[::-1, ::-1]
    return np.ascontiguousarray(plane, dtype="<i2")


def slice_position(grid: Grid, k: int, orientation: str) -> tuple[float, float, float]:
    """LPS position (mm) of the first transmitted pixel of slice ``k`` (ImagePositionPatient)."""
    (_, ny, nx), (sz, sy, sx), (x0, y0, z0) = grid.shape, grid.spacing, grid.origin
    if is_prone(orientation):  # the first pixel is the voxel (k, ny-1, nx-1)
        return x0 + (nx - 1) * sx, y0 + (ny - 1) * sy, z0 + k * sz
    return x0, y0, z0 + k * sz


def instance_order(nz: int, orientation: str) -> list[int]:
    """Slice indices k in InstanceNumber order: head first starts at the top, feet first at the bottom."""
    return list(range(nz - 1, -1, -1)) if orientation.startswith("HF") else list(range(nz))


def default_patient_id(seed: int) -> str:
    """The synthetic PatientID of a phantom."""
    return f"PHANTOM-{seed:05d}"


def study_uid_for(seed: int, patient_id: str, visit: int = 0) -> str:
    """StudyInstanceUID of a phantom: a hash of the seed and patient ID (and a follow-up's visit), so a seed is one study."""
    if visit:
        return generate_uid(entropy_srcs=["spine-node phantom study", str(seed), patient_id, f"visit {visit}"])
    return generate_uid(entropy_srcs=["spine-node phantom study", str(seed), patient_id])


def series_uid_for(study_uid: str, phantom: Phantom, orientation: str) -> str:
    """SeriesInstanceUID: a hash of the study, the orientation and the grid, so different grids differ."""
    g = phantom.grid
    return generate_uid(entropy_srcs=["series", study_uid, orientation, phantom.fov,
                                      repr(g.shape), repr(g.spacing), repr(g.origin)])


def frame_of_reference_uid_for(study_uid: str) -> str:
    """FrameOfReferenceUID: one per study, since every grid of a seed samples the same world (LPS) frame."""
    return generate_uid(entropy_srcs=["frame of reference", study_uid])


def sop_instance_uid_for(series_uid: str, instance_number: int) -> str:
    """SOPInstanceUID of one slice: a hash of its series and instance number."""
    return generate_uid(entropy_srcs=["instance", series_uid, str(instance_number)])


def study_date(phantom: Phantom) -> str:
    """The phantom's StudyDate: the fixed synthetic date, a follow-up's ``days_after_baseline`` later."""
    if not phantom.days_after_baseline:
        return SYNTHETIC_DATE
    return (datetime.date(2000, 1, 1) + datetime.timedelta(days=phantom.days_after_baseline)).strftime("%Y%m%d")


def _patient_and_study(ds: Dataset, phantom: Phantom, patient_id: str, study_uid: str) -> None:
    """Patient and General Study modules: synthetic identity only, fixed dates (type 2 kept present)."""
    ds.PatientName = f"Phantom^{phantom.seed}"
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = study_date(phantom)
    ds.StudyTime = SYNTHETIC_TIME
    ds.ReferringPhysicianName = ""
    ds.StudyID = str(phantom.seed)[-16:]
    ds.AccessionNumber = ""
    ds.StudyDescription = STUDY_DESCRIPTION


def _series_and_equipment(ds: Dataset, phantom: Phantom, orientation: str, series_uid: str,
                          frame_uid: str) -> None:
    """General Series, Frame of Reference and General Equipment modules."""
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = ORIENTATIONS.index(orientation) + 1
    ds.SeriesDate = study_date(phantom)
    ds.SeriesTime = SYNTHETIC_TIME
    ds.SeriesDescription = f"Phantom {phantom.fov} {orientation}"
    ds.BodyPartExamined = "SPINE"
    ds.PatientPosition = orientation
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "research.phantoms.generator"
    ds.SoftwareVersions = "spine-node"


def _image_pixel_and_ct(ds: Dataset, grid: Grid, orientation: str) -> None:
    """Image Plane (series-constant part), Image Pixel, CT Image and VOI LUT attributes."""
    nz, ny, nx = grid.shape
    sz, sy, sx = grid.spacing
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImageOrientationPatient = [_ds(v) for v in image_orientation(orientation)]
    ds.PixelSpacing = [_ds(sy), _ds(sx)]
    ds.SliceThickness = _ds(sz)
    ds.SpacingBetweenSlices = _ds(sz)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = ny, nx
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1  # signed: stored value = HU exactly
    ds.RescaleIntercept = _ds(0)
    ds.RescaleSlope = _ds(1)
    ds.RescaleType = "HU"
    ds.WindowCenter = _ds(400)
    ds.WindowWidth = _ds(1800)
    ds.WindowCenterWidthExplanation = "BONE"
    ds.KVP = _ds(120)
    ds.AcquisitionNumber = 1
    ds.ConvolutionKernel = "STANDARD"
    ds.GantryDetectorTilt = _ds(0)
    ds.ReconstructionDiameter = _ds(max(ny * sy, nx * sx))
    ds.XRayTubeCurrent = 200
    ds.ScanOptions = "HELICAL"


def series_template(phantom: Phantom, orientation: str, patient_id: str, study_uid: str) -> Dataset:
    """Every attribute that is the same for all slices of the series (no per-slice geometry or pixels)."""
    series_uid = series_uid_for(study_uid, phantom, orientation)
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    _patient_and_study(ds, phantom, patient_id, study_uid)
    _series_and_equipment(ds, phantom, orientation, series_uid, frame_of_reference_uid_for(study_uid))
    _image_pixel_and_ct(ds, phantom.grid, orientation)
    ds.ContentDate = study_date(phantom)
    ds.ContentTime = SYNTHETIC_TIME
    ds.AcquisitionDate = study_date(phantom)
    ds.AcquisitionTime = SYNTHETIC_TIME
    if phantom.contrast:  # Contrast/Bolus module: required when contrast was given (the aorta is enhanced)
        ds.ContrastBolusAgent = "synthetic iodinated contrast (phantom)"
    return ds


def slice_dataset(template: Dataset, phantom: Phantom, k: int, instance_number: int,
                  orientation: str) -> Dataset:
    """One slice's file: the template plus its UID, position, instance number and pixels."""
    ds = copy.deepcopy(template)
    ds.SOPInstanceUID = sop_instance_uid_for(template.SeriesInstanceUID, instance_number)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.InstanceNumber = instance_number
    position = slice_position(phantom.grid, k, orientation)
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.SliceLocation = _ds(position[2])
    ds.PixelData = slice_pixels(phantom.image, k, orientation).tobytes()
    return ds


def write_dicom_series(phantom: Phantom, folder: Path, orientation: str = "HFS", patient_id: str | None = None,
                       study_uid=None, issuer: str | None = None) -> list[Path]:
    """Write ``phantom`` as a CT series in ``folder`` and return the files in InstanceNumber order.

    ``patient_id`` defaults to ``PHANTOM-<seed>``; ``study_uid`` defaults to a UID derived from
    the seed and patient ID (give one to put several phantoms in one study). Files are named
    ``CT<instance>.dcm``; files already in ``folder`` are left alone. ``issuer`` sets
    IssuerOfPatientID (absent otherwise); a follow-up (``Phantom.visit``) gets a study of its own
    and its later StudyDate.
    """
    _check_orientation(orientation)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    patient_id = patient_id or default_patient_id(phantom.seed)
    study_uid = str(study_uid) if study_uid else study_uid_for(phantom.seed, patient_id, phantom.visit)
    template = series_template(phantom, orientation, patient_id, study_uid)
    if issuer:
        template.IssuerOfPatientID = issuer
    paths = []
    for number, k in enumerate(instance_order(phantom.grid.shape[0], orientation), start=1):
        path = folder / f"CT{number:04d}.dcm"
        slice_dataset(template, phantom, k, number, orientation).save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_followup_pair(pair: tuple[Phantom, Phantom], folder: Path, orientation: str = "HFS",
                        issuer: str = "SPINE-NODE-PHANTOMS") -> tuple[list[Path], list[Path]]:
    """A baseline and its follow-up (``report.followup_pair``) as two studies of one patient: same PatientID
    and issuer, the follow-up later, with its own StudyInstanceUID; in ``folder/baseline`` and ``folder/followup``."""
    baseline, followup = pair
    patient = default_patient_id(baseline.seed)
    return (write_dicom_series(baseline, Path(folder) / "baseline", orientation, patient, issuer=issuer),
            write_dicom_series(followup, Path(folder) / "followup", orientation, patient, issuer=issuer))
