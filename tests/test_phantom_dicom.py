"""Phantoms written as DICOM CT series: valid files, exact geometry in all four patient positions,
deterministic UIDs and synthetic patient data only."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from research.phantoms.generator import Phantom, make_phantom
from research.phantoms.dicom import ORIENTATIONS, write_dicom_series
from support.programs import dciodvfy_messages

SEED = 5
# Non-square pixels and a non-square matrix (matrix=None fits the trunk), so that a swap of
# rows/columns or of the two PixelSpacing values cannot go unnoticed.
SMALL = dict(fov="lumbar", spacing=(3.0, 2.5, 2.0), matrix=None)
THICK = dict(fov="lumbar", spacing=(8.0, 2.5, 2.0), matrix=None)  # few slices: dciodvfy runs once per file


def read_series_volume(folder: Path):
    """Rebuild a series from its headers alone: (HU array (z, y, x), origin (x, y, z), spacing (sz, sy, sx),
    direction (3x3, columns = row direction, column direction, slice normal of the files)).

    Slices are sorted by ImagePositionPatient projected on the normal; the DICOM index axes
    (slice, row, column) are flipped and permuted onto the LPS axes, which only works for
    axis-aligned orientations (all this writer makes).
    """
    datasets = [pydicom.dcmread(p) for p in sorted(Path(folder).glob("*.dcm"))]
    iop = np.array(datasets[0].ImageOrientationPatient, float)
    assert all(np.array_equal(np.array(ds.ImageOrientationPatient, float), iop) for ds in datasets)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    datasets.sort(key=lambda ds: float(np.dot(np.array(ds.ImagePositionPatient, float), normal)))
    positions = np.array([ds.ImagePositionPatient for ds in datasets], float)
    along = (positions - positions[0]) @ normal
    assert np.allclose(positions - positions[0], np.outer(along, normal), atol=1e-6), "slices not stacked on the normal"
    steps = np.diff(along)
    assert np.allclose(steps, steps[0], atol=1e-6), "slices not evenly spaced"
    row_spacing, col_spacing = (float(v) for v in datasets[0].PixelSpacing)
    hu = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in datasets])
    assert np.array_equal(hu, np.rint(hu))
    # Array axis 0 (slice) steps along the normal, 1 (row) along the column direction, 2 (column) along the row direction.
    axes = [(normal, float(steps[0])), (col_dir, row_spacing), (row_dir, col_spacing)]
    origin = positions[0].copy()
    world_of_axis, step_of_world = [], {}
    for a, (vector, step) in enumerate(axes):
        w = int(np.argmax(np.abs(vector)))
        assert abs(abs(vector[w]) - 1.0) < 1e-9, "not axis-aligned"
        if vector[w] < 0:  # flip so the index grows along +w, starting at the far end
            origin += (hu.shape[a] - 1) * step * vector
            hu = np.flip(hu, axis=a)
        world_of_axis.append(w)
        step_of_world[w] = step
    order = [world_of_axis.index(w) for w in (2, 1, 0)]  # array axes (z, y, x)
    volume = np.ascontiguousarray(np.transpose(hu, order)).astype(np.int16)
    spacing = (step_of_world[2], step_of_world[1], step_of_world[0])
    direction = np.column_stack([row_dir, col_dir, normal])
    return volume, tuple(origin), spacing, direction


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return make_phantom(SEED, **SMALL)


@pytest.fixture(scope="module")
def series(phantom, tmp_path_factory) -> dict[str, list[Path]]:
    """The phantom written once in each of the four patient positions."""
    root = tmp_path_factory.mktemp("series")
    return {o: write_dicom_series(phantom, root / o, o) for o in ORIENTATIONS}


def _headers(paths: list[Path]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]


@pytest.mark.dicom3tools
@pytest.mark.peer
@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_every_file_of_the_series_passes_dciodvfy(orientation, tmp_path):
    paths = write_dicom_series(make_phantom(SEED, **THICK), tmp_path, orientation)
    errors = []
    for path in paths:
        errors += [f"{path.name}: {line}" for line in dciodvfy_messages(path) if line.startswith("Error")]
    assert not errors, "dciodvfy errors:\n" + "\n".join(errors[:40])


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_series_rebuilds_the_phantom_volume_exactly(orientation, phantom, series):
    volume, origin, spacing, _ = read_series_volume(series[orientation][0].parent)
    assert volume.shape == phantom.image.shape
    assert np.array_equal(volume, phantom.image)
    assert np.allclose(origin, phantom.grid.origin, rtol=0, atol=1e-6)
    assert np.allclose(spacing, phantom.grid.spacing, rtol=0, atol=1e-9)


def test_prone_series_rebuilds_the_phantom_volume_exactly(phantom, series):
    """Prone files really are flipped in-plane (not just relabelled) and still rebuild the same volume."""
    for orientation in ("HFP", "FFP"):
        volume, _, _, direction = read_series_volume(series[orientation][0].parent)
        assert np.array_equal(direction[:, :2], [[-1, 0], [0, -1], [0, 0]])
        assert np.array_equal(volume, phantom.image)
        first = pydicom.dcmread(series[orientation][0])
        k = round((float(first.ImagePositionPatient[2]) - phantom.grid.origin[2]) / phantom.grid.spacing[0])
        assert np.array_equal(first.pixel_array, phantom.image[k, ::-1, ::-1])


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_instance_one_is_the_top_slice_head_first_and_the_bottom_slice_feet_first(orientation, phantom, series):
    headers = _headers(series[orientation])
    numbers = [int(ds.InstanceNumber) for ds in headers]
    z = [float(ds.ImagePositionPatient[2]) for ds in headers]
    assert numbers == list(range(1, phantom.grid.shape[0] + 1))
    assert z == sorted(z, reverse=orientation.startswith("HF"))
    assert {ds.PatientPosition for ds in headers} == {orientation}
    top = phantom.grid.origin[2] + (phantom.grid.shape[0] - 1) * phantom.grid.spacing[0]
    assert z[0] == pytest.approx(top if orientation.startswith("HF") else phantom.grid.origin[2], abs=1e-6)


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_headers_carry_the_exact_plane_geometry(orientation, phantom, series):
    sz, sy, sx = phantom.grid.spacing
    nz, ny, nx = phantom.grid.shape
    for ds in _headers(series[orientation]):
        assert (int(ds.Rows), int(ds.Columns)) == (ny, nx)
        assert [float(v) for v in ds.PixelSpacing] == [sy, sx]
        assert float(ds.SliceThickness) == sz and float(ds.SpacingBetweenSlices) == sz
        expected = [1, 0, 0, 0, 1, 0] if orientation.endswith("S") else [-1, 0, 0, 0, -1, 0]
        assert [float(v) for v in ds.ImageOrientationPatient] == expected


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_files_are_explicit_vr_little_endian_ct_with_hu_stored_as_signed_integers(orientation, series):
    for path in series[orientation][:3]:
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPClassUID == pydicom.uid.CTImageStorage == ds.file_meta.MediaStorageSOPClassUID
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
        assert (ds.PixelRepresentation, ds.BitsAllocated, ds.BitsStored) == (1, 16, 16)
        assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, 0.0)
        assert ds.pixel_array.dtype == np.int16
        assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
        assert ds.BodyPartExamined == "SPINE" and ds.Manufacturer == "spine-node phantom"
        assert orientation in ds.SeriesDescription and "lumbar" in ds.SeriesDescription


@pytest.mark.parametrize("orientation", ("HFS", "FFP"))
def test_itk_reader_gets_the_same_volume_and_grid(orientation, phantom, series):
    """An independent reader (GDCM via SimpleITK) agrees with the headers' geometry."""
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series[orientation][0].parent))
    image = sitk.DICOMOrient(sitk.ReadImage(files), "LPS")
    assert np.array_equal(sitk.GetArrayFromImage(image), phantom.image)
    assert np.allclose(image.GetOrigin(), phantom.grid.origin, atol=1e-4)
    assert np.allclose(image.GetSpacing()[::-1], phantom.grid.spacing, atol=1e-6)


