"""Change since the prior study: matched by a pseudonymous patient key, by level, never across disagreeing levels."""
from __future__ import annotations

import copy

import pytest

from pipelines.measure.change import VOLUME_PRECISION_NOTE, compare, patient_key
from pipelines.outputs.report_text import prior_line
from pipelines.options import PipelineOptions
from support.dimse import send_c_store
from support.inprocess_node import InProcessNode, ct_series
from support.synthetic_ct import save

SECRET = bytes.fromhex("ab" * 32)


class Header:
    PatientID = "MRN-0042"
    IssuerOfPatientID = "HOSPITAL-A"


def vertebra(level, lesion="none", ml=0.0, grade=0, heights=(24.0, 24.0, 24.0), volume=30.0):
    return {"level": level, "lesion": lesion, "lesion_volume_ml": ml, "genant_grade": grade, "volume_ml": volume,
            "heights_mm": dict(zip(("anterior", "middle", "posterior"), heights))}


def summary(*vertebrae, model=("spine-demo", "1.0")):
    return {"study_instance_uid": "1.2.3", "series_instance_uid": "1.2.3.4", "sr_sop_instance_uid": "1.2.3.5",
            "model": {"name": model[0], "version": model[1]}, "vertebrae": list(vertebrae)}


def test_lesion_growth_new_lesions_lesions_gone_and_new_collapse_are_reported():
    before = summary(vertebra("T12", "lytic", 2.0), vertebra("L1"), vertebra("L2", "blastic", 1.0))
    now = summary(vertebra("T12", "lytic", 2.5), vertebra("L1", "mixed", 0.8, grade=2, heights=(15, 20, 24)),
                  vertebra("L2"))
    change = compare(now, before)
    assert change["vertebrae"]["T12"]["lesion_volume_change_pct"] == 25.0
    assert change["new_lesions"] == ["L1"] and change["lesions_gone"] == ["L2"] and change["new_collapse"] == ["L1"]
    assert change["vertebrae"]["L1"]["height_change_mm"] == {"anterior": -9.0, "middle": -4.0, "posterior": 0.0}
    assert change["prior"]["study_instance_uid"] == "1.2.3" and change["warnings"] == []


def test_a_lesion_volume_change_comes_with_how_far_a_volume_is_measured_on_real_bone():
    grown = compare(summary(vertebra("T12", "lytic", 2.5)), summary(vertebra("T12", "lytic", 2.0)))
    assert grown["notes"] == [VOLUME_PRECISION_NOTE] and "a growth within 5-19 %" in VOLUME_PRECISION_NOTE
    assert VOLUME_PRECISION_NOTE in prior_line(grown)  # the PDF's and key images' line; the SR's comment says it too
    new_only = compare(summary(vertebra("T12", "lytic", 2.5)), summary(vertebra("T12")))
    assert new_only["notes"] == []  # a new lesion compares no volumes


def test_a_level_the_segmentations_disagree_on_is_not_compared():
    change = compare(summary(vertebra("L1", "lytic", 3.0, volume=30.0)), summary(vertebra("L1", volume=55.0)))
    assert change["vertebrae"]["L1"]["compared"] is False and "disagree" in change["vertebrae"]["L1"]["reason"]
    assert change["new_lesions"] == []


def test_a_crush_that_halved_the_body_is_a_new_collapse_not_a_disagreement():
    # the collapse took 38 % of the volume with half the height: before, that read as two different bones
    before = summary(vertebra("L4", volume=52.0, heights=(26.7, 29.6, 26.3)))
    now = summary(vertebra("L4", volume=32.3, grade=3, heights=(13.8, 15.0, 12.9)))
    change = compare(now, before)
    assert change["vertebrae"]["L4"]["compared"] is True and change["new_collapse"] == ["L4"]


