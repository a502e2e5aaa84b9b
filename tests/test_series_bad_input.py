"""The bad-input corpus: broken or odd CT series, generated here, each with the outcome the loader must give.

Every case builds a folder from the same small valid series (24 axial slices, 12x10,
stored value = HU) and breaks it one way. The outcome is either "loaded" with exactly the
listed repairs (and the volume of the valid series, unless the case says otherwise) or
"rejected" with a ``SeriesRejected`` code. A refusal's message names the series by UID and
never the patient.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import (
    MRImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from pipelines.errors import SeriesRejected
from pipelines.series.loader import SeriesRules, load_series, scan_inputs
from pipelines.series.checks import REJECTION_CODES
from support.synthetic_ct import ct_datasets, enhanced_ct, save, volume

BASE = volume(24, 12, 10)
SPACING = (2.0, 0.8, 0.6)


def base(name: str, hu: np.ndarray = BASE, **options) -> list[pydicom.Dataset]:
    return ct_datasets(hu, spacing=SPACING, name=name, **options)


def renew_uid(ds: pydicom.Dataset, tag: str) -> pydicom.Dataset:
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[tag, ds.SOPInstanceUID])
    return ds


def scouts(datasets, count: int, localizer_type: bool, rows: int = 16) -> list[pydicom.Dataset]:
    """Coronal scout images of the series (a topogram): another plane, another size."""
    out = []
    for n in range(count):
        ds = renew_uid(copy.deepcopy(datasets[0]), f"scout{n}")
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER" if localizer_type else "AXIAL"]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]
        ds.ImagePositionPatient = [-10.0, -15.0 + 5 * n, 150.0]
        ds.Rows, ds.Columns = rows, 10
        ds.PixelData = np.full((rows, 10), 100 + n, "<i2").tobytes()
        ds.InstanceNumber = 100 + n
        out.append(ds)
    return out


# ---------------------------------------------------------------------------- the cases

def not_ct_mr(folder: Path) -> None:
    datasets = base("mr")
    for ds in datasets:
        ds.Modality = "MR"
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    save(datasets, folder)


def _rgb(datasets: list) -> list:
    """The datasets with 8-bit RGB pixels (black) in place of their CT pixels."""
    for ds in datasets:
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = np.zeros((12, 10, 3), np.uint8).tobytes()
    return datasets


def secondary_capture_rgb(folder: Path) -> None:
    datasets = base("sc")
    for ds in datasets:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    save(_rgb(datasets), folder)


def ct_rgb_pixels(folder: Path) -> None:
    save(_rgb(base("rgb")), folder)


def scout_mixed_in(folder: Path) -> None:
    datasets = base("scout")
    save(datasets + scouts(datasets, 2, localizer_type=True), folder)


def scout_without_localizer_type(folder: Path) -> None:
    datasets = base("scout-untyped")
    save(datasets + scouts(datasets, 1, localizer_type=False), folder)


def many_untyped_planes(folder: Path) -> None:
    datasets = base("many-planes")
    save(datasets + scouts(datasets, 5, localizer_type=False, rows=12), folder)


def only_localizers(folder: Path) -> None:
    save(scouts(base("only-scouts"), 3, localizer_type=True), folder)


def too_few_slices(folder: Path) -> None:
    save(base("short")[:12], folder)


def inconsistent_orientation(folder: Path) -> None:
    datasets = base("rotated")
    c, s = np.cos(np.radians(10)), np.sin(np.radians(10))
    for ds in datasets[5:9]:
        ds.ImageOrientationPatient = [c, s, 0.0, -s, c, 0.0]
    save(datasets, folder)


def inconsistent_pixel_spacing(folder: Path) -> None:
    datasets = base("spacing")
    for ds in datasets[3:6]:
        ds.PixelSpacing = [0.9, 0.6]
    save(datasets, folder)


def mixed_matrix_size(folder: Path) -> None:
    datasets = base("matrix")
    datasets[7].Rows = 10
    datasets[7].PixelData = np.zeros((10, 10), "<i2").tobytes()
    save(datasets, folder)


def gap(folder: Path) -> None:
    save([ds for k, ds in enumerate(base("gap")) if k not in (10, 11)], folder)


def irregular_spacing(folder: Path) -> None:
    datasets = base("irregular")
    datasets[10].ImagePositionPatient[2] += 0.6
    save(datasets, folder)


def duplicate_identical(folder: Path) -> None:
    datasets = base("duplicate")
    save(datasets + [renew_uid(copy.deepcopy(datasets[5]), "copy")], folder)


def duplicate_same_instance_twice(folder: Path) -> None:
    datasets = base("same-twice")
    save(datasets, folder)
    save([datasets[3]], folder, prefix="COPY")


def duplicate_conflicting(folder: Path) -> None:
    datasets = base("conflict")
    other = renew_uid(copy.deepcopy(datasets[5]), "other")
    other.PixelData = (BASE[5] + 1).astype("<i2").tobytes()
    save(datasets + [other], folder)


TILT_WORLD = volume(24, 40, 10, seed=7)  # the untilted truth: 40 rows, of which each tilted frame sees 16


def tilted_datasets(name: str, drift_rows_per_slice: int, sz: float = SPACING[0]) -> list[pydicom.Dataset]:
    """A gantry tilt: slice k's origin drifts k * drift rows along the column direction, and its pixels
    sample the same world as TILT_WORLD, so that un-tilting must give TILT_WORLD back."""
    world = TILT_WORLD
    slices = ct_datasets(world[:, :16], spacing=(sz, SPACING[1], SPACING[2]), name=name)
    for k, ds in enumerate(slices):
        shift = k * drift_rows_per_slice
        frame = np.full((16, 10), -1024, np.int16)
        rows = world[k, shift:shift + 16]
        frame[:len(rows)] = rows
        ds.PixelData = frame.astype("<i2").tobytes()
        ds.ImagePositionPatient[1] += shift * SPACING[1]
    return slices


def gantry_tilt(folder: Path) -> None:
    save(tilted_datasets("tilt", 1), folder)


def gantry_tilt_too_steep(folder: Path) -> None:
    save(tilted_datasets("steep", 1, sz=0.4), folder)  # 0.8 mm drift per 0.4 mm: 63 degrees


def misaligned(folder: Path) -> None:
    datasets = base("misaligned")
    jitter = np.random.default_rng(1).uniform(-2, 2, len(datasets))
    for ds, dx in zip(datasets, jitter):
        ds.ImagePositionPatient[0] += float(dx)
    save(datasets, folder)


def empty_uids(folder: Path) -> None:
    """As real-ct-dicom-t11-t12: Study/Series/SOP Instance UIDs and SOPClassUID empty (file meta keeps SOP UIDs)."""
    datasets = base("no-uids")
    for ds in datasets:
        ds.StudyInstanceUID = ds.SeriesInstanceUID = ds.SOPInstanceUID = ds.SOPClassUID = ""
    save(datasets, folder)


def truncated_file(folder: Path) -> None:
    paths = save(base("truncated"), folder)
    paths[8].write_bytes(paths[8].read_bytes()[:-100])


def corrupt_rle(folder: Path) -> None:
    datasets = base("corrupt-rle")
    for ds in datasets:
        ds.compress(RLELossless, generate_instance_uid=False)
    datasets[4].PixelData = encapsulate([np.random.default_rng(2).bytes(64)])
    save(datasets, folder)


def no_pixel_data(folder: Path) -> None:
    datasets = base("no-pixels")
    del datasets[2].PixelData
    save(datasets, folder)


def bare_datasets_without_file_meta(folder: Path) -> None:
    """Files without preamble or file meta (old exports): still DICOM, read as implicit VR."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, ds in enumerate(base("bare")):
        del ds.file_meta
        pydicom.dcmwrite(folder / f"{k}", ds, implicit_vr=True, little_endian=True)


