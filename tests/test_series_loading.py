"""The DICOM CT series loader: discovery, exact voxels and geometry, every transfer syntax, Enhanced CT."""
from __future__ import annotations

import subprocess
import tracemalloc
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.encaps import encapsulate
from pydicom.fileset import FileSet
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from pipelines.records import CTSeries
from research.phantoms.generator import make_phantom
from research.phantoms.dicom import ORIENTATIONS, write_dicom_series
from pipelines.series.loader import SeriesRules, discover_series, load_series, scan_inputs
from support.paths import REAL_CT, shared
from support.programs import require
from support.synthetic_ct import ct_datasets, enhanced_ct, save, volume

# Non-square pixels, a non-square matrix fitted to the trunk, coarse slices: small and swap-proof.
PHANTOM_GRID = dict(fov="lumbar", spacing=(6.0, 4.0, 3.5), matrix=None)


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(11, **PHANTOM_GRID)


def only_series(inputs) -> CTSeries:
    series = discover_series(inputs)
    assert len(series) == 1, [s.key for s in series]
    return load_series(series[0])


def voxel_world(ct: CTSeries) -> np.ndarray:
    """LPS position (mm) of every voxel of ``ct``, shape (slices, rows, columns, 3), from its Geometry."""
    g = ct.geometry
    k, j, i = np.meshgrid(*(np.arange(n) for n in ct.hu.shape), indexing="ij")
    steps = g.direction * np.array([g.spacing[2], g.spacing[1], g.spacing[0]])
    return g.origin + np.stack([i, j, k], axis=-1) @ steps.T


def phantom_values_at(phantom, world: np.ndarray) -> np.ndarray:
    """The phantom's HU at world positions that must fall exactly on its voxel centres."""
    index = (world - np.array(phantom.grid.origin)) / np.array(phantom.grid.spacing[::-1])
    assert np.allclose(index, np.rint(index), atol=1e-4), "a voxel centre falls between the phantom's voxels"
    i, j, k = np.rint(index).astype(int).transpose(3, 0, 1, 2)
    return phantom.image[k, j, i]


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_phantom_series_loads_back_to_its_exact_voxels_and_positions(phantom, orientation, tmp_path):
    write_dicom_series(phantom, tmp_path, orientation=orientation)
    ct = only_series([tmp_path])
    assert ct.hu.dtype == np.float32 and ct.hu.shape == phantom.image.shape
    assert ct.geometry.spacing == pytest.approx(phantom.grid.spacing, abs=1e-9)
    assert np.array_equal(ct.hu, phantom_values_at(phantom, voxel_world(ct)))
    # Slices ascend along the normal, whatever the instance order; the headers follow the same order.
    z = [float(ds.ImagePositionPatient[2]) for ds in ct.source_images]
    assert z == sorted(z) and len(z) == ct.hu.shape[0]
    assert np.allclose([ct.geometry.frame_position(k) for k in range(len(z))],
                       [[float(v) for v in ds.ImagePositionPatient] for ds in ct.source_images], atol=1e-6)
    assert not any(hasattr(ds, "PixelData") for ds in ct.source_images)
    assert ct.repairs == [] and not ct.resampled


OBLIQUE = {
    "oblique-30-degrees": (1.0, 0.0, 0.0, 0.0, np.cos(np.pi / 6), -np.sin(np.pi / 6)),
    "oblique-two-axes": (np.cos(0.3), np.sin(0.3), 0.0, -np.sin(0.3) * np.cos(0.5), np.cos(0.3) * np.cos(0.5),
                         np.sin(0.5)),
    "columns-towards-anterior": (1.0, 0.0, 0.0, 0.0, -1.0, 0.0),  # normal = -z: slices descend in z
}


