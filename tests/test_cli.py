"""The spine-node command line: what it writes, what it prints and its exit status."""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from dicom_node.cli.main import main
from pipelines.model.bundles import BUNDLED_DIR
from research.evaluation import discover_cases

SMALL = ["--spacing", "3", "2", "2", "--matrix", "128"]


def test_phantom_writes_nifti_cases_with_truth(tmp_path, capsys):
    assert main(["phantom", "--out", str(tmp_path), "--n", "2", "--seed", "100100", *SMALL]) == 0
    cases = sorted(p.name for p in tmp_path.iterdir())
    assert cases == ["phantom_100100", "phantom_100101"], "no staging folder may be left behind"
    for case in cases:
        assert {p.name for p in (tmp_path / case).iterdir()} == {"ct.nii.gz", "labels.nii.gz", "lesions.nii.gz",
                                                                  "truth.json"}
    assert "phantom_100100" in capsys.readouterr().out


def test_phantom_writes_a_dicom_series_beside_its_truth(tmp_path):
    assert main(["phantom", "--out", str(tmp_path), "--seed", "100102", "--format", "dicom",
                 "--orientation", "FFS", *SMALL]) == 0
    case = tmp_path / "phantom_100102"
    assert not (case / "ct.nii.gz").exists()
    assert len(list((case / "dicom").glob("*.dcm"))) > 10
    assert (case / "labels.nii.gz").is_file() and (case / "truth.json").is_file()


def test_phantom_writes_an_nnunet_raw_dataset(tmp_path):
    assert main(["phantom", "--out", str(tmp_path), "--n", "2", "--seed", "100103", "--format", "nnunet", *SMALL]) == 0
    assert len(list((tmp_path / "imagesTr").glob("*_0000.nii.gz"))) == 2
    assert json.loads((tmp_path / "dataset.json").read_text())["numTraining"] == 2


def test_models_verify_accepts_the_bundled_demo_model(capsys):
    assert main(["models", "verify", "spine-phantom-demo"]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "not for clinical use" in out


def test_models_verify_refuses_a_tampered_checkpoint_in_one_line(tmp_path, capsys):
    copy = tmp_path / "tampered"
    shutil.copytree(BUNDLED_DIR / "spine-phantom-demo", copy)
    checkpoint = next(copy.glob("nnunet/fold_*/*.pth"))
    with open(checkpoint, "ab") as handle:
        handle.write(b"\0")
    assert main(["models", "verify", str(copy)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("spine-node: error:") and "sha256" in err and str(checkpoint) in err
    assert "\n" not in err


def test_missing_model_is_a_one_line_error_naming_the_model(tmp_path, capsys):
    cases = tmp_path / "cases"
    assert main(["phantom", "--out", str(cases), "--seed", "100105", *SMALL]) == 0
    assert len(discover_cases(cases)) == 1  # a case evaluate takes: only the model can be missing
    capsys.readouterr()
    assert main(["evaluate", "--model", "no-such-model", "--cases", str(cases)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("spine-node: error:") and "\n" not in err
    assert "model 'no-such-model' not found" in err


def test_models_install_from_zip_then_list(tmp_path, monkeypatch, capsys):
    archive = tmp_path / "bundle.zip"
    source = BUNDLED_DIR / "spine-phantom-demo"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in source.rglob("*"):
            if path.is_file():
                zf.write(path, Path("spine-phantom-demo") / path.relative_to(source))
    monkeypatch.setenv("SPINE_NODE_MODELS_DIR", str(tmp_path / "installed"))
    assert main(["models", "install", str(archive)]) == 0
    assert (tmp_path / "installed" / "spine-phantom-demo" / "manifest.json").is_file()
    capsys.readouterr()
    assert main(["models", "list"]) == 0
    assert str(tmp_path / "installed" / "spine-phantom-demo") in capsys.readouterr().out


@pytest.mark.slow
def test_evaluate_writes_the_json_report(tmp_path, capsys):
    cases = tmp_path / "cases"
    assert main(["phantom", "--out", str(cases), "--seed", "100104", "--fov", "lumbar",
                 "--spacing", "2", "1.2", "1.2", "--matrix", "300"]) == 0
    report_path = tmp_path / "report.json"
    assert main(["evaluate", "--model", "spine-phantom-demo", "--cases", str(cases), "--json", str(report_path),
                 "--device", "cpu"]) == 0
    report = json.loads(report_path.read_text())
    assert {"mean_dice", "level_accuracy", "per_level", "lesion_confusion", "cases"} <= set(report)
    assert 0.0 <= report["mean_dice"] <= 1.0
    assert all(set(v) == {"dice", "n"} for v in report["per_level"].values())
    assert "mean Dice" in capsys.readouterr().out


def test_phantom_writes_a_follow_up_pair_as_two_studies_of_one_patient_with_the_change_s_truth(tmp_path, capsys):
    import pydicom

    assert main(["phantom", "--out", str(tmp_path), "--seed", "3", "--kind", "followup", "--format", "dicom",
                 "--fov", "lumbar", *SMALL]) == 0
    case = tmp_path / "phantom_00003"
    baseline, followup = (pydicom.dcmread(next((case / visit / "dicom").glob("*.dcm")))
                          for visit in ("baseline", "followup"))
    assert baseline.PatientID == followup.PatientID and baseline.IssuerOfPatientID == followup.IssuerOfPatientID
    assert baseline.IssuerOfPatientID and baseline.StudyInstanceUID != followup.StudyInstanceUID
    change = json.loads((case / "followup" / "truth.json").read_text())["change"]
    assert change["new_lesions"] and change["vertebrae"]
    assert f"new lesions {', '.join(change['new_lesions'])}" in capsys.readouterr().out


def test_phantom_writes_report_phantoms_with_fractures_of_known_grade(tmp_path):
    assert main(["phantom", "--out", str(tmp_path), "--seed", "4", "--kind", "report", "--fov", "lumbar",
                 *SMALL]) == 0
    truth = json.loads((tmp_path / "phantom_00004" / "truth.json").read_text())
    grades = [v.get("genant_grade") for v in truth["vertebrae"].values()] if "vertebrae" in truth else []
    assert truth.get("report_design") and any(grade for grade in grades if grade), truth.keys()


def test_a_follow_up_pair_is_not_written_as_an_nnunet_dataset(tmp_path, capsys):
    assert main(["phantom", "--out", str(tmp_path), "--kind", "followup", "--format", "nnunet", *SMALL]) != 0
    assert "nifti or dicom" in capsys.readouterr().err
