"""RTSTRUCT of the vertebrae: dciodvfy-clean, read back by two RT libraries, contours that give the SEG's masks back.

On the phantom written HFS, FFS and OBLIQUE (and as one Enhanced CT):

* dciodvfy gives no error and no warning;
* rt-utils (its own series loader and cv2 rasteriser) lists one ROI per vertebra, named by
  level, and its mask of each ROI has Dice >= 0.93 with the label map the SEG encodes (its
  rasteriser fills the boundary pixels: about one pixel more all round), on a square phantom;
* dicompyler-core parses the structures (names, colours, contours per plane), and its
  contours, filled by the even-odd rule on the CT grid, give Dice >= 0.95 per vertebra;
* every contour references the CT image it lies on (and lies on it), and every ROI is
  coded with its SNOMED CT level code;
* a resampled volume gets no RTSTRUCT: ``OutputNotBuilt`` with the reason.
"""
from __future__ import annotations

import numpy as np
import pydicom
import pytest

from pipelines.outputs.codes import level_colour, vertebra_code
from pipelines.outputs.contours import Outline, fill
from pipelines.outputs.rtstruct import OutputNotBuilt, build_rtstruct
from research.phantoms.generator import make_phantom
from support.programs import dciodvfy_messages
from support.seg_sr_cases import MODEL, PHANTOM, named_case, phantom_case, resampled_case, save_dataset

CASES = ("HFS", "FFS", "OBLIQUE", "enhanced")
MIN_DICE = 0.95
RT_UTILS_DICE = 0.93
WHOLE_VERTEBRA_VOXELS = 1000  # a vertebra cut by the scan's end has a few voxels only


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(5, **PHANTOM)


