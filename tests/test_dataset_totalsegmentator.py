"""TotalSegmentator's two numberings (pipelines/levels.py) and its label-name convention.

The ids below are TotalSegmentator's own (totalsegmentator/map_to_binary.py): the merged
``total`` output numbers the vertebrae 25..50, its vertebrae model
Dataset292_TotalSegmentator_part2_vertebrae_1532subj numbers them 1..26.
"""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.levels import LEVELS, check_label_map, level_of_label_name, preset

# class_map_part_vertebrae of map_to_binary.py, as the dataset.json of Dataset292 names its labels.
DATASET292_NAMES = {1: "sacrum", 2: "vertebrae_S1", 3: "vertebrae_L5", 4: "vertebrae_L4", 5: "vertebrae_L3",
                    6: "vertebrae_L2", 7: "vertebrae_L1", 8: "vertebrae_T12", 9: "vertebrae_T11",
                    10: "vertebrae_T10", 11: "vertebrae_T9", 12: "vertebrae_T8", 13: "vertebrae_T7",
                    14: "vertebrae_T6", 15: "vertebrae_T5", 16: "vertebrae_T4", 17: "vertebrae_T3",
                    18: "vertebrae_T2", 19: "vertebrae_T1", 20: "vertebrae_C7", 21: "vertebrae_C6",
                    22: "vertebrae_C5", 23: "vertebrae_C4", 24: "vertebrae_C3", 25: "vertebrae_C2",
                    26: "vertebrae_C1"}
# The vertebrae of class_map["total"] (the merged output).
TOTAL_NAMES = {25: "sacrum", 26: "vertebrae_S1", **{27 + i: f"vertebrae_L{5 - i}" for i in range(5)},
               **{32 + i: f"vertebrae_T{12 - i}" for i in range(12)},
               **{44 + i: f"vertebrae_C{7 - i}" for i in range(7)}}


def test_vertebrae_model_preset_names_each_of_dataset292s_26_labels_as_its_label_name_does():
    vertebrae = check_label_map(preset("totalsegmentator-vertebrae"), "totalsegmentator-vertebrae")
    assert sorted(vertebrae) == list(range(1, 27))
    for label, name in DATASET292_NAMES.items():
        assert vertebrae[label] == level_of_label_name(name), (label, name)
    assert vertebrae[3] == "L5" and vertebrae[19] == "T1" and vertebrae[20] == "C7" and vertebrae[26] == "C1"


def test_merged_total_preset_keeps_the_ids_of_totalsegmentators_total_output():
    total = preset("totalsegmentator")
    for label, name in TOTAL_NAMES.items():
        assert total[label] == level_of_label_name(name), (label, name)


def test_merged_preset_on_dataset292_weights_would_name_every_reported_vertebra_wrongly():
    """The bug of issue 14: ids 1..26 read with the merged map. None of T1..L5 comes out right."""
    total = preset("totalsegmentator")
    right = [label for label, name in DATASET292_NAMES.items()
             if level_of_label_name(name) in LEVELS and total.get(label) == level_of_label_name(name)]
    assert right == []


def test_both_totalsegmentator_presets_give_each_reported_level_one_id():
    for name in ("totalsegmentator", "totalsegmentator-vertebrae"):
        inverse = {level: label for label, level in preset(name).items()}
        assert set(LEVELS) <= set(inverse), name


@pytest.mark.parametrize("name, level", [("vertebrae_T1", "T1"), ("T1", "T1"), ("T1 vertebra", "T1"),
                                         ("L5 vertebra", "L5"), ("sacrum", "sacrum"), ("vertebrae_S1", "S1"),
                                         ("Vertebrae_C7", "C7"), ("liver", None), ("vertebrae_T14", None),
                                         ("spinal_cord", None)])
def test_label_names_of_trained_model_folders_map_to_levels_or_to_none(name, level):
    assert level_of_label_name(name) == level


# --- import of TotalSegmentator-convention folders (research/datasets/totalseg.py) -------------------------

def _ts_case(root, name, array, masks=None, label_file="labels.nii.gz"):
    import SimpleITK as sitk

    folder = root / name
    (folder / "segmentations").mkdir(parents=True) if masks else folder.mkdir(parents=True)
    image = sitk.GetImageFromArray(np.zeros(array.shape, np.int16))
    sitk.WriteImage(image, str(folder / "ct.nii.gz"))
    if masks:
        for structure, mask in masks.items():
            sitk.WriteImage(sitk.GetImageFromArray(mask.astype(np.uint8)),
                            str(folder / "segmentations" / f"{structure}.nii.gz"))
    else:
        sitk.WriteImage(sitk.GetImageFromArray(array.astype(np.uint8)), str(folder / label_file))


