"""``spine-node evaluate`` on scans without reference labels: discovery, the per-scan report, the table.

The fast tests replace the network by a stand-in that returns a synthetic spine's labels,
so the whole branch (anatomy review, column check, lesion calls, QC picture, JSON-ready
report) runs in seconds. The slow ones run the demo model: on a synthetic knee (no
vertebra may be reported) and on the real chest CT of the shared data (real_data).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import pipelines.process as process
from pipelines.levels import LEVELS, PAPER
from pipelines.model.anatomy import review_vertebrae
from pipelines.model.orientation import lps_reorientation
from pipelines.records import ModelIdentity
from research.lesions.thorax import DISC_SLICES
from research.evaluation import (Scan, discover_scans, evaluate_unlabelled, format_unlabelled,
                                 summarise_unlabelled)
from support.paths import SHARED_DATA
from support.synthetic_ct import ct_datasets, save
from test_anatomy_checks import SPACING, THORACOLUMBAR, synthetic_spine

THORAX = SHARED_DATA / "real-ct-thorax-dicom"


def _fake_analyse(names):
    """A stand-in for ``process.analyse``: the synthetic spine's labels named ``names``, then the node's own steps."""
    def analyse(hu, geometry, options):
        reorient = lps_reorientation(geometry)
        hu_lps = reorient.to_lps(hu)
        _, labels = synthetic_spine(THORACOLUMBAR, names, sacrum=True)
        review = review_vertebrae(hu_lps, reorient.spacing(geometry.spacing), labels, PAPER)
        native = np.ascontiguousarray(reorient.from_lps(review.labels))
        findings = process.vertebra_findings(hu, native, geometry.spacing, PAPER)
        for f in findings:
            f.lesion = "lytic" if f.level == "L2" else "none"
        return process.Analysis(native, findings, ModelIdentity("stand-in", "0", "0" * 64), "cpu", {}, {},
                                review.naming, review.no_vertebra)
    return analyse


def _write_dicom(folder: Path, hu_lps: np.ndarray) -> Path:
    """An axial DICOM series of an LPS volume (slice 0 the lowest, as a feet-first stack sorted upwards)."""
    datasets = ct_datasets(np.rint(hu_lps).astype(np.int16), spacing=SPACING, origin=(-125.0, -75.0, 0.0),
                           name=folder.name)
    folder.mkdir(parents=True)
    save(datasets, folder)
    return folder


def test_discover_scans_finds_dicom_series_and_image_files(tmp_path):
    hu, _ = synthetic_spine(THORACOLUMBAR[-3:], sacrum=False)
    _write_dicom(tmp_path / "series", hu)
    image = sitk.GetImageFromArray(hu.astype(np.int16))
    image.SetSpacing((SPACING[2], SPACING[1], SPACING[0]))
    sitk.WriteImage(image, str(tmp_path / "scan.nii.gz"))
    scans = discover_scans([tmp_path / "series", tmp_path / "scan.nii.gz"])
    assert [s.name for s in scans] == ["series", "scan"]
    assert scans[0].series_key is not None and scans[1].series_key is None


def test_discover_scans_refuses_a_missing_path(tmp_path):
    from pipelines.errors import EvaluationError

    with pytest.raises(EvaluationError, match="no such file"):
        discover_scans([tmp_path / "absent"])


def test_unlabelled_case_reports_vertebrae_column_naming_lesions_and_a_qc_picture(tmp_path, monkeypatch):
    hu, _ = synthetic_spine(THORACOLUMBAR, sacrum=True)
    folder = _write_dicom(tmp_path / "spine", hu)
    monkeypatch.setattr(process, "analyse", _fake_analyse(THORACOLUMBAR))
    scan = discover_scans([folder])[0]
    result = evaluate_unlabelled(scan, options=None, qc_dir=tmp_path / "qc")
    assert result["levels"] == THORACOLUMBAR
    assert result["column"]["contiguous"], result["column"]["problems"]
    assert result["naming"]["verdict"] == "consistent"
    assert result["naming"]["evidence"]["rib_bearing"] == [lv for lv in THORACOLUMBAR if lv.startswith("T")]
    assert {v["level"]: v["lesion"] for v in result["vertebrae"]}["L2"] == "lytic"
    assert all(len(v["centroid_mm"]) == 3 for v in result["vertebrae"])
    assert Path(result["qc_picture"]).is_file()
    report = summarise_unlabelled([result])
    json.dumps(report)  # the report is plain JSON
    text = format_unlabelled(report)
    assert "column: one contiguous column" in text and "naming: consistent" in text and "L2" in text


def test_a_shifted_naming_is_reported_with_its_offset(tmp_path, monkeypatch):
    hu, _ = synthetic_spine(THORACOLUMBAR, sacrum=True)
    folder = _write_dicom(tmp_path / "spine", hu)
    shifted = [LEVELS[LEVELS.index(lv) - 1] for lv in THORACOLUMBAR]  # one level too high throughout
    monkeypatch.setattr(process, "analyse", _fake_analyse(shifted))
    result = evaluate_unlabelled(discover_scans([folder])[0], options=None)
    naming = result["naming"]
    assert naming["verdict"] == "shifted" and naming["offset"] == 1
    assert naming["applied"] and naming["network_names"] == shifted
    assert result["levels"] == THORACOLUMBAR  # renamed: ribs and sacrum agree, the column is contiguous
    assert "offset +1, applied" in format_unlabelled(summarise_unlabelled([result]))


def test_cli_refuses_scans_with_reference_cases(tmp_path):
    from dicom_node.cli.main import main

    assert main(["evaluate", "--scans", str(tmp_path), "--cases", str(tmp_path)]) == 2


# --- with the demo model ---------------------------------------------------------------------------

def _knee() -> np.ndarray:
    """A leg: femur and tibia (cortex and marrow) meeting at a joint, in soft tissue; no spine."""
    nz, n = 100, 256
    z, y, x = np.meshgrid(np.arange(nz) * 2.0, np.arange(n) * 0.7, np.arange(n) * 0.7, indexing="ij")
    hu = np.full(z.shape, -1000.0, np.float32)
    hu[((x - 90) / 60) ** 2 + ((y - 90) / 55) ** 2 < 1] = 40
    radius = np.hypot(x - 90, y - 95)
    for bone, r in (((z > 102), 14 + 18 * np.clip((z - 100) / 40, 0, 1)),
                    ((z < 96), 14 + 18 * np.clip((95 - z) / 40, 0, 1))):
        inside = bone & (radius < r)
        hu[inside] = 250
        hu[inside & (radius > r - 3)] = 1100
    return hu


@pytest.mark.slow
def test_a_knee_gives_no_vertebra_with_the_reason(tmp_path):
    from dicom_node.cli.main import main

    hu = _knee()
    datasets = ct_datasets(np.rint(hu).astype(np.int16), spacing=(2.0, 0.7, 0.7), name="knee")
    (tmp_path / "knee").mkdir()
    save(datasets, tmp_path / "knee")
    assert main(["evaluate", "--scans", str(tmp_path / "knee"), "--device", "cpu",
                 "--json", str(tmp_path / "report.json")]) == 0
    case = json.loads((tmp_path / "report.json").read_text())["cases"][0]
    assert case["vertebrae"] == []
    assert case["no_vertebra_reason"] and "no vertebra" in case["no_vertebra_reason"]
    assert Path(case["qc_picture"]).is_file()


@pytest.mark.slow
@pytest.mark.real_data
def test_real_chest_ct_gives_the_thoracic_column_named_by_the_ribs_and_no_false_metastases(tmp_path):
    """The issue's bar on the whole real chest CT (T1-T12 in view, no lesion): at least 11 of 12
    thoracic vertebrae, one contiguous column named by the rib count, at most one lesion call."""
    from dicom_node.cli.main import main

    assert main(["evaluate", "--scans", str(THORAX), "--device", "cpu", "--json", str(tmp_path / "r.json")]) == 0
    case = json.loads((tmp_path / "r.json").read_text())["cases"][0]
    levels = case["levels"]
    thoracic = [f"T{i}" for i in range(1, 13)]
    assert len([lv for lv in levels if lv in thoracic]) >= 11, levels
    assert levels == LEVELS[LEVELS.index(levels[0]):LEVELS.index(levels[0]) + len(levels)]  # no gap
    assert set(levels) <= set(thoracic) | {"L1"}  # a chest CT: the thoracic spine, at most the top of L1
    assert case["column"]["contiguous"], case["column"]["problems"]
    naming = case["naming"]
    assert naming["verdict"] == "consistent", naming["reason"]
    assert naming["evidence"]["rib_numbering"]["from"] == "last rib"  # L1 shows at the bottom, without a rib
    assert 10 <= naming["evidence"]["rib_count"] <= 13
    assert "rebuilt" in naming["evidence"]  # the network ran them together; the CT's anatomy split and named them
    # the discs it split at, against the 11 read by eye on this scan (research/lesions/thorax.py)
    found = naming["evidence"]["rebuilt"]["discs_z_mm"]
    by_eye = [z * 2.0 for z in DISC_SLICES]  # slice index -> mm (2 mm slices, from the lowest)
    close = [e for e in by_eye if min(abs(e - f) for f in found) <= 3.0]
    assert len(close) >= 8, f"discs read by eye {by_eye}, found {found}"
    calls = [v["level"] for v in case["vertebrae"] if v["lesion"] in ("lytic", "blastic", "mixed")]
    assert len(calls) <= 1, f"lesions called on a chest CT without lesions: {calls}"
    fractures = [v["level"] for v in case["vertebrae"] if v["genant_grade"]]
    assert not fractures, f"collapse called on a chest CT without fractures: {fractures}"
    assert Path(case["qc_picture"]).is_file()