@pytest.fixture(scope="module", params=CASES)
def written(request, phantom, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    case = named_case(phantom, request.param, folder)
    rtstruct = build_rtstruct(case.series, case.labels, case.findings, MODEL)
    return case, save_dataset(rtstruct, folder / "rtstruct.dcm"), folder


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def to_index(points: np.ndarray, geometry) -> np.ndarray:
    """(k, row, column) of LPS points on the grid of ``geometry``."""
    sz, sy, sx = geometry.spacing
    matrix = np.asarray(geometry.direction, float) * np.array([sx, sy, sz])
    ijk = np.linalg.solve(matrix, (points - np.asarray(geometry.origin, float)).T).T
    return ijk[:, [2, 1, 0]]


@pytest.mark.peer
def test_dciodvfy_gives_no_error_and_no_warning(written):
    _, path, _ = written
    assert dciodvfy_messages(path) == []


def test_one_coded_roi_per_vertebra_with_its_level_colour_and_contours_on_ct_images(written):
    case, path, _ = written
    ds = pydicom.dcmread(path)
    levels = [f.level for f in sorted(case.findings, key=lambda f: f.segment_number or 0)]
    names = [roi.ROIName for roi in ds.StructureSetROISequence]
    assert sorted(names) == sorted(f"{level} vertebra" for level in levels)
    by_number = {roi.ROINumber: roi.ROIName.split()[0] for roi in ds.StructureSetROISequence}
    for observation in ds.RTROIObservationsSequence:
        level = by_number[observation.ReferencedROINumber]
        assert observation.RTROIIdentificationCodeSequence[0].CodeValue == vertebra_code(level).value
    images = {}
    for k, header in enumerate(case.series.source_images):
        images[header.SOPInstanceUID] = k
    for roi_contour in ds.ROIContourSequence:
        level = by_number[roi_contour.ReferencedROINumber]
        assert tuple(roi_contour.ROIDisplayColor) == level_colour(level)
        for contour in roi_contour.ContourSequence:
            reference = contour.ContourImageSequence[0]
            points = np.asarray(contour.ContourData, float).reshape(-1, 3)
            k = to_index(points, case.series.geometry)[:, 0]
            np.testing.assert_allclose(k, k[0], atol=1e-3)  # planar, on one slice
            if len(images) == 1:  # Enhanced CT: the frame's own position
                frame = case.series.source_images[0].PerFrameFunctionalGroupsSequence[
                    int(reference.ReferencedFrameNumber) - 1]
                np.testing.assert_allclose(frame.PlanePositionSequence[0].ImagePositionPatient,
                                           case.series.geometry.frame_position(int(round(k[0]))), atol=1e-3)
            else:
                assert images[reference.ReferencedSOPInstanceUID] == int(round(k[0]))


def _dicompyler_parser():
    """dicompyler-core's parser; 0.5.6 imports pydicom 2's ``read_file``, which pydicom 3 calls ``dcmread``."""
    import pydicom.dicomio

    if not hasattr(pydicom.dicomio, "read_file"):
        pydicom.dicomio.read_file = pydicom.dcmread
    from dicompylercore import dicomparser

    return dicomparser


def test_dicompyler_core_reads_the_structures_and_their_contours_give_the_masks_back(written):
    dicomparser = _dicompyler_parser()

    case, path, _ = written
    parser = dicomparser.DicomParser(str(path))
    structures = parser.GetStructures()
    shape = case.series.hu.shape
    label_of = {f"{f.level} vertebra": f.label for f in case.findings}
    assert sorted(s["name"] for s in structures.values()) == sorted(label_of)
    for number, structure in structures.items():
        assert tuple(int(v) for v in structure["color"]) == level_colour(structure["name"].split()[0])
        mask = np.zeros(shape, bool)
        for plane in parser.GetStructureCoordinates(number).values():
            outlines_by_k: dict[int, list[Outline]] = {}
            for contour in plane:
                krc = to_index(np.array([[float(v) for v in p] for p in contour["data"]]), case.series.geometry)
                k = int(round(krc[0, 0]))
                outlines_by_k.setdefault(k, []).append(Outline(k, np.vstack([krc[:, 1:], krc[:1, 1:]])))
            for k, outlines in outlines_by_k.items():
                mask[k] ^= fill(outlines, shape[1:])
        truth = case.labels == label_of[structure["name"]]
        assert dice(mask, truth) >= MIN_DICE, (structure["name"], dice(mask, truth))


@pytest.fixture(scope="module")
def square_case(tmp_path_factory):
    """A square-matrix phantom: rt-utils 1.2.7 sizes its masks (Columns, Rows) and so clips non-square images."""
    folder = tmp_path_factory.mktemp("square")
    phantom = make_phantom(5, fov="lumbar", spacing=(6.0, 1.5, 1.5), matrix=160)
    case = phantom_case(phantom, "HFS", folder)
    rtstruct = build_rtstruct(case.series, case.labels, case.findings, MODEL)
    return case, save_dataset(rtstruct, folder / "rtstruct.dcm"), folder / "axial"


def test_rt_utils_reads_it_with_the_series_and_its_masks_match_the_seg(square_case):
    """rt-utils rounds each vertex to a pixel and fills the boundary pixels too (cv2.fillPoly), so its
    masks are about one boundary pixel larger than the label map: Dice >= RT_UTILS_DICE for every
    vertebra wholly in the scan (the exact >= 0.95 check is dicompyler-core's, above)."""
    from rt_utils import RTStructBuilder

    case, path, ct_folder = square_case
    rt = RTStructBuilder.create_from(dicom_series_path=str(ct_folder), rt_struct_path=str(path))
    assert sorted(rt.get_roi_names()) == sorted(f"{f.level} vertebra" for f in case.findings)
    k_of = {h.SOPInstanceUID: k for k, h in enumerate(case.series.source_images)}
    order = [k_of[ds.SOPInstanceUID] for ds in rt.series_data]
    scores = {}
    for finding in case.findings:
        read = rt.get_roi_mask_by_name(f"{finding.level} vertebra")  # (rows, columns, slices in its order)
        mask = np.zeros(case.series.hu.shape, bool)
        for i, k in enumerate(order):
            mask[k] = read[:, :, i]
        truth = case.labels == finding.label
        if truth.sum() >= WHOLE_VERTEBRA_VOXELS:
            scores[finding.level] = dice(mask, truth)
    assert len(scores) >= 4, scores
    assert min(scores.values()) >= RT_UTILS_DICE, scores


def test_a_resampled_volume_gets_no_rtstruct_and_the_reason(phantom, tmp_path):
    case = resampled_case(phantom, tmp_path)
    with pytest.raises(OutputNotBuilt, match="resampled"):
        build_rtstruct(case.series, case.labels, case.findings, MODEL)
