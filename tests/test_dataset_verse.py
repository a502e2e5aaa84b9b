"""VerSe import (research/datasets/verse.py): VerSe ids to the paper's map, pairing, refusals."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from dicom_node.cli.main import main
from pipelines.levels import LEVELS
from research.datasets.verse import import_verse
from support.paths import shared


def _write(path, array, spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def _subject(root, name, ids):
    """A CT and a mask whose slab k holds VerSe id ids[k]."""
    mask = np.zeros((len(ids) * 4, 8, 8), np.uint8)
    for k, label in enumerate(ids):
        mask[4 * k:4 * k + 3, 2:6, 2:6] = label
    _write(root / "rawdata" / name / f"{name}_ct.nii.gz", (mask > 0).astype(np.int16) * 500)
    _write(root / "derivatives" / name / f"{name}_seg-vert_msk.nii.gz", mask)
    return mask


def test_verse_ids_become_the_papers_and_cervical_and_transitional_ones_are_left_out(tmp_path):
    mask = _subject(tmp_path / "verse", "sub-a", [7, 8, 19, 20, 24, 25, 28])  # C7 T1 T12 L1 L5 L6 T13
    report = import_verse(tmp_path / "verse", tmp_path / "out", log=lambda *_: None)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "labelsTr" / "sub-a.nii.gz")))
    expected = {7: 0, 8: 1, 19: 12, 20: 13, 24: 17, 25: 0, 28: 0}
    for verse_id, paper_id in expected.items():
        assert set(np.unique(labels[mask == verse_id])) == {paper_id}, verse_id
    assert report["imported"]["vertebrae"] == 4
    assert report["lesions_by_region"]["unknown"] == {"thoracic": 2, "lumbar": 2}


def test_a_verse_ct_without_its_mask_and_a_mask_on_another_grid_are_refused_the_rest_imported(tmp_path):
    root = tmp_path / "verse"
    _subject(root, "sub-good", [16, 17])
    _subject(root, "sub-nomask", [16])
    (root / "derivatives" / "sub-nomask" / "sub-nomask_seg-vert_msk.nii.gz").unlink()
    _subject(root, "sub-grid", [16])
    _write(root / "derivatives" / "sub-grid" / "sub-grid_seg-vert_msk.nii.gz", np.zeros((4, 8, 8), np.uint8),
           spacing=(1.0, 1.0, 3.0))
    report = import_verse(root, tmp_path / "out", log=lambda *_: None)
    assert {r["case"]: r["code"] for r in report["refused"]} == {"sub-nomask": "no_mask", "sub-grid": "grid_mismatch"}
    assert report["imported"]["cases"] == 1


def test_import_verse_command_prints_the_report(tmp_path, capsys):
    _subject(tmp_path / "verse", "sub-a", [16, 17])
    assert main(["dataset", "import-verse", str(tmp_path / "verse"), "--out", str(tmp_path / "out")]) == 0
    assert "paper (Table 2)" in capsys.readouterr().out


@pytest.mark.real_data
def test_the_real_verse_crop_imports_as_l2_to_l4_on_its_own_grid(tmp_path):
    source = shared("real-ct-crop-l2-l4")
    report = import_verse(source, tmp_path / "out", log=lambda *_: None)
    assert report["refused"] == []
    assert [lv for lv, n in report["per_level"].items() if n] == ["L2", "L3", "L4"]
    ct = sitk.ReadImage(str(next(source.glob("*_ct.nii.gz"))))
    written = sitk.ReadImage(str(tmp_path / "out" / "imagesTr" / "sub-ct_label-22_0000.nii.gz"))
    assert written.GetSize() == ct.GetSize() and np.allclose(written.GetDirection(), ct.GetDirection())
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "labelsTr" / "sub-ct_label-22.nii.gz")))
    assert set(np.unique(labels)) == {0, LEVELS.index("L2") + 1, LEVELS.index("L3") + 1, LEVELS.index("L4") + 1}


def test_imported_datasets_combine_into_one_and_a_case_in_two_of_them_is_refused_once(tmp_path):
    import csv

    from research.datasets.raw import combine

    _subject(tmp_path / "v1", "sub-a", [16, 17])
    _subject(tmp_path / "v2", "sub-b", [20])
    _subject(tmp_path / "v2", "sub-a", [16])
    import_verse(tmp_path / "v1", tmp_path / "d1", log=lambda *_: None)
    import_verse(tmp_path / "v2", tmp_path / "d2", log=lambda *_: None)
    report = combine([tmp_path / "d1", tmp_path / "d2"], tmp_path / "all", log=lambda *_: None)
    assert report["imported"]["cases"] == 2 and report["imported"]["vertebrae"] == 3
    assert [(r["case"], r["code"]) for r in report["refused"]] == [("sub-a", "duplicate_case")]
    with open(tmp_path / "all" / "lesions.csv", newline="") as handle:
        assert {(r["case"], r["level"], r["class"]) for r in csv.DictReader(handle)} == \
            {("sub-a", "T9", "unknown"), ("sub-a", "T10", "unknown"), ("sub-b", "L1", "unknown")}
    assert sorted(p.name for p in (tmp_path / "all" / "labelsTr").iterdir()) == ["sub-a.nii.gz", "sub-b.nii.gz"]