def _paper_labels(out, name):
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / f"{name}.nii.gz")))


def test_a_label_map_in_dataset292_ids_imports_to_the_papers_ids(tmp_path):
    from research.datasets.totalseg import import_totalseg

    array = np.zeros((6, 4, 4), np.uint8)
    array[0], array[2], array[4] = 19, 8, 3  # T1, T12, L5 in Dataset292's ids
    _ts_case(tmp_path / "in", "case1", array)
    import_totalseg(tmp_path / "in", tmp_path / "out", "totalsegmentator-vertebrae", log=lambda *_: None)
    labels = _paper_labels(tmp_path / "out", "case1")
    assert labels[0].max() == 1 and labels[2].max() == 12 and labels[4].max() == 17


def test_one_binary_mask_per_vertebra_imports_and_overlapping_masks_are_refused(tmp_path):
    from research.datasets.totalseg import import_totalseg

    a = np.zeros((6, 4, 4), bool)
    a[0] = True
    b = np.zeros((6, 4, 4), bool)
    b[1] = True
    _ts_case(tmp_path / "in", "good", a, {"vertebrae_T7": a, "vertebrae_T8": b, "liver": ~a})
    _ts_case(tmp_path / "in", "overlap", a, {"vertebrae_T7": a, "vertebrae_T8": a | b})
    report = import_totalseg(tmp_path / "in", tmp_path / "out", log=lambda *_: None)
    assert {r["case"]: r["code"] for r in report["refused"]} == {"overlap": "overlapping_segments"}
    labels = _paper_labels(tmp_path / "out", "good")
    assert labels[0].max() == 7 and labels[1].max() == 8 and labels[2:].max() == 0


@pytest.mark.real_data
def test_the_real_totalsegmentator_labels_on_the_real_dicom_ct_import_as_t11_and_t12(tmp_path):
    from research.datasets.totalseg import import_totalseg
    from research.volume_io import read_volume
    from support.paths import shared
    import SimpleITK as sitk

    ct = read_volume(shared("real-ct-dicom-t11-t12"))
    labels = sitk.DICOMOrient(sitk.ReadImage(str(shared("real-ct-dicom-t11-t12-totalseg-labels.nii.gz"))), "LPS")
    folder = tmp_path / "in" / "real"
    folder.mkdir(parents=True)
    sitk.WriteImage(ct.image, str(folder / "ct.nii.gz"))
    sitk.WriteImage(labels, str(folder / "labels.nii.gz"))
    report = import_totalseg(tmp_path / "in", tmp_path / "out", "totalsegmentator", log=lambda *_: None)
    assert report["refused"] == []
    assert [lv for lv, n in report["per_level"].items() if n] == ["T11", "T12"]


# --- bundles from TotalSegmentator's layout (research/model_import.py, spine-node models import-*) -----------

DEMO = __import__("pathlib").Path(__file__).resolve().parents[1] / "models" / "spine-phantom-demo"
TS_TRAINED = "nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres"