def test_a_lost_volume_with_heights_that_did_not_fall_or_no_fracture_now_still_disagrees():
    # the same 38 % loss: unexplained by the heights, or on a vertebra the current study does not grade fractured
    unexplained = compare(summary(vertebra("L4", volume=32.3, grade=3)), summary(vertebra("L4", volume=52.0)))
    assert unexplained["vertebrae"]["L4"]["compared"] is False
    not_fractured = compare(summary(vertebra("L4", volume=32.3, heights=(13.8, 15.0, 12.9))),
                            summary(vertebra("L4", volume=52.0, heights=(26.7, 29.6, 26.3))))
    assert not_fractured["vertebrae"]["L4"]["compared"] is False and not_fractured["new_collapse"] == []


def test_a_prior_of_another_model_is_compared_with_a_warning_naming_both():
    change = compare(summary(vertebra("L1"), model=("spine-demo", "2.0")), summary(vertebra("L1")))
    assert "spine-demo 1.0" in change["warnings"][0] and "spine-demo 2.0" in change["warnings"][0]


def test_the_patient_key_holds_no_identifier_and_needs_an_issuer_unless_allowed():
    key = patient_key(Header(), SECRET)
    assert key and "0042" not in key and key == patient_key(Header(), SECRET)
    assert key != patient_key(Header(), bytes.fromhex("cd" * 32))
    no_issuer = copy.copy(Header())
    no_issuer.IssuerOfPatientID = ""
    assert patient_key(no_issuer, SECRET) is None
    assert patient_key(no_issuer, SECRET, allow_without_issuer=True) is not None


def _baseline_and_follow_up(tmp_path, **options) -> list[dict]:
    """The jobs of two studies of one patient sent to a node one after the other: the baseline, then the follow-up."""
    node = InProcessNode(tmp_path / "node", PipelineOptions(min_slices=5, patient_key_secret=SECRET.hex(), **options))
    try:
        jobs = []
        for name in ("baseline", "follow-up"):
            datasets = ct_series(name, 8)
            for ds in datasets:
                ds.PatientID, ds.IssuerOfPatientID = "MRN-0042", "HOSPITAL-A"
            paths = save(datasets, tmp_path / name)
            assert send_c_store(node.port, paths) == [0] * len(paths)
            jobs += node.run_completed_jobs(stable_age=0.01)
    finally:
        node.close()
    return jobs


def test_the_node_compares_a_new_study_with_the_patients_prior_one(tmp_path):
    first, second = (job["summary"] for job in _baseline_and_follow_up(tmp_path))
    assert "change" not in first and second["change"]["prior"]["study_instance_uid"] == first["study_instance_uid"]
    assert second["change"]["vertebrae"]["L1"]["compared"] is True
    assert first["patient_key"] == second["patient_key"] and "MRN" not in first["patient_key"]


def test_the_nodes_patient_secret_is_made_once_and_readable_by_the_node_only(tmp_path):
    from dicom_node.runtime.node import PATIENT_SECRET_FILE, patient_secret

    first = patient_secret(tmp_path)
    assert len(bytes.fromhex(first)) == 32 and patient_secret(tmp_path) == first
    assert (tmp_path / PATIENT_SECRET_FILE).stat().st_mode & 0o077 == 0


@pytest.mark.peer
def test_the_node_s_pdf_report_names_the_prior_and_each_level_s_change(tmp_path):
    import subprocess

    import pydicom

    from support.programs import require

    first, second = _baseline_and_follow_up(tmp_path, outputs=("seg", "sr", "pdf"))
    pdf = next(o["path"] for o in second["outputs"] if o["kind"] == "pdf")
    ds = pydicom.dcmread(pdf)
    (tmp_path / "report.pdf").write_bytes(ds.EncapsulatedDocument[:ds.EncapsulatedDocumentLength])
    run = subprocess.run([require("pdftotext", "poppler-utils"), "-layout", str(tmp_path / "report.pdf"), "-"],
                         capture_output=True, text=True, timeout=60)
    text = " ".join(run.stdout.split())
    assert f"Change since the prior study {first['study_instance_uid']}" in text, text
    row = next(line for line in run.stdout.splitlines() if line.split()[:1] == ["L1"])
    assert "no change" in row and "MRN" not in run.stdout, row