def non_dicom_files(folder: Path) -> None:
    save(base("with-junk"), folder)
    (folder / "README.txt").write_text("exported by a viewer\n")
    (folder / "thumbs.db").write_bytes(np.random.default_rng(3).bytes(500))


def shuffled(folder: Path) -> None:
    datasets = base("shuffled")
    order = np.random.default_rng(4).permutation(len(datasets))
    for ds, number in zip(datasets, order):
        ds.InstanceNumber = int(number) + 1
    save([datasets[int(k)] for k in np.random.default_rng(5).permutation(len(datasets))], folder)


def missing_position(folder: Path) -> None:
    datasets = base("no-position")
    del datasets[6].ImagePositionPatient
    save(datasets, folder)


def missing_pixel_spacing(folder: Path) -> None:
    datasets = base("no-spacing")
    for ds in datasets:
        del ds.PixelSpacing
    save(datasets, folder)


def rescale_slope(folder: Path) -> None:
    save(base("slope", BASE * 2, slope=0.5, intercept=-1024.0), folder)


def two_series_in_one_folder(folder: Path) -> None:
    save(base("first"), folder, prefix="A")
    save(base("second"), folder, prefix="B")


def dose_screen_in_series(folder: Path) -> None:
    datasets = base("dose")
    screen = renew_uid(copy.deepcopy(datasets[0]), "dose")
    screen.SOPClassUID = screen.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    screen.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    save(datasets + [screen], folder)


def enhanced_mixed_with_slices(folder: Path) -> None:
    datasets = base("mixed-kinds")
    save(datasets[1:] + [enhanced_ct(datasets[:1])], folder)