@pytest.mark.parametrize("name", list(OBLIQUE))
def test_oblique_series_keeps_its_orientation_and_positions(name, tmp_path):
    orientation = OBLIQUE[name]
    hu = volume(21, 9, 7)
    save(ct_datasets(hu, spacing=(2.5, 0.7, 0.9), orientation=orientation, name=name), tmp_path)
    ct = only_series([tmp_path])
    row, col = np.array(orientation[:3]), np.array(orientation[3:])
    assert np.allclose(ct.geometry.direction, np.stack([row, col, np.cross(row, col)], axis=1), atol=1e-9)
    assert ct.geometry.spacing == pytest.approx((2.5, 0.7, 0.9))
    assert np.array_equal(ct.hu, hu)  # written in ascending order along the normal, so no reordering
    positions = [[float(v) for v in ds.ImagePositionPatient] for ds in ct.source_images]
    assert np.allclose([ct.geometry.frame_position(k) for k in range(21)], positions, atol=1e-6)


def test_folders_and_files_are_searched_recursively_and_non_dicom_files_listed(phantom, tmp_path):
    write_dicom_series(phantom, tmp_path / "a" / "b")
    (tmp_path / "a" / "notes.txt").write_text("not DICOM\n")
    (tmp_path / "empty.dcm").write_bytes(b"")
    first = sorted((tmp_path / "a" / "b").iterdir())[0]
    found = scan_inputs([tmp_path, first, tmp_path / "missing"])
    assert [len(s.instances) for s in found.series] == [phantom.image.shape[0]]  # the file named twice counts once
    reasons = {s.path.name: s.reason for s in found.skipped}
    assert set(reasons) == {"notes.txt", "empty.dcm", "missing"}
    assert "not a" in reasons["notes.txt"] and "no such" in reasons["missing"]


def test_dicomdir_is_skipped_with_a_reason(tmp_path):
    fileset = FileSet()
    for ds in ct_datasets(volume(20)):
        fileset.add(ds)
    fileset.write(tmp_path / "media")
    found = scan_inputs([tmp_path / "media"])
    assert [s.path.name for s in found.skipped if "DICOMDIR" in s.reason] == ["DICOMDIR"]
    assert len(found.series) == 1 and np.array_equal(load_series(found.series[0]).hu, volume(20))


@pytest.mark.real_data
def test_real_jpeg2000_series_without_uids_loads_with_derived_uids():
    series = discover_series([REAL_CT])
    assert len(series) == 1 and series[0].series_instance_uid == ""
    assert discover_series([REAL_CT])[0].key == series[0].key  # deterministic: usable as an output folder
    ct = load_series(series[0])
    assert ct.hu.shape == (20, 512, 512)
    assert ct.geometry.spacing == pytest.approx((2.0, 0.9765625, 0.9765625))
    assert ct.series_instance_uid == series[0].key and ct.study_instance_uid
    assert [r.split(":")[0] for r in ct.repairs] == ["derived_uids"]
    for ds in ct.source_images:
        assert ds.SeriesInstanceUID == ct.series_instance_uid and ds.StudyInstanceUID == ct.study_instance_uid
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    # The same voxels as GDCM (through SimpleITK) reads, in the same order (z ascending).
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(REAL_CT), ""))
    image = reader.Execute()
    assert np.allclose(image.GetOrigin(), ct.geometry.origin) and np.allclose(image.GetDirection(), np.eye(3).ravel())
    assert np.array_equal(ct.hu, sitk.GetArrayFromImage(image).astype(np.float32))
    assert ct.hu.min() == -1024.0


@pytest.fixture(scope="module")
def real_native(tmp_path_factory):
    """The real series decoded once to Explicit VR Little Endian files, and its HU as loaded from J2K."""
    folder = tmp_path_factory.mktemp("native")
    for path in sorted(REAL_CT.iterdir()):
        ds = pydicom.dcmread(path)
        ds.decompress()
        ds.save_as(folder / path.name, enforce_file_format=True)
    return folder, only_series([REAL_CT]).hu


def _pydicom_encode(uid: str, **options):
    def encode(src: Path, dst: Path) -> None:
        ds = pydicom.dcmread(src)
        if uid in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
            ds.file_meta.TransferSyntaxUID = uid
        else:
            ds.compress(uid, generate_instance_uid=False, **options)
        ds.save_as(dst, enforce_file_format=True)
    return encode