def _totalsegmentator_layout(root):
    """The demo model's weights laid out as TotalSegmentator's Dataset292, with its ids and label names.

    The network's output channels are permuted from the paper's ids to Dataset292's (sacrum,
    S1 and C1..C7, which the demo never learnt, get a bias that keeps them from ever winning),
    so the same weights must name every vertebra the same once imported.
    """
    import json

    import torch

    from pipelines.levels import LEVELS

    folder = root / "Dataset292_TotalSegmentator_part2_vertebrae_1532subj" / TS_TRAINED
    (folder / "fold_0").mkdir(parents=True)
    names = {"background": 0, **{name: label for label, name in DATASET292_NAMES.items()}}
    dataset = json.loads((DEMO / "nnunet" / "dataset.json").read_text())
    dataset["labels"] = names
    (folder / "dataset.json").write_text(json.dumps(dataset))
    (folder / "plans.json").write_text((DEMO / "nnunet" / "plans.json").read_text())
    state = torch.load(DEMO / "nnunet" / "fold_all" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    vertebrae = preset("totalsegmentator-vertebrae")
    for key in [k for k in state["network_weights"] if k.startswith("decoder.seg_layers.")]:
        old = state["network_weights"][key]
        new = torch.zeros((27, *old.shape[1:]), dtype=old.dtype)
        if key.endswith("bias"):
            new[:] = -30.0  # never wins, and stays finite in the sliding window's half-precision sums
        new[0] = old[0]
        for ts_id, level in vertebrae.items():
            if level in LEVELS:
                new[ts_id] = old[LEVELS.index(level) + 1]
        state["network_weights"][key] = new
    state["init_args"]["dataset_json"] = dataset
    torch.save(state, folder / "fold_0" / "checkpoint_final.pth")
    return root


def test_import_totalsegmentator_derives_dataset292s_label_map_from_its_label_names(tmp_path):
    from pipelines.model.bundles import verify_bundle
    from research.model_import import import_totalsegmentator

    weights = _totalsegmentator_layout(tmp_path / "weights")
    bundle = verify_bundle(import_totalsegmentator(weights, tmp_path / "bundle", licence="test weights",
                                                   intended_use="tests only"))
    assert bundle.label_map == preset("totalsegmentator-vertebrae")
    assert bundle.manifest["licence"] == "test weights" and bundle.manifest["intended_use"] == "tests only"
    assert bundle.folds == ("0",)
    assert bundle.manifest["source"]["dataset"].startswith("Dataset292_")


def test_import_nnunet_refuses_label_names_it_cannot_map_unless_told_to_leave_them_out(tmp_path):
    import json

    from research.errors import ModelImportError
    from research.model_import import import_nnunet

    weights = _totalsegmentator_layout(tmp_path / "weights")
    dataset_json = next(weights.rglob("dataset.json"))
    data = json.loads(dataset_json.read_text())
    data["labels"]["liver"] = 27
    dataset_json.write_text(json.dumps(data))
    common = dict(name="m", version="1", licence="x", intended_use="y", training_data="z")
    with pytest.raises(ModelImportError, match="liver name no vertebra level"):
        import_nnunet(weights, tmp_path / "bundle", **common)
    with pytest.raises(ModelImportError, match="state the weights' licence"):
        import_nnunet(weights, tmp_path / "bundle", **{**common, "licence": " "})


def test_import_totalsegmentator_refuses_a_folder_whose_ids_are_not_dataset292s(tmp_path):
    import json

    from research.errors import ModelImportError
    from research.model_import import import_totalsegmentator

    weights = _totalsegmentator_layout(tmp_path / "weights")
    dataset_json = next(weights.rglob("dataset.json"))
    data = json.loads(dataset_json.read_text())
    data["labels"]["vertebrae_T1"], data["labels"]["vertebrae_T2"] = 18, 19  # swapped
    dataset_json.write_text(json.dumps(data))
    with pytest.raises(ModelImportError, match="differ from the totalsegmentator-vertebrae preset"):
        import_totalsegmentator(weights, tmp_path / "bundle", licence="x", intended_use="y")


def test_models_import_totalsegmentator_command_prints_the_label_map(tmp_path, capsys):
    from dicom_node.cli.main import main

    weights = _totalsegmentator_layout(tmp_path / "weights")
    status = main(["models", "import-totalsegmentator", str(weights), "--out", str(tmp_path / "ts"),
                   "--licence", "Apache-2.0 (test)", "--intended-use", "tests"])
    printed = capsys.readouterr().out
    assert status == 0 and "3=L5" in printed and "19=T1" in printed and "1=sacrum" in printed


@pytest.mark.slow
def test_a_bundle_imported_from_totalsegmentators_layout_names_the_levels_as_the_same_weights_do(tmp_path):
    """Level identification on a phantom: the TS-layout import equals the demo bundle (paper map) it was made from."""
    from pipelines.levels import LEVELS
    from pipelines.model.bundles import verify_bundle
    from pipelines.model.segmenter import Segmenter
    from research.model_import import import_totalsegmentator
    from research.phantoms.generator import make_phantom

    weights = _totalsegmentator_layout(tmp_path / "weights")
    imported = verify_bundle(import_totalsegmentator(weights, tmp_path / "bundle", licence="x", intended_use="y"))
    original = verify_bundle(DEMO)
    phantom = make_phantom(200003, spacing=(2.5, 2.5, 2.5), matrix=None)
    named = {}
    for bundle in (imported, original):
        labels = Segmenter(bundle, device="cpu").segment(phantom.image.astype(np.float32), phantom.grid.spacing).labels
        named[bundle.name] = np.vectorize(lambda i, m=bundle.label_map: LEVELS.index(m[i]) + 1
                                          if m.get(i) in LEVELS else 0)(labels)
    assert (named[original.name] > 0).any()
    np.testing.assert_array_equal(named[imported.name], named[original.name])
