"""orthanc/upload.py (the README demo's upload step) against a real local Orthanc (Debian package).

What is pinned: every DICOM file under a folder is stored and other files are skipped; the
study's Orthanc ID is printed; a file Orthanc refuses (empty UIDs) is one line naming the
file and Orthanc's reason, exit status 1; an Orthanc that is not running is one line,
exit status 1; ``--wait`` reports the SEG and SR series as they arrive in the study and
gives up, exit status 1, when they do not.
"""
from __future__ import annotations

import threading
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from research.phantoms.generator import make_phantom
from research.phantoms.dicom import write_dicom_series
from support.dimse import LOOPBACK, free_port
from support.orthanc import orthanc_script

upload = orthanc_script("upload")


@pytest.fixture(scope="module")
def orthanc(orthanc_factory):
    # A very long StableAge: nothing is routed anywhere while these tests run.
    return orthanc_factory(stable_age=3600)


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> Path:
    """A small phantom CT series in case/dicom/, with non-DICOM truth files beside it, as `phantom` writes."""
    case = tmp_path_factory.mktemp("case")
    phantom = make_phantom(100001, fov="lumbar", spacing=(8.0, 6.0, 6.0), matrix=48)
    write_dicom_series(phantom, case / "dicom")
    (case / "truth.json").write_text("{}")
    (case / "labels.nii.gz").write_bytes(b"\x1f\x8b not DICOM")
    return case


def _copy_as(source: Path, target: Path, modality: str) -> Path:
    """One CT instance of the study re-labelled as a new series of ``modality`` (what the watcher reads)."""
    ds = pydicom.dcmread(source)
    ds.Modality = modality
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(target)
    return target


@pytest.mark.peer
def test_upload_stores_every_dicom_file_of_a_folder_and_names_the_study(orthanc, series, capsys):
    expected = sorted((series / "dicom").glob("*.dcm"))

    status = upload.main([str(series), "--url", orthanc.url])

    out = capsys.readouterr().out
    assert status == 0
    assert f"uploaded {len(expected)} of {len(expected)} DICOM file(s)" in out
    study_lines = [line for line in out.splitlines() if line.startswith("study ")]
    assert len(study_lines) == 1
    study_id = study_lines[0].split()[1].rstrip(":")
    assert f"{len(expected)} instance(s) uploaded" in study_lines[0]
    assert len(upload._request(f"{orthanc.url}/studies/{study_id}/instances")) == len(expected)


@pytest.mark.peer
def test_a_file_orthanc_refuses_is_one_line_naming_it_and_exit_status_1(orthanc, series, tmp_path, capsys):
    ds = pydicom.dcmread(sorted((series / "dicom").glob("*.dcm"))[0])
    ds.SeriesInstanceUID = ""
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    bad = tmp_path / "no-series-uid.dcm"
    ds.save_as(bad)

    status = upload.main([str(bad), "--url", orthanc.url])

    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1
    assert len(err) == 1
    assert str(bad) in err[0] and "HTTP 400" in err[0]


def test_an_orthanc_that_is_not_running_is_one_line_and_exit_status_1(series, capsys):
    url = f"http://{LOOPBACK}:{free_port()}"

    status = upload.main([str(series), "--url", url])

    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1
    assert len(err) == 1 and "cannot reach Orthanc" in err[0]


def test_no_dicom_file_is_exit_status_2(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not DICOM")

    assert upload.main([str(tmp_path), "--url", "http://127.0.0.1:1"]) == 2
    assert "no DICOM file" in capsys.readouterr().err


@pytest.mark.peer
def test_wait_reports_the_seg_and_sr_series_as_they_arrive(orthanc, series, tmp_path, capsys):
    first = sorted((series / "dicom").glob("*.dcm"))[0]
    seg = _copy_as(first, tmp_path / "seg.dcm", "SEG")
    sr = _copy_as(first, tmp_path / "sr.dcm", "SR")
    study_id = upload.upload(orthanc.url, first)["ParentStudy"]
    later = threading.Timer(1.0, lambda: [upload.upload(orthanc.url, p) for p in (seg, sr)])
    later.start()
    try:
        arrived = upload.wait_for_results(orthanc.url, study_id, timeout_s=120, interval_s=0.5)
    finally:
        later.join()

    out = capsys.readouterr().out
    assert arrived
    assert any(line.strip().startswith("+ SEG") for line in out.splitlines())
    assert any(line.strip().startswith("+ SR") for line in out.splitlines())


@pytest.mark.peer
def test_wait_gives_up_with_exit_status_1_when_no_results_come(orthanc, tmp_path, capsys):
    case = tmp_path / "other"
    write_dicom_series(make_phantom(100002, fov="lumbar", spacing=(8.0, 6.0, 6.0), matrix=48), case)

    status = upload.main([str(case), "--url", orthanc.url, "--wait", "1"])

    captured = capsys.readouterr()
    assert status == 1
    assert "+ CT" in captured.out
    assert "no SEG and SR after 1 s" in captured.err
