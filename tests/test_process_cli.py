"""``spine-node process``: DICOM in, SEG + SR + summary.json out, refusals explained, exit status honest.

One run of the real pipeline (the bundled demo model on the CPU) over a folder that holds
a phantom series, the real JPEG 2000 series of shared/data (no Study/Series UIDs) and a
series too short to process; the tests read what it left behind.
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from pipelines.lesions import LESION_CLASSES

from dicom_node.cli.main import main
from research.phantoms.generator import make_phantom
from research.phantoms.dicom import write_dicom_series
from support.paths import REAL_CT
from support.programs import dciodvfy_messages, tool

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Process one folder of three series once; return (exit status, output folder, stdout, inputs)."""
    root = tmp_path_factory.mktemp("process")
    inputs = root / "in"
    phantom = make_phantom(100020, fov="lumbar", spacing=(3.0, 1.5, 1.5), matrix=192)
    write_dicom_series(phantom, inputs / "phantom", orientation="FFS")
    short = make_phantom(100021, fov="lumbar", spacing=(3.0, 2.0, 2.0), matrix=96)
    short_folder = inputs / "short"
    write_dicom_series(short, short_folder)
    for path in sorted(short_folder.glob("*.dcm"))[12:]:
        path.unlink()  # 12 slices, fewer than the 20 a series needs
    if REAL_CT.is_dir():
        shutil.copytree(REAL_CT, inputs / "real")
    out = root / "out"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = main(["process", str(inputs), "--out", str(out), "--device", "cpu", "--no-progress"])
    return status, out, stdout.getvalue(), {"phantom": phantom, "short": short_folder}


def _series_uid(folder: Path) -> str:
    return str(pydicom.dcmread(next(folder.glob("*.dcm")), stop_before_pixels=True).SeriesInstanceUID)


def test_a_refused_series_makes_the_exit_status_non_zero(run):
    status, _, stdout, _ = run
    assert status == 1
    assert "rejected" in stdout and "done" in stdout


def test_a_short_series_gets_rejected_json_with_the_reason(run):
    _, out, _, inputs = run
    folder = out / _series_uid(inputs["short"])
    assert sorted(p.name for p in folder.iterdir()) == ["rejected.json"]
    rejected = json.loads((folder / "rejected.json").read_text())
    assert rejected["code"] == "too_few_slices"
    assert "12" in rejected["reason"] and rejected["series_instance_uid"] == _series_uid(inputs["short"])


def test_a_phantom_series_gets_a_seg_an_sr_and_a_summary_that_agree(run):
    folder = _phantom_folder(run)
    summary = json.loads((folder / "summary.json").read_text())
    seg = hd.seg.segread(folder / "seg.dcm")
    sr = pydicom.dcmread(folder / "sr.dcm")
    assert summary["series_instance_uid"] == folder.name
    assert summary["model"]["name"] == "spine-phantom-demo" and len(summary["model"]["sha256"]) == 64
    assert summary["vertebrae"], "the demo model finds lumbar vertebrae on a lumbar phantom"
    described = {d.SegmentNumber: d.SegmentLabel for d in seg.SegmentSequence}
    for v in summary["vertebrae"]:
        assert v["lesion"] in LESION_CLASSES and v["lesion_features"]
        assert v["level"] in described[v["segment_number"]]
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == summary["study_instance_uid"]
    assert summary["seg_sop_instance_uid"] == seg.SOPInstanceUID and summary["sr_sop_instance_uid"] == sr.SOPInstanceUID
    assert {"load", "network", "lesions", "seg", "sr"} <= set(summary["timings_s"])


@pytest.mark.peer
def test_the_outputs_of_process_pass_dciodvfy_and_dsrdump(run):
    folder = _phantom_folder(run)
    for name in ("seg.dcm", "sr.dcm"):
        errors = [m for m in dciodvfy_messages(folder / name) if m.startswith("Error")]
        assert errors == [], f"{name}: {errors}"
    if tool("dsrdump"):
        assert subprocess.run([tool("dsrdump"), str(folder / "sr.dcm")], capture_output=True).returncode == 0


def test_seg_frames_lie_on_the_source_frames(run):
    folder = _phantom_folder(run)
    seg = hd.seg.segread(folder / "seg.dcm")
    source_positions = set()
    for path in (Path(run[1]).parent / "in" / "phantom").glob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        source_positions.add(tuple(np.round(np.array(ds.ImagePositionPatient, float), 3)))
    frames = {tuple(np.round(np.array(f.PlanePositionSequence[0].ImagePositionPatient, float), 3))
              for f in seg.PerFrameFunctionalGroupsSequence}
    assert frames and frames <= source_positions


@pytest.mark.real_data
def test_the_real_series_without_uids_is_processed_with_the_repair_recorded(run):
    _, out, _, _ = run
    summaries = [json.loads(p.read_text()) for p in out.glob("*/summary.json")]
    real = [s for s in summaries if any(r.startswith("derived_uids") for r in s["repairs"])]
    assert len(real) == 1
    assert real[0]["study_instance_uid"] and real[0]["series_instance_uid"]


@pytest.mark.real_data
@pytest.mark.peer
def test_the_real_crop_gets_a_valid_seg_and_an_sr_that_says_its_levels_are_unconfirmed(run):
    """The 40 mm real series: the network finds nothing in its column, the CT shows two vertebrae (ct_column)."""
    _, out, _, _ = run
    folder = next(p.parent for p in out.glob("*/summary.json")
                  if any(r.startswith("derived_uids") for r in json.loads(p.read_text())["repairs"]))
    summary = json.loads((folder / "summary.json").read_text())
    assert [v["level"] for v in summary["vertebrae"]] == ["T11", "T12"]
    assert summary["naming"]["verdict"] == "cannot_be_settled"
    assert all(v["lesion"] not in ("lytic", "blastic", "mixed") for v in summary["vertebrae"])
    for name in ("seg.dcm", "sr.dcm"):
        errors = [m for m in dciodvfy_messages(folder / name) if m.startswith("Error")]
        assert errors == [], f"{name}: {errors}"
    comments = [item.TextValue for item in _content_items(pydicom.dcmread(folder / "sr.dcm"))
                if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == "121106"]
    assert any("could not be confirmed" in text and "prior" in text for text in comments)


def _content_items(ds):
    for item in getattr(ds, "ContentSequence", []):
        yield item
        yield from _content_items(item)


def test_no_staging_folder_is_left_behind(run):
    _, out, _, _ = run
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_a_missing_input_is_a_one_line_error(tmp_path, capsys):
    assert main(["process", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("spine-node: error:") and "nowhere" in err and "\n" not in err


def _phantom_folder(run) -> Path:
    _, out, _, _ = run
    return out / _series_uid(Path(out).parent / "in" / "phantom")


def test_unknown_lesion_thresholds_are_refused_before_any_work(tmp_path, capsys):
    thresholds = tmp_path / "thresholds.json"
    thresholds.write_text('{"lytic_max_hu": 100, "blastic_treshold": 500}')
    (tmp_path / "in").mkdir()
    assert main(["process", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                 "--lesion-thresholds", str(thresholds)]) == 2
    err = capsys.readouterr().err.strip()
    assert "blastic_treshold" in err and "\n" not in err
    assert not (tmp_path / "out").exists()
