"""The Spine-Mets-CT-SEG importer (research/datasets/tcia.py) end to end on the TCIA-shaped phantoms.

The collection is written by research/datasets/tcia_phantom.py: CT series + BINARY DICOM
SEG per case, SNOMED-coded segments in a shuffled order, and an .xlsx of lesion classes.
Each refusal is made by breaking one case of a copy of the collection; the other case must
still be imported.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from dicom_node.cli.main import main
from pipelines.levels import LEVELS
from research.datasets import tcia_phantom
from research.datasets.raw import PAPER_TABLE_2, format_report
from research.datasets.tcia import import_collection
from research.datasets.workbook import WorkbookLayout
from research.errors import DatasetError
from research.volume_io import read_volume
from support.paths import shared

SEEDS = (11, 12)  # case 0 HFS, case 1 FFS


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("tcia") / "collection"
    cases = tcia_phantom.write_collection(root, list(SEEDS), ["HFS", "FFS"])
    return root, cases


@pytest.fixture(scope="module")
def imported(collection, tmp_path_factory):
    root, cases = collection
    out = tmp_path_factory.mktemp("tcia-out") / "Dataset600_SpineMets"
    report = import_collection(root, root / "lesions.xlsx", out, log=lambda *_: None)
    return out, report, cases


def _copy(collection, tmp_path: Path) -> tuple[Path, list]:
    root, cases = collection
    copy = tmp_path / "collection"
    shutil.copytree(root, copy)
    return copy, cases


def _import(root: Path, tmp_path: Path, workbook: Path | None = None) -> dict:
    return import_collection(root, workbook or root / "lesions.xlsx", tmp_path / "out", log=lambda *_: None)


def _seg_path(root: Path, case_name: str) -> Path:
    return next((root / case_name).rglob("300.000000-Segmentation-*/1-1.dcm"))


def _refused(report: dict) -> dict[str, str]:
    return {r["case"]: r["code"] for r in report["refused"]}


# --- round trip --------------------------------------------------------------------------------------

def test_the_phantom_seg_writes_its_segments_in_an_order_that_is_not_the_level_order(collection):
    root, cases = collection
    for case in cases:
        seg = pydicom.dcmread(case.seg_path)
        labels = [item.SegmentLabel.split()[0] for item in seg.SegmentSequence]
        assert sorted(labels, key=LEVELS.index) == case.phantom.levels_present()
        assert labels != case.phantom.levels_present()


@pytest.mark.parametrize("index, orientation", [(0, "HFS"), (1, "FFS")])
def test_labels_back_through_the_importer_equal_the_generators_truth_with_exact_geometry(imported, index,
                                                                                          orientation):
    out, _, cases = imported
    case = cases[index]
    assert case.orientation == orientation
    labels = read_volume(out / "labelsTr" / f"{case.name}.nii.gz")
    ct = read_volume(out / "imagesTr" / f"{case.name}_0000.nii.gz")
    np.testing.assert_array_equal(labels.array, case.phantom.labels)  # every level's Dice is 1.0
    np.testing.assert_array_equal(ct.array, case.phantom.image)
    assert np.allclose(ct.image.GetOrigin(), case.phantom.grid.origin, atol=1e-6)
    assert np.allclose(ct.spacing, case.phantom.grid.spacing, atol=1e-9)
    for i, level in enumerate(LEVELS, start=1):
        truth, got = case.phantom.labels == i, labels.array == i
        if truth.any():
            assert 2 * (truth & got).sum() / (truth.sum() + got.sum()) == 1.0, level


def test_lesion_table_gives_each_segmented_vertebra_the_generators_class(imported):
    out, _, cases = imported
    with open(out / "lesions.csv", newline="") as handle:
        table = {(r["case"], r["level"]): r["class"] for r in csv.DictReader(handle)}
    expected = {(c.name, level): c.phantom.truth[level]["lesion"] for c in cases for level in c.phantom.levels_present()}
    assert table == expected


def test_dataset_json_is_nnunets_with_the_papers_label_map(imported):
    out, _, cases = imported
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["labels"]["T1"] == 1 and dataset["labels"]["T12"] == 12 and dataset["labels"]["L5"] == 17
    assert dataset["numTraining"] == len(cases) and dataset["file_ending"] == ".nii.gz"
    assert dataset["channel_names"] == {"0": "CT"}


def test_report_counts_vertebrae_and_lesions_and_sets_them_beside_table_2(imported):
    out, report, cases = imported
    truth = [c.phantom.truth[level]["lesion"] for c in cases for level in c.phantom.levels_present()]
    assert report["imported"]["cases"] == 2
    assert report["imported"]["vertebrae"] == len(truth)
    assert report["imported"]["with_lesions"] == sum(t != "none" for t in truth)
    assert report["imported"]["lytic"] == truth.count("lytic")
    assert report["paper_table_2"] == PAPER_TABLE_2
    text = (out / "report.md").read_text()
    assert "787" in text and "543" in text and "183" in text
    demographics = json.loads((out / "cases.json").read_text())[0]["demographics"]
    assert {"Age", "Sex"} <= set(demographics)


# --- refusals ------------------------------------------------------------------------------------------

def test_a_seg_whose_ct_is_missing_is_refused_and_the_other_case_imported(collection, tmp_path):
    root, cases = _copy(collection, tmp_path)
    shutil.rmtree(next((root / cases[0].name).rglob("1.000000-CT-*")))
    report = _import(root, tmp_path)
    assert _refused(report) == {cases[0].name: "seg_ct_missing"}
    assert report["imported"]["cases"] == 1
    assert "references CT series" in report["refused"][0]["reason"]


def test_a_segment_with_an_unknown_code_is_refused(collection, tmp_path):
    root, cases = _copy(collection, tmp_path)
    path = _seg_path(root, cases[1].name)
    seg = pydicom.dcmread(path)
    seg.SegmentSequence[2].SegmentedPropertyTypeCodeSequence[0].CodeValue = str(codes.SCT.Liver.value)
    seg.save_as(path)
    report = _import(root, tmp_path)
    assert _refused(report) == {cases[1].name: "unknown_segment_code"}
    assert "segment 3" in report["refused"][0]["reason"] and "not a vertebra" in report["refused"][0]["reason"]


def test_a_segment_labelled_as_another_level_than_its_code_is_refused(collection, tmp_path):
    root, cases = _copy(collection, tmp_path)
    path = _seg_path(root, cases[0].name)
    seg = pydicom.dcmread(path)
    seg.SegmentSequence[0].SegmentLabel = "C3 vertebra"
    seg.save_as(path)
    assert _refused(_import(root, tmp_path)) == {cases[0].name: "segment_label_mismatch"}


def test_overlapping_segments_are_refused(collection, tmp_path):
    root, cases = _copy(collection, tmp_path)
    case = cases[0]
    levels = case.phantom.levels_present()
    masks = {level: case.phantom.labels == LEVELS.index(level) + 1 for level in levels}
    masks[levels[1]] = masks[levels[1]] | masks[levels[0]]  # the second vertebra swallows the first
    ct_files = sorted(next((root / case.name).rglob("1.000000-CT-*")).glob("*.dcm"))
    tcia_phantom.write_vertebra_seg(ct_files, masks, levels[::-1], _seg_path(root, case.name))
    report = _import(root, tmp_path)
    assert _refused(report) == {case.name: "overlapping_segments"}
    assert "overlap" in report["refused"][0]["reason"]


def test_a_workbook_row_naming_a_level_that_is_not_segmented_is_refused(collection, tmp_path):
    import openpyxl

    root, cases = _copy(collection, tmp_path)
    missing = next(level for level in LEVELS if level not in cases[1].phantom.levels_present())
    book = openpyxl.load_workbook(root / "lesions.xlsx")
    book["Lesions"].append([cases[1].name, missing, "Lytic"])
    book.save(root / "lesions.xlsx")
    report = _import(root, tmp_path)
    assert _refused(report) == {cases[1].name: "workbook_level_not_segmented"}
    assert missing in report["refused"][0]["reason"]


def test_a_case_given_twice_is_refused_once_and_imported_once(collection, tmp_path):
    root, cases = _copy(collection, tmp_path)
    shutil.copytree(root / cases[0].name, root / "zz-copy-of-first-case")
    report = _import(root, tmp_path)
    assert _refused(report) == {"zz-copy-of-first-case": "duplicate_case"}
    assert report["imported"]["cases"] == 2


def test_a_seg_frame_off_the_ct_slices_is_refused_for_geometry(collection, tmp_path):
    root, cases = _copy(collection, tmp_path)
    path = _seg_path(root, cases[0].name)
    seg = pydicom.dcmread(path)
    position = seg.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
    position.ImagePositionPatient = [float(v) for v in position.ImagePositionPatient[:2]] + \
        [float(position.ImagePositionPatient[2]) + 0.5]
    seg.save_as(path)
    assert _refused(_import(root, tmp_path)) == {cases[0].name: "seg_geometry"}


def test_a_seg_without_its_frame_sequences_is_refused_as_unreadable_and_the_other_case_imported(collection, tmp_path):
    root, cases = _copy(collection, tmp_path)
    path = _seg_path(root, cases[1].name)
    seg = pydicom.dcmread(path)
    del seg.PerFrameFunctionalGroupsSequence
    seg.save_as(path)
    report = _import(root, tmp_path)
    assert _refused(report) == {cases[1].name: "unreadable"}
    assert report["imported"]["cases"] == 1


def test_a_collection_where_every_case_is_refused_writes_nothing_and_says_why(collection, tmp_path):
    root, cases = _copy(collection, tmp_path)
    for case in cases:
        shutil.rmtree(next((root / case.name).rglob("1.000000-CT-*")))
    with pytest.raises(DatasetError, match="nothing to import"):
        _import(root, tmp_path)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["collection"]  # no staging folder left behind


# --- workbook layout ------------------------------------------------------------------------------------

def test_a_wide_workbook_with_other_column_names_is_read_through_a_layout_file(collection, tmp_path):
    import openpyxl

    root, cases = _copy(collection, tmp_path)
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["Case ID", *LEVELS])
    for case in cases:
        sheet.append([case.name, *[tcia_phantom.CLASS_TEXT[case.phantom.truth[level]["lesion"]]
                                   if level in case.phantom.truth else None for level in LEVELS]])
    book.save(tmp_path / "wide.xlsx")
    (tmp_path / "layout.json").write_text(json.dumps({"layout": "wide", "case_column": "Case ID"}))
    layout = WorkbookLayout.from_json(tmp_path / "layout.json")
    report = import_collection(root, tmp_path / "wide.xlsx", tmp_path / "out", layout, log=lambda *_: None)
    truth = [c.phantom.truth[level]["lesion"] for c in cases for level in c.phantom.levels_present()]
    assert report["imported"]["with_lesions"] == sum(t != "none" for t in truth)
    assert report["refused"] == []


def test_a_workbook_without_the_expected_columns_is_refused_naming_the_columns_it_has(collection, tmp_path):
    import openpyxl

    root, _ = _copy(collection, tmp_path)
    book = openpyxl.Workbook()
    book.active.append(["Patient", "Level", "Type"])
    book.save(tmp_path / "other.xlsx")
    with pytest.raises(DatasetError, match="Patient, Level, Type"):
        _import(root, tmp_path, tmp_path / "other.xlsx")


# --- command line -----------------------------------------------------------------------------------------

def test_import_tcia_command_prints_each_case_and_the_table_2_report(collection, tmp_path, capsys):
    root, cases = collection
    status = main(["dataset", "import-tcia", str(root), "--lesions", str(root / "lesions.xlsx"),
                   "--out", str(tmp_path / "ds")])
    printed = capsys.readouterr().out
    assert status == 0
    assert all(case.name in printed for case in cases)
    assert "paper (Table 2)" in printed and "787" in printed
    assert (tmp_path / "ds" / "labelsTr").is_dir()


def test_import_tcia_command_exits_1_when_a_case_is_refused_and_names_the_reason(collection, tmp_path, capsys):
    root, cases = _copy(collection, tmp_path)
    shutil.rmtree(next((root / cases[0].name).rglob("1.000000-CT-*")))
    status = main(["dataset", "import-tcia", str(root), "--lesions", str(root / "lesions.xlsx"),
                   "--out", str(tmp_path / "ds")])
    assert status == 1
    assert f"refused case {cases[0].name}: its SEG references CT series" in capsys.readouterr().out


# --- real masks ------------------------------------------------------------------------------------------

@pytest.mark.real_data
def test_a_real_manual_verse_mask_written_as_a_tcia_seg_imports_back_voxel_for_voxel(tmp_path):
    """VerSe's manual T9..L5 mask of verse004, as the SEG of a CT made on its grid, in HFS and FFS."""
    import SimpleITK as sitk

    from pipelines.levels import preset
    from research.phantoms.dicom import write_dicom_series
    from research.phantoms.generator import Grid, Phantom

    mask = sitk.DICOMOrient(sitk.ReadImage(str(shared("verse-manual-mask", "sub-verse004_seg-vert_msk.nii.gz"))),
                            "LPS")
    ids = np.rint(sitk.GetArrayFromImage(mask)).astype(int)
    lut = np.zeros(ids.max() + 1, np.uint8)
    for label, level in preset("verse").items():
        if level in LEVELS and label <= ids.max():
            lut[label] = LEVELS.index(level) + 1
    labels = lut[ids]
    sx, sy, sz = mask.GetSpacing()
    grid = Grid(labels.shape, (sz, sy, sx), mask.GetOrigin())
    image = np.where(labels > 0, 400, -50).astype(np.int16)
    phantom = Phantom(4, "real-mask", grid, image, labels, np.zeros_like(labels), {})
    levels = [LEVELS[i - 1] for i in np.unique(labels) if i]
    root = tmp_path / "collection"
    for name, orientation in (("verse004-HFS", "HFS"), ("verse004-FFS", "FFS")):
        ct_dir = root / name / "study" / "1.000000-CT-1"
        files = write_dicom_series(phantom, ct_dir, orientation, patient_id=name)
        masks = {level: labels == LEVELS.index(level) + 1 for level in levels}
        tcia_phantom.write_vertebra_seg(files, masks, levels[::-1], root / name / "study" / "300-SEG" / "1-1.dcm")
    report = import_collection(root, None, tmp_path / "out", log=lambda *_: None)
    assert report["refused"] == [] and report["imported"]["vertebrae"] == 2 * len(levels) == 2 * 9
    for name in ("verse004-HFS", "verse004-FFS"):
        back = read_volume(tmp_path / "out" / "labelsTr" / f"{name}.nii.gz")
        np.testing.assert_array_equal(back.array, labels)
    assert "T9" in format_report(report)