def _dcmtk(tool: str, *options: str):
    def encode(src: Path, dst: Path) -> None:
        subprocess.run([require(tool), *options, str(src), str(dst)], check=True, capture_output=True)
    encode.dcmtk = True
    return encode


def _htj2k_lossless(src: Path, dst: Path) -> None:
    """HTJ2K (no pydicom encoder yet): imagecodecs, which nnU-Net installs, writes the codestream."""
    imagecodecs = pytest.importorskip("imagecodecs")
    ds = pydicom.dcmread(src)
    ds.PixelData = encapsulate([imagecodecs.htj2k_encode(ds.pixel_array, level=0)])
    ds.file_meta.TransferSyntaxUID = HTJ2KLossless
    ds.save_as(dst, enforce_file_format=True)


# (transfer syntax, encoder, largest HU difference allowed: 0 = lossless)
SYNTAXES = {
    "explicit-vr-le": (ExplicitVRLittleEndian, _pydicom_encode(ExplicitVRLittleEndian), 0),
    "implicit-vr-le": (ImplicitVRLittleEndian, _pydicom_encode(ImplicitVRLittleEndian), 0),
    "deflated": (DeflatedExplicitVRLittleEndian, _pydicom_encode(DeflatedExplicitVRLittleEndian), 0),
    "explicit-vr-be": (ExplicitVRBigEndian, _dcmtk("dcmconv", "+tb"), 0),
    "rle": (RLELossless, _pydicom_encode(RLELossless), 0),
    "jpeg-ls-lossless": (JPEGLSLossless, _pydicom_encode(JPEGLSLossless), 0),
    "jpeg-ls-near-lossless": (JPEGLSNearLossless, _pydicom_encode(JPEGLSNearLossless, jls_error=3), 3),
    "jpeg2000-lossless": (JPEG2000Lossless, _pydicom_encode(JPEG2000Lossless), 0),
    "jpeg2000-lossy": (JPEG2000, _pydicom_encode(JPEG2000, j2k_cr=[10]), 200),
    "htj2k-lossless": (HTJ2KLossless, _htj2k_lossless, 0),
    "jpeg-lossless-sv1": (JPEGLosslessSV1, _dcmtk("dcmcjpeg", "+e1"), 0),
    "jpeg-lossless-process14": (JPEGLossless, _dcmtk("dcmcjpeg", "+el", "+sv", "6"), 0),
}


@pytest.mark.real_data
@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.peer) if getattr(encode, "dcmtk", False)
                                  else name for name, (_, encode, _) in SYNTAXES.items()])
def test_real_series_reencoded_in_each_transfer_syntax_gives_the_same_hu(real_native, name, tmp_path):
    native, expected = real_native
    uid, encode, max_error = SYNTAXES[name]
    for src in sorted(native.iterdir()):
        encode(src, tmp_path / src.name)
    assert {pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID
            for p in tmp_path.iterdir()} == {uid}
    ct = only_series([tmp_path])
    difference = np.abs(ct.hu - expected)
    if max_error == 0:
        assert np.array_equal(ct.hu, expected)
    else:  # lossy: close everywhere, and on average within a few HU
        assert difference.max() <= max_error and difference.mean() < 5, (difference.max(), difference.mean())


@pytest.mark.real_data
@pytest.mark.peer
def test_lossy_jpeg_extended_12bit_decodes_as_dcmtk_decodes_it(real_native, tmp_path):
    """DCMTK's lossy JPEG encoder rewrites a CT's pixel range, so the reference is DCMTK's own decoder."""
    native, _ = real_native
    (tmp_path / "jpeg").mkdir()
    (tmp_path / "reference").mkdir()
    for src in sorted(native.iterdir())[:4]:
        _dcmtk("dcmcjpeg", "+ee", "+q", "95")(src, tmp_path / "jpeg" / src.name)
        _dcmtk("dcmdjpeg")(tmp_path / "jpeg" / src.name, tmp_path / "reference" / src.name)
    assert pydicom.dcmread(next((tmp_path / "jpeg").iterdir())).file_meta.TransferSyntaxUID == JPEGExtended12Bit
    rules = SeriesRules(min_slices=4)
    lossy = load_series(discover_series([tmp_path / "jpeg"])[0], rules)
    reference = load_series(discover_series([tmp_path / "reference"])[0], rules)
    # Lossy JPEG's inverse DCT may round differently from one decoder to another (libjpeg 6b vs libjpeg): +-1.
    difference = np.abs(lossy.hu - reference.hu)
    assert difference.max() <= 2 and difference.mean() < 0.2, (difference.max(), difference.mean())