def series_in_two_studies(folder: Path) -> None:
    datasets = base("two-studies")
    for ds in datasets[12:]:
        ds.StudyInstanceUID = generate_uid(entropy_srcs=["another study"])
    save(datasets, folder)


def series_of_two_patients(folder: Path) -> None:
    datasets = base("two-patients")
    for ds in datasets[12:]:
        ds.PatientID = "OTHER-PATIENT"
    save(datasets, folder)


class Case(NamedTuple):
    build: Callable[[Path], None]
    outcome: str                      # "loaded" or "rejected"
    code: str | tuple[str, ...] = ()  # rejection code, or the repairs' codes (in order) when loaded
    expected_hu: np.ndarray | None = BASE
    series: int = 1


CORPUS = {
    "not-ct-mr": Case(not_ct_mr, "rejected", "not_ct"),
    "secondary-capture-rgb": Case(secondary_capture_rgb, "rejected", "not_ct"),
    "ct-with-rgb-pixels": Case(ct_rgb_pixels, "rejected", "unsupported_pixels"),
    "scout-mixed-in": Case(scout_mixed_in, "loaded", ("dropped_localizers",)),
    "scout-without-localizer-type": Case(scout_without_localizer_type, "loaded", ("dropped_localizers",)),
    "many-images-in-other-planes": Case(many_untyped_planes, "rejected", "orientation"),
    "only-localizers": Case(only_localizers, "rejected", "too_few_slices"),
    "too-few-slices": Case(too_few_slices, "rejected", "too_few_slices"),
    "inconsistent-orientation": Case(inconsistent_orientation, "rejected", "orientation"),
    "inconsistent-pixel-spacing": Case(inconsistent_pixel_spacing, "rejected", "pixel_spacing"),
    "mixed-matrix-size": Case(mixed_matrix_size, "rejected", "matrix_size"),
    "gap": Case(gap, "rejected", "gap"),
    "irregular-spacing": Case(irregular_spacing, "rejected", "irregular_spacing"),
    "duplicate-identical": Case(duplicate_identical, "loaded", ("dropped_duplicates",)),
    "same-instance-twice": Case(duplicate_same_instance_twice, "loaded", ("dropped_duplicates",)),
    "duplicate-conflicting": Case(duplicate_conflicting, "rejected", "duplicate_conflict"),
    "gantry-tilt": Case(gantry_tilt, "loaded", ("resampled_tilt",), expected_hu=None),
    "gantry-tilt-too-steep": Case(gantry_tilt_too_steep, "rejected", "gantry_tilt"),
    "positions-jitter-off-the-normal": Case(misaligned, "rejected", "misaligned"),
    "empty-uids": Case(empty_uids, "loaded", ("derived_uids",)),
    "truncated-pixel-data": Case(truncated_file, "rejected", "corrupt_pixels"),
    "corrupt-rle-pixel-data": Case(corrupt_rle, "rejected", "corrupt_pixels"),
    "pixel-data-missing": Case(no_pixel_data, "rejected", "corrupt_pixels"),
    "bare-datasets-without-file-meta": Case(bare_datasets_without_file_meta, "loaded"),
    "non-dicom-files-in-folder": Case(non_dicom_files, "loaded"),
    "shuffled-files-and-instance-numbers": Case(shuffled, "loaded"),
    "missing-image-position": Case(missing_position, "rejected", "missing_geometry"),
    "missing-pixel-spacing": Case(missing_pixel_spacing, "rejected", "missing_geometry"),
    "rescale-slope-half": Case(rescale_slope, "loaded", expected_hu=BASE * 2),
    "two-series-in-one-folder": Case(two_series_in_one_folder, "loaded", series=2),
    "dose-screen-capture-in-series": Case(dose_screen_in_series, "loaded", ("dropped_non_ct",)),
    "enhanced-mixed-with-single-frames": Case(enhanced_mixed_with_slices, "rejected", "mixed_instances"),
    "series-uid-in-two-studies": Case(series_in_two_studies, "rejected", "mixed_studies"),
    "series-of-two-patients": Case(series_of_two_patients, "rejected", "mixed_studies"),
}


@pytest.mark.parametrize("name", list(CORPUS))
def test_bad_input_gives_its_expected_outcome(name, tmp_path):
    case = CORPUS[name]
    case.build(tmp_path)
    found = scan_inputs([tmp_path])
    assert len(found.series) == case.series
    for files in found.series:
        if case.outcome == "rejected":
            with pytest.raises(SeriesRejected) as refused:
                load_series(files)
            assert refused.value.code == case.code, str(refused.value)
            assert refused.value.code in REJECTION_CODES
            message = str(refused.value)
            assert message.startswith(f"series {files.key}:") and "\n" not in message
            assert "TEST-SERIES" not in message and "Test^Series" not in message
        else:
            ct = load_series(files)
            assert tuple(r.split(":")[0] for r in ct.repairs) == case.code, ct.repairs
            if case.expected_hu is not None:
                assert np.array_equal(ct.hu, case.expected_hu)
                assert np.allclose(ct.geometry.origin, [-10.0, -20.0, 100.0])
                assert ct.geometry.spacing == pytest.approx(SPACING)


