"""The encapsulated PDF report (modality DOC): valid DICOM, the PDF exact, and a page that says what it must.

Pinned: dciodvfy gives no error and no warning; it is Encapsulated PDF Storage with
modality DOC (not OT, which broke a review viewer) in the CT's study; DCMTK's dcm2pdf takes
back the very PDF that was made; poppler's pdftotext reads the title, every level with its
lesion class, the model's name and version and the "not for clinical use" line; pdftoppm
renders the page; with no vertebra found the report says so.
"""
from __future__ import annotations

import subprocess

import pydicom
import pytest

from pipelines.outputs.codes import lesion_code
from pipelines.outputs.pdf_report import TITLE, build_pdf_report, report_pdf
from pipelines.outputs.secondary_capture import NOT_CLINICAL
from research.phantoms.generator import make_phantom
from support.programs import dciodvfy_messages, require
from support.seg_sr_cases import MODEL, phantom_case, save_dataset

PHANTOM = dict(fov="lumbar", spacing=(4.0, 1.5, 1.5), matrix=160)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return phantom_case(make_phantom(5, **PHANTOM), "HFS", tmp_path_factory.mktemp("pdf"))


@pytest.fixture(scope="module")
def written(case, tmp_path_factory):
    try:
        from pipelines.outputs.secondary_capture import key_picture

        picture = key_picture(case.series, case.labels, case.findings, MODEL)
    except ImportError:  # the QC picture's module is not in this checkout: the report goes without it
        picture = None
    ds = build_pdf_report(case.series, case.findings, MODEL, picture=picture)
    return save_dataset(ds, tmp_path_factory.mktemp("pdf-out") / "report.pdf.dcm")


def pdf_text(pdf_path) -> str:
    run = subprocess.run([require("pdftotext", "poppler-utils"), "-layout", str(pdf_path), "-"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return run.stdout


@pytest.mark.peer
def test_dciodvfy_gives_no_error_and_no_warning(written):
    assert dciodvfy_messages(written) == []


def test_it_is_an_encapsulated_pdf_with_modality_doc_in_the_ct_study(written, case):
    ds = pydicom.dcmread(written)
    assert ds.SOPClassUID == pydicom.uid.EncapsulatedPDFStorage
    assert ds.Modality == "DOC" and ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert ds.StudyInstanceUID == case.series.study_instance_uid
    assert ds.PatientID == case.series.source_images[0].PatientID
    assert ds.EncapsulatedDocument[:ds.EncapsulatedDocumentLength].startswith(b"%PDF")


@pytest.mark.peer
def test_dcmtk_takes_back_the_exact_pdf_and_poppler_reads_the_findings(written, case, tmp_path):
    extracted = tmp_path / "report.pdf"
    run = subprocess.run([require("dcm2pdf"), str(written), str(extracted)], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    ds = pydicom.dcmread(written)
    assert extracted.read_bytes() == ds.EncapsulatedDocument[:ds.EncapsulatedDocumentLength]
    text = pdf_text(extracted)
    assert TITLE in text and NOT_CLINICAL in text
    assert f"{MODEL.name} {MODEL.version}" in text and MODEL.sha256[:16] in text
    lines = text.splitlines()
    for finding in case.findings:
        row = next((line for line in lines if line.split()[:1] == [finding.level]), None)
        assert row is not None, f"no table row for {finding.level} in:\n{text}"
        assert lesion_code(finding.lesion).meaning in row, row
    pages = subprocess.run([require("pdftoppm", "poppler-utils"), "-png", "-r", "40", str(extracted),
                            str(tmp_path / "page")], capture_output=True, text=True, timeout=60)
    assert pages.returncode == 0 and (tmp_path / "page-1.png").stat().st_size > 5000, pages.stderr


@pytest.mark.peer
def test_with_no_vertebra_the_report_says_so(case, tmp_path):
    path = tmp_path / "empty.pdf"
    path.write_bytes(report_pdf(case.series, [], MODEL, None))
    assert "no vertebra found" in pdf_text(path)


@pytest.mark.peer
def test_the_page_gives_the_spine_report_and_the_change_since_the_prior(case, tmp_path):
    import copy

    findings = copy.deepcopy(case.findings)
    first, second = findings[0], findings[1]
    first.measurements = {"heights_mm": {"anterior": 17.6, "middle": 23.1, "posterior": 25.0}, "genant_grade": 2,
                          "genant_morphology": "wedge", "trabecular_hu": 142.0, "lesion_volume_ml": 0.52,
                          "sins": {"partial_score": 7}}
    second.measurements = {"genant_grade": 0, "trabecular_hu": 95.0}
    change = {"prior": {"study_instance_uid": "1.2.826.0.1.3680043.8.498.1"}, "only_now": [], "only_before": [],
              "warnings": [], "vertebrae": {first.level: {"compared": True, "lesion_change": "new",
                                                          "new_collapse": True},
                                            second.level: {"compared": False, "reason": "disagree"}}}
    density = {"site": "L1", "trabecular_hu": 85.0, "threshold_hu": 90.25, "source": "TotalSegmentator",
               "low": True, "contrast": "no contrast", "flag": "low bone density"}
    path = tmp_path / "report.pdf"
    path.write_bytes(report_pdf(case.series, findings, MODEL, None, change, density))
    text = pdf_text(path)
    row = next(line for line in text.splitlines() if line.split()[:1] == [first.level])
    for words in ("0.52", "142", "17.6/23.1/25.0", "2 wedge", "7", "new lesion, new collapse"):
        assert words in row, (words, row)
    row = next(line for line in text.splitlines() if line.split()[:1] == [second.level])
    assert "not compared" in row, row
    flat = " ".join(text.split())
    assert "Change since the prior study 1.2.826.0.1.3680043.8.498.1" in flat
    assert "Bone density: low bone density" in flat and "pain and spinal alignment are not assessed" in flat