def test_enhanced_ct_multi_frame_gives_the_volume_of_its_single_frame_source(phantom, tmp_path):
    paths = write_dicom_series(phantom, tmp_path / "single", orientation="FFS")
    single = only_series([tmp_path / "single"])
    slices = [pydicom.dcmread(p) for p in paths]
    order = np.random.default_rng(3).permutation(len(slices))  # frames stored in no particular order
    save([enhanced_ct(slices, order)], tmp_path / "enhanced")
    multi = only_series([tmp_path / "enhanced"])
    assert np.array_equal(multi.hu, single.hu)
    assert np.allclose(multi.geometry.origin, single.geometry.origin)
    assert np.allclose(multi.geometry.direction, single.geometry.direction)
    assert multi.geometry.spacing == pytest.approx(single.geometry.spacing)
    assert len(multi.source_images) == 1 and multi.source_images[0].SOPClassUID == "1.2.840.10008.5.1.4.1.1.2.1"
    # frame_numbers says which stored frame each slice came from.
    assert [int(order[n - 1]) for n in multi.frame_numbers] == list(range(len(slices)))


def test_legacy_converted_enhanced_ct_from_highdicom_loads_like_its_source(phantom, tmp_path):
    paths = write_dicom_series(phantom, tmp_path / "single", orientation="HFP")
    single = only_series([tmp_path / "single"])
    legacy = hd.legacy.LegacyConvertedEnhancedCTImage(
        [pydicom.dcmread(p) for p in paths], series_instance_uid=hd.UID(), series_number=2,
        sop_instance_uid=hd.UID(), instance_number=1)
    save([legacy], tmp_path / "legacy")
    multi = only_series([tmp_path / "legacy"])
    assert np.array_equal(multi.hu, single.hu)
    assert np.allclose(multi.geometry.origin, single.geometry.origin)
    assert np.allclose(multi.geometry.direction, single.geometry.direction)


def test_per_frame_rescale_is_honoured(tmp_path):
    hu = volume(22).astype(np.int16) * 2  # even, so a slope of 2 stores it exactly
    plain = ct_datasets(hu, name="rescale")
    scaled = ct_datasets(hu, name="rescale", slope=2.0, intercept=-1000.0)
    mixed = [scaled[k] if k % 2 else plain[k] for k in range(len(plain))]  # every other frame rescaled
    save(mixed, tmp_path / "single")
    assert np.array_equal(only_series([tmp_path / "single"]).hu, hu)
    save([enhanced_ct(mixed)], tmp_path / "enhanced")
    assert np.array_equal(only_series([tmp_path / "enhanced"]).hu, hu)


@pytest.mark.real_data
def test_implicit_vr_real_ge_series_loads_when_few_slices_are_allowed():
    folder = shared("reference-objects", "dcmqi-ct-3slice")
    ct_files = [s for s in discover_series([folder]) if s.modality == "CT"]
    ct = load_series(ct_files[0], SeriesRules(min_slices=3))
    assert ct.hu.shape == (3, 512, 512) and ct.repairs == []


def test_loading_holds_little_more_than_the_volume(tmp_path):
    hu = volume(40, 192, 160)
    save(ct_datasets(hu, name="memory"), tmp_path)
    series = discover_series([tmp_path])[0]
    tracemalloc.start()
    try:
        ct = load_series(series)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.array_equal(ct.hu, hu)
    assert peak < 1.5 * ct.hu.nbytes, peak / ct.hu.nbytes