def test_same_seed_gives_the_same_study_series_and_instance_uids(phantom, series, tmp_path):
    again = _headers(write_dicom_series(make_phantom(SEED, **SMALL), tmp_path, "HFS"))
    first = _headers(series["HFS"])
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SOPInstanceUID"):
        assert [ds[key].value for ds in again] == [ds[key].value for ds in first], key


def test_different_seeds_give_different_study_and_series_uids(series, tmp_path):
    other = _headers(write_dicom_series(make_phantom(SEED + 1, **THICK), tmp_path, "HFS"))[0]
    mine = _headers(series["HFS"][:1])[0]
    assert other.StudyInstanceUID != mine.StudyInstanceUID
    assert other.SeriesInstanceUID != mine.SeriesInstanceUID
    assert other.FrameOfReferenceUID != mine.FrameOfReferenceUID


def test_orientations_of_one_phantom_are_separate_series_of_one_study_and_frame(series):
    firsts = [_headers(series[o][:1])[0] for o in ORIENTATIONS]
    assert len({ds.StudyInstanceUID for ds in firsts}) == 1
    assert len({ds.FrameOfReferenceUID for ds in firsts}) == 1
    assert len({ds.SeriesInstanceUID for ds in firsts}) == len(ORIENTATIONS)
    sops = [ds.SOPInstanceUID for o in ORIENTATIONS for ds in _headers(series[o])]
    assert len(set(sops)) == len(sops)


def test_patient_id_and_study_uid_can_be_given(tmp_path):
    uid = pydicom.uid.generate_uid()
    ds = _headers(write_dicom_series(make_phantom(SEED, **THICK), tmp_path, "FFS", "TEST-1", uid)[:1])[0]
    assert (ds.PatientID, ds.StudyInstanceUID, ds.PatientName) == ("TEST-1", uid, f"Phantom^{SEED}")


def test_files_hold_only_synthetic_patient_data(series):
    allowed = {"PatientName", "PatientID", "PatientBirthDate", "PatientSex"}
    for orientation in ORIENTATIONS:
        for ds in _headers(series[orientation]):
            assert str(ds.PatientName).startswith("Phantom")
            assert ds.PatientID == f"PHANTOM-{SEED:05d}"
            assert ds.PatientBirthDate == "" and ds.PatientSex == ""
            patient = {elem.keyword for elem in ds if elem.tag.group == 0x0010}
            assert patient <= allowed, patient - allowed
            assert ds.ReferringPhysicianName == "" and ds.StudyDescription == "spine-node phantom"
            assert "InstitutionName" not in ds and "OperatorsName" not in ds


def test_unknown_orientation_is_refused(phantom, tmp_path):
    with pytest.raises(ValueError, match="orientation"):
        write_dicom_series(phantom, tmp_path, "LFS")
    assert not list(tmp_path.iterdir())