def test_corpus_covers_at_least_fifteen_kinds_and_both_outcomes():
    outcomes = [case.outcome for case in CORPUS.values()]
    assert len(CORPUS) >= 15 and outcomes.count("loaded") >= 5 and outcomes.count("rejected") >= 10


def test_gap_refusal_lists_the_missing_positions(tmp_path):
    gap(tmp_path)
    with pytest.raises(SeriesRejected, match=r"2 slice\(s\) missing at 120\.00, 122\.00 mm"):
        load_series(scan_inputs([tmp_path]).series[0])


def test_corrupt_pixel_data_names_the_instance(tmp_path):
    truncated_file(tmp_path)
    bad = pydicom.dcmread(sorted(tmp_path.iterdir())[8], stop_before_pixels=True).SOPInstanceUID
    with pytest.raises(SeriesRejected, match=f"pixel data of instance {bad} cannot be decoded"):
        load_series(scan_inputs([tmp_path]).series[0])


def test_gantry_tilt_is_resampled_onto_the_untilted_world(tmp_path):
    gantry_tilt(tmp_path)
    ct = load_series(scan_inputs([tmp_path]).series[0])
    assert ct.resampled and ct.hu.shape == (24, 16, 10)
    # The grid passes through the middle slice (12 rows of drift) and keeps the normal and spacing.
    assert np.allclose(ct.geometry.origin, [-10.0, -20.0 + 12 * SPACING[1], 100.0])
    assert np.allclose(ct.geometry.direction, np.eye(3)) and ct.geometry.spacing == pytest.approx(SPACING)
    for k in range(24):
        world_rows = np.arange(16) + 12          # output row j lies on world row j + 12
        covered = (world_rows >= k) & (world_rows < 40)  # frame k saw world rows k .. k + 15
        covered &= world_rows < k + 16
        assert np.array_equal(ct.hu[k][covered], TILT_WORLD[k, world_rows[covered]])
        assert np.all(ct.hu[k][~covered] == -1024)


def test_tilt_is_refused_when_resampling_is_disabled(tmp_path):
    gantry_tilt(tmp_path)
    with pytest.raises(SeriesRejected) as refused:
        load_series(scan_inputs([tmp_path]).series[0], SeriesRules(resample_tilt=False))
    assert refused.value.code == "gantry_tilt" and "21.8 degrees" in str(refused.value)


def test_non_dicom_files_are_listed_as_skipped(tmp_path):
    non_dicom_files(tmp_path)
    assert sorted(s.path.name for s in scan_inputs([tmp_path]).skipped) == ["README.txt", "thumbs.db"]


def test_empty_uids_are_derived_the_same_way_every_time(tmp_path):
    empty_uids(tmp_path / "a")
    empty_uids(tmp_path / "b")
    first, second = (load_series(scan_inputs([tmp_path / x]).series[0]) for x in "ab")
    assert first.series_instance_uid == second.series_instance_uid
    assert first.study_instance_uid == second.study_instance_uid
    assert [ds.SOPInstanceUID for ds in first.source_images] == [ds.SOPInstanceUID for ds in second.source_images]
    assert all(ds.SOPInstanceUID and ds.SOPClassUID for ds in first.source_images)


def test_shuffled_instance_numbers_are_reported_as_a_warning(tmp_path):
    shuffled(tmp_path)
    ct = load_series(scan_inputs([tmp_path]).series[0])
    assert any("InstanceNumber" in w for w in ct.warnings)


def test_rules_refuse_a_minimum_below_two_slices():
    with pytest.raises(ValueError, match="min_slices"):
        SeriesRules(min_slices=1)


def test_a_series_in_two_studies_is_refused_naming_both_studies_and_no_patient(tmp_path):
    series_of_two_patients(tmp_path / "patients")
    (files,) = scan_inputs([tmp_path / "patients"]).series
    with pytest.raises(SeriesRejected, match="2 different patients") as refused:
        load_series(files)
    assert "OTHER-PATIENT" not in str(refused.value)
    series_in_two_studies(tmp_path / "studies")
    (files,) = scan_inputs([tmp_path / "studies"]).series
    with pytest.raises(SeriesRejected, match=r"name 2 studies: .* \(12\), .* \(12\)") as refused:
        load_series(files)
    assert generate_uid(entropy_srcs=["another study"]) in str(refused.value)
